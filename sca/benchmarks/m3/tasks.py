"""Our own M3ToolEval-style task sets, and the runner of their reference solutions.

A task file is JSON Lines, one task a line::

    {"id": "calc-md-01", "split": "test", "domain": "message_decoder",
     "instruction": "...", "answer": "...", "solution": "answer = caesar_decode(...)"}

``answer`` is the gold answer, compared with :func:`sca.benchmarks.m3.scoring.answers_match`;
``solution`` is Python that calls the environment's tools as global functions
(as in a CaT task) and leaves its result in the global ``answer``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from envs.base import Environment, ToolError
from sca.benchmarks.base import BenchmarkTask
from sca.benchmarks.m3 import DATA_DIR
from sca.benchmarks.m3.scoring import evaluation_source

__all__ = ["load_tasks", "read_task_file", "run_solution", "tool_namespace"]

_REQUIRED = ("id", "split", "domain", "instruction", "answer", "solution")


@lru_cache(maxsize=None)
def read_task_file(filename: str) -> tuple[dict[str, Any], ...]:
    """The records of task file `filename` (in this package), checked for required fields."""
    path = DATA_DIR / filename
    records = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = [k for k in _REQUIRED if k not in record]
            if missing:
                raise ValueError(f"{path.name}:{lineno}: task lacks {', '.join(missing)}")
            if record["id"] in seen:
                raise ValueError(f"{path.name}:{lineno}: duplicate task id {record['id']!r}")
            seen.add(record["id"])
            records.append(record)
    return tuple(records)


def load_tasks(filename: str, env_name: str) -> list[BenchmarkTask]:
    """The tasks of `filename` as :class:`BenchmarkTask` objects of environment `env_name`.

    ``data`` holds the record's ``answer``, ``domain`` and ``solution``, plus
    ``env`` and an ``evaluation_function``: self-contained Python source of
    ``evaluate(answer)`` that compares with the gold answer.
    """
    tasks = []
    for record in read_task_file(filename):
        data = {k: v for k, v in record.items() if k not in ("id", "split", "instruction")}
        data["env"] = env_name
        data["evaluation_function"] = evaluation_source(record["answer"])
        tasks.append(BenchmarkTask(id=record["id"], split=record["split"], instruction=record["instruction"],
                                   data=data))
    return tasks


def tool_namespace(env: Environment) -> dict[str, Any]:
    """Globals in which every tool of `env` is a function, as CaT code sees them.

    Positional arguments bind to parameters in the tool's order. Calls go
    through :meth:`Environment.call`, so results are plain JSON values.
    """
    namespace: dict[str, Any] = {"ToolError": ToolError}
    for t in env.tools():
        namespace[t.name] = _bind(env, t.name, t.param_names)
    return namespace


def _bind(env: Environment, name: str, params: list[str]):
    def call(*args: Any, **kwargs: Any) -> Any:
        if len(args) > len(params):
            raise ToolError(f"{name}() takes {len(params)} arguments but {len(args)} were given")
        for param, value in zip(params, args):
            if param in kwargs:
                raise ToolError(f"{name}() got multiple values for argument {param!r}")
            kwargs[param] = value
        return env.call(name, kwargs)

    call.__name__ = name
    return call


def run_solution(env: Environment, source: str) -> Any:
    """Run trusted in-repository solution code against `env`; the value of its ``answer``.

    For this package's own reference solutions (tests, sanity checks) only:
    model-written code runs in the sandbox, never here.
    """
    namespace = tool_namespace(env)
    exec(compile(source, "<solution>", "exec"), namespace)  # noqa: S102 - trusted, in-repo code
    return namespace.get("answer")


def task_file_path(filename: str) -> Path:
    return DATA_DIR / filename
