"""Load the official M3ToolEval tasks from a user's own checkout of the CodeAct repository.

M3ToolEval (``scripts/eval/m3tooleval/`` in github.com/xingyaoww/code-act)
keeps its tasks in Python modules under ``tasks/impl/``: one per domain
(``message_decoder.py``, ``dna_sequencer.py``, ``trade_calculator.py``,
``travel_itinerary_planning.py``) and a package ``web_browsing/`` whose
``__init__.py`` builds its tasks from ``metadata.json`` and the pages of
``web_pages.jsonl``. Each module defines the domain's tools as plain
functions, computes every task's expected output by calling them, and
registers its list of ``Task(name=..., tools=..., instruction=...,
expected_output=...)`` with ``register_task_iterator``.

A checkout is untrusted code, so we run those modules in our sandbox
(:mod:`sandbox`), never in this process:

1. Here, the checkout is only read: the text of every ``.py``, ``.json`` and
   ``.jsonl`` file under ``tasks/impl/`` (bounded in number and size).
2. One sandbox run (no network, no files of the host; ``SandboxConfig``
   defaults, backend ``auto`` unless the caller names one) receives those
   texts inside its code, installs an import hook that serves them as the
   package ``tasks.impl`` (and ``open()`` of a file next to a module as that
   file's text), imports each domain module, so that the official tool
   functions compute the expected outputs, and leaves the registered tasks as
   JSON in its ``answer``. ``tasks.base`` there is ours: the checkout's
   ``base.py`` is the evaluation harness (it needs ``tqdm`` and IPython), not
   task data; ours records each ``Task`` and each ``register_task_iterator``.
3. Here again, everything that comes back is checked as untrusted data
   (shapes, types, finite numbers, counts, unique names) before it becomes
   our :class:`~sca.benchmarks.base.BenchmarkTask` objects. A checkout that fails to load,
   loops, or reports something else raises :class:`OfficialTaskError` with one
   line saying what went wrong.

Each task maps to one of our environments: the four computation domains to
``calculation`` (travel tasks with the module's own ``flights`` and ``hotels``
tables), web browsing to ``web_browsing`` over the official pages. Build the
matching environment with :func:`make_env`. :func:`tool_drift` replays, with
our environment's tools, every tool call the official modules made while
computing the expected outputs, and reports where our results differ.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from envs.base import Environment, ToolError
from sca.benchmarks.base import BenchmarkTask
from sca.benchmarks.m3.scoring import answers_match, evaluation_source

__all__ = [
    "DOMAIN_FILES",
    "OFFICIAL_TOOLS",
    "OfficialTaskError",
    "find_impl_dir",
    "load_official_tasks",
    "make_env",
    "tool_drift",
]

#: our domain name -> (module path under tasks/impl, our environment)
DOMAIN_FILES: dict[str, tuple[str, str]] = {
    "message_decoder": ("message_decoder.py", "calculation"),
    "dna_sequencer": ("dna_sequencer.py", "calculation"),
    "trade_calculator": ("trade_calculator.py", "calculation"),
    "travel_itinerary_planning": ("travel_itinerary_planning.py", "calculation"),
    "web_browsing": ("web_browsing/__init__.py", "web_browsing"),
}

#: domain -> official tool function -> (our tool, its parameters the positional arguments bind to,
#: the parameter that takes the rest of them as a list, or None)
OFFICIAL_TOOLS: dict[str, dict[str, tuple[str, tuple[str, ...], str | None]]] = {
    "message_decoder": {
        "convert_hex_to_ascii": ("convert_hex_to_ascii", ("hex_string",), None),
        "reverse_string": ("reverse_string", ("string",), None),
        "caesar_decode": ("caesar_decode", ("message", "shift"), None),
        "string_length": ("string_length", ("string",), None),
        "minimum_value": ("minimum_value", (), "values"),
        "maximum_value": ("maximum_value", (), "values"),
    },
    "dna_sequencer": {
        "count_nucleotides": ("count_nucleotides", ("dna_sequence",), None),
        "transcribe_dna_to_mrna": ("transcribe_dna_to_mrna", ("dna_sequence",), None),
        "translate_mrna_to_amino_acid": ("translate_mrna_to_amino_acid", ("mrna_sequence",), None),
        "find_max_nucleotide": ("find_max_nucleotide", (), "nucleotide_counts"),
        "is_valid_dna_sequence": ("is_valid_dna_sequence", ("dna_sequence",), None),
        "reverse_transcribe_mrna_to_dna": ("reverse_transcribe_mrna_to_dna", ("mrna_sequence",), None),
    },
    "trade_calculator": {
        "convert_currency": ("convert_currency", ("base_price", "conversion_rate"), None),
        "calculate_tariff": ("calculate_tariff", ("price", "tariff_rate"), None),
        "estimate_final_value": ("estimate_final_value", ("price", "tariff"), None),
        "calculator": ("calculator", ("expression",), None),
        "find_minimum": ("minimum_value", (), "values"),
        "find_maximum": ("maximum_value", (), "values"),
    },
    "travel_itinerary_planning": {
        "find_flights": ("find_flights", ("from_location", "to_location", "date"), None),
        "book_hotel": ("book_hotel", ("location",), "preferences"),
        "budget_calculator": ("budget_calculator", ("flight_price", "hotel_price_per_night", "num_nights"), None),
    },
}

#: module globals a domain's environment is built from (reported by the sandbox run)
_DOMAIN_GLOBALS = {"travel_itinerary_planning": ["flights", "hotels"]}
_SHIPPED_SUFFIXES = (".py", ".json", ".jsonl")
_MAX_FILE_BYTES = 5_000_000
_MAX_TOTAL_BYTES = 16_000_000
_MAX_FILES = 500
_MAX_TASKS_PER_DOMAIN = 1000
_MAX_CALLS = 20_000
_MAX_NAME = 200
_MAX_INSTRUCTION = 100_000
_MAX_TABLE_ROWS = 100_000
_REPORT_FORMAT = "sca-m3tooleval-tasks/1"
_VIRTUAL_ROOT = "/m3tooleval/tasks"  # where the shipped files seem to be, inside the sandbox


class OfficialTaskError(Exception):
    """The checkout's task files could not be found, read or run, or reported something unusable."""


def find_impl_dir(root: str | Path) -> Path:
    """The ``tasks/impl`` folder of M3ToolEval, given the CodeAct checkout, ``m3tooleval/`` or ``tasks/``."""
    root = Path(root).expanduser().resolve()
    for candidate in (root / "scripts" / "eval" / "m3tooleval" / "tasks" / "impl",
                      root / "tasks" / "impl", root / "impl", root):
        if any((candidate / rel).is_file() for rel, _ in DOMAIN_FILES.values()):
            return candidate
    raise OfficialTaskError(f"no M3ToolEval task files under {root} "
                            "(expected scripts/eval/m3tooleval/tasks/impl/ of a CodeAct checkout)")


def load_official_tasks(m3tooleval_dir: str | Path, domains: list[str] | None = None, *,
                        backend: str | None = None, timeout: float | None = None) -> list[BenchmarkTask]:
    """The official M3ToolEval tasks found in `m3tooleval_dir`, as our benchmark tasks (split "test").

    `m3tooleval_dir` may be the CodeAct checkout, its ``scripts/eval/m3tooleval``
    or that folder's ``tasks``. Each task's ``data`` holds ``answer`` (the
    expected output as the official tools compute it, JSON values),
    ``domain``, ``env`` (``calculation`` or ``web_browsing``), ``env_config``
    (what :func:`make_env` needs), ``official_name``, ``source`` and
    ``evaluation_function``. Domains whose file is missing are skipped.

    The task modules run in one sandbox run (`backend`: a :class:`~sandbox.SandboxConfig`
    backend name, default ``auto``; `timeout`: its seconds of wall clock, default the
    config's). Raises :class:`OfficialTaskError` (one line) when no sandbox works here,
    when a module fails or runs out of time, or when what it reports is unusable.
    """
    tasks, _calls = _load(m3tooleval_dir, domains, backend=backend, timeout=timeout, record_calls=False)
    return tasks


def make_env(task: BenchmarkTask) -> Environment:
    """A fresh environment in which official task `task` is solved."""
    return _build_env(task.data["env"], task.data.get("env_config") or {})


def tool_drift(m3tooleval_dir: str | Path, domains: list[str] | None = None, *, backend: str | None = None,
               timeout: float | None = None, rel_tol: float = 1e-9) -> list[dict[str, Any]]:
    """Our tools against the official ones, on the calls the official expected outputs were computed with.

    The calculation domains' modules run in the sandbox as in :func:`load_official_tasks`,
    recording each call of an official tool function (its arguments and result) and
    the task whose expected output it served. Each call is then made again with our
    environment's matching tool (:data:`OFFICIAL_TOOLS`; travel over the module's own
    tables) and the results compared with :func:`~sca.benchmarks.m3.scoring.answers_match`
    (relative tolerance `rel_tol`; texts as the scorer compares them). An official call
    that raised is recorded with the result None (what the profiler sees).

    Returns one entry per calculation task: ``{"id", "domain", "calls", "mismatches"}``,
    where each mismatch is ``{"tool", "our_tool", "args", "official", "ours", "error"}``
    (``error``: our tool's refusal, or why the call could not be replayed).
    """
    wanted = [d for d in OFFICIAL_TOOLS if domains is None or d in domains]
    tasks, calls = _load(m3tooleval_dir, wanted, backend=backend, timeout=timeout, record_calls=True)
    envs: dict[str, Environment] = {}
    report = []
    for task in tasks:
        domain = task.data["domain"]
        if domain not in envs:
            envs[domain] = make_env(task)
        mismatches = []
        for call in calls[task.id]:
            problem = _replay(envs[domain], domain, call, rel_tol)
            if problem is not None:
                mismatches.append(problem)
        report.append({"id": task.id, "domain": domain, "calls": len(calls[task.id]), "mismatches": mismatches})
    return report


def _replay(env: Environment, domain: str, call: dict[str, Any], rel_tol: float) -> dict[str, Any] | None:
    """None if our tool gives the official result for the call's arguments, else what differs."""
    our_name, params, rest = OFFICIAL_TOOLS[domain][call["tool"]]
    args = call["args"]
    problem = {"tool": call["tool"], "our_tool": our_name, "args": args, "official": call["result"],
               "ours": None, "error": None}
    if rest is None and len(args) != len(params) or len(args) < len(params):
        problem["error"] = f"called with {len(args)} arguments; our tool takes {len(params)}"
        return problem
    payload: dict[str, Any] = dict(zip(params, args))
    if rest is not None:
        payload[rest] = list(args[len(params):])
    try:
        ours = env.call(our_name, payload)
    except ToolError as e:
        problem["error"] = f"our tool refused: {e}"
        return problem
    if answers_match(ours, call["result"], rel_tol=rel_tol):
        return None
    problem["ours"] = ours
    return problem


def _build_env(env_name: str, config: dict[str, Any]) -> Environment:
    if env_name == "calculation":
        from envs.calculation import CalculationEnv

        return CalculationEnv(travel=config.get("travel"))
    if env_name == "web_browsing":
        from envs.web_browsing import WebBrowsingEnv

        return WebBrowsingEnv(site=config.get("site"))
    raise OfficialTaskError(f"unknown environment {env_name!r}")


# -- the trusted side: read the checkout, run it in the sandbox, check the report ----------------


def _load(m3tooleval_dir: str | Path, domains: list[str] | None, *, backend: str | None,
          timeout: float | None, record_calls: bool) -> tuple[list[BenchmarkTask], dict[str, list[dict]]]:
    impl = find_impl_dir(m3tooleval_dir)
    present = [d for d, (rel, _) in DOMAIN_FILES.items()
               if (domains is None or d in domains) and (impl / rel).is_file()]
    if not present:
        return [], {}
    files = _read_checkout(impl)
    job = {
        "files": files,
        "domains": [[d, _module_name(DOMAIN_FILES[d][0]), _DOMAIN_GLOBALS.get(d, [])] for d in present],
        "tools": ({f"impl/{DOMAIN_FILES[d][0]}": sorted(OFFICIAL_TOOLS[d]) for d in present
                   if d in OFFICIAL_TOOLS} if record_calls else {}),
        "format": _REPORT_FORMAT, "root": _VIRTUAL_ROOT,
        "max_tasks": _MAX_TASKS_PER_DOMAIN, "max_calls": _MAX_CALLS,
    }
    answer = _run_in_sandbox(job, backend, timeout)
    return _tasks_from_report(answer, present, files, record_calls)


def _module_name(rel: str) -> str:
    """``web_browsing/__init__.py`` -> ``tasks.impl.web_browsing``."""
    parts = rel[:-len(".py")].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["tasks", "impl", *parts])


def _read_checkout(impl: Path) -> dict[str, str]:
    """The text of the task package's files (path under ``tasks/`` -> text): read, never run.

    Only regular files with a shipped suffix, inside `impl` (a link pointing out of it is
    refused), without caches or hidden folders, within count and size limits.
    """
    files: dict[str, str] = {}
    total = 0
    root = impl.resolve()
    for folder, dirnames, filenames in os.walk(root):  # does not follow links to folders
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for filename in sorted(filenames):
            if not filename.endswith(_SHIPPED_SUFFIXES) or filename.startswith("."):
                continue
            path = Path(folder) / filename
            rel = "impl/" + path.relative_to(root).as_posix()
            try:
                resolved = path.resolve()
                info = resolved.stat()
            except (OSError, RuntimeError) as e:  # a dangling link, a loop of links
                raise OfficialTaskError(f"cannot read {rel}: {_one_line(str(e))}") from None
            if root not in resolved.parents:
                raise OfficialTaskError(f"{rel} links outside the task folder")
            if not stat.S_ISREG(info.st_mode):
                raise OfficialTaskError(f"{rel} is not a regular file")
            if info.st_size > _MAX_FILE_BYTES:
                raise OfficialTaskError(f"{rel} is larger than {_MAX_FILE_BYTES} bytes")
            total += info.st_size
            if total > _MAX_TOTAL_BYTES or len(files) >= _MAX_FILES:
                raise OfficialTaskError(f"the task folder holds more than {_MAX_FILES} files "
                                        f"or {_MAX_TOTAL_BYTES} bytes of them")
            try:
                files[rel] = resolved.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise OfficialTaskError(f"{rel} is not UTF-8 text") from None
            except OSError as e:
                raise OfficialTaskError(f"cannot read {rel}: {e.strerror or e}") from None
    return files


def _run_in_sandbox(job: dict[str, Any], backend: str | None, timeout: float | None) -> Any:
    """The `answer` of one sandbox run of the task modules; OfficialTaskError if it has none."""
    from sandbox import SandboxConfig, SandboxUnavailable

    config = SandboxConfig().with_(backend=backend, timeout=timeout)
    code = f"_JOB = __import__('json').loads({json.dumps(job)!r})\n{_SANDBOX_PROGRAM}"
    try:
        with config.build(workers=1) as sb:
            result = sb.run(None, code)
    except (SandboxUnavailable, OSError) as e:
        raise OfficialTaskError(f"no sandbox to run the M3ToolEval task modules in: {_one_line(str(e))}") from None
    if result.status == "timeout":
        raise OfficialTaskError(f"the M3ToolEval task modules did not finish within {config.timeout:g} s")
    if result.status != "ok":
        what = "the M3ToolEval task modules failed" if result.status == "error" else \
            "the sandbox run of the M3ToolEval task modules failed"
        raise OfficialTaskError(f"{what}: " + _one_line(f"{result.error_type or 'error'}: {result.error or ''}"))
    if result.answer_type != "dict" or not isinstance(result.answer, dict):
        raise OfficialTaskError("the M3ToolEval task modules reported no task list "
                                f"(got a {_one_line(str(result.answer_type), 40)})")
    return result.answer


def _tasks_from_report(answer: dict[str, Any], present: list[str], files: dict[str, str],
                       record_calls: bool) -> tuple[list[BenchmarkTask], dict[str, list[dict]]]:
    """Our tasks from the sandbox's report, every part of it checked first."""
    if answer.get("format") != _REPORT_FORMAT or not isinstance(answer.get("domains"), list):
        raise OfficialTaskError("the M3ToolEval task modules reported something other than a task list")
    reports = answer["domains"]
    tasks: list[BenchmarkTask] = []
    calls_by_id: dict[str, list[dict]] = {}
    for i, domain in enumerate(present):
        rel, env_name = DOMAIN_FILES[domain]
        where = f"impl/{rel}"
        report = reports[i] if i < len(reports) else None
        if not isinstance(report, dict) or report.get("domain") != domain:
            raise OfficialTaskError(f"{where}: the sandbox reported no result for it")
        if "error" in report:
            raise OfficialTaskError(f"cannot load {where}: {_one_line(str(report['error']))}")
        records = report.get("tasks")
        if not isinstance(records, list) or not records:
            raise OfficialTaskError(f"{where} registers no tasks")
        if len(records) > _MAX_TASKS_PER_DOMAIN:
            raise OfficialTaskError(f"{where} registers more than {_MAX_TASKS_PER_DOMAIN} tasks")
        env_config = _env_config(domain, report.get("globals"), files, where)
        for record in records:
            name, instruction, answer_value = _checked_task(record, where)
            task_id = f"m3/{name}"
            if task_id in calls_by_id:
                raise OfficialTaskError(f"{where}: two tasks are named {name!r}")
            calls_by_id[task_id] = _checked_calls(record.get("calls"), domain, name) if record_calls else []
            data = {
                "answer": answer_value, "domain": domain, "env": env_name, "env_config": env_config,
                "official_name": name, "source": "m3tooleval", "evaluation_function": evaluation_source(answer_value),
            }
            tasks.append(BenchmarkTask(id=task_id, split="test", instruction=instruction, data=data))
    if len(reports) != len(present):
        raise OfficialTaskError("the sandbox reported other domains than were asked for")
    return tasks, calls_by_id


def _checked_task(record: Any, where: str) -> tuple[str, str, Any]:
    if not isinstance(record, dict):
        raise OfficialTaskError(f"{where}: a task was reported as {type(record).__name__}")
    name, instruction = record.get("name"), record.get("instruction")
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME or not name.isprintable():
        raise OfficialTaskError(f"{where}: a task name is not a short printable text: {_one_line(repr(name), 80)}")
    if not isinstance(instruction, str) or not instruction.strip() or len(instruction) > _MAX_INSTRUCTION:
        raise OfficialTaskError(f"task {name}: the instruction is not a non-empty text "
                                f"of at most {_MAX_INSTRUCTION} characters")
    if "expected_output" not in record:
        raise OfficialTaskError(f"task {name}: no expected output")
    return name, instruction, _json_value(record["expected_output"], f"task {name}: expected output")


def _checked_calls(calls: Any, domain: str, name: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list) or len(calls) > _MAX_CALLS:
        raise OfficialTaskError(f"task {name}: no list of recorded tool calls")
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("tool"), str) \
                or call["tool"] not in OFFICIAL_TOOLS.get(domain, {}):
            raise OfficialTaskError(f"task {name}: a recorded tool call names no tool of {domain}")
        if "error" in call:
            raise OfficialTaskError(f"task {name}: a call of {call['tool']} could not be recorded: "
                                    + _one_line(str(call["error"])))
        args = _json_value(call.get("args"), f"task {name}: arguments of {call['tool']}")
        if not isinstance(args, list):
            raise OfficialTaskError(f"task {name}: arguments of {call['tool']} are not a list")
        out.append({"tool": call["tool"], "args": args,
                    "result": _json_value(call.get("result"), f"task {name}: result of {call['tool']}")})
    return out


def _env_config(domain: str, module_globals: Any, files: dict[str, str], where: str) -> dict[str, Any]:
    """What :func:`make_env` needs for `domain`'s tasks, checked by building the environment once."""
    config: dict[str, Any] = {}
    try:
        if domain == "travel_itinerary_planning":
            config["travel"] = _travel_tables(module_globals)
        elif domain == "web_browsing":
            config["site"] = _official_site(files, where)
        _build_env(DOMAIN_FILES[domain][1], config)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise OfficialTaskError(f"{where}: {_one_line(str(e) or type(e).__name__)}") from None
    return config


def _travel_tables(module_globals: Any) -> dict[str, Any]:
    """The module's ``flights`` and ``hotels`` tables, with M3ToolEval's quoted location names unquoted."""
    tables = module_globals if isinstance(module_globals, dict) else {}
    flights, hotels = tables.get("flights"), tables.get("hotels")
    if not isinstance(flights, list) or not isinstance(hotels, list) or not flights or not hotels:
        raise ValueError("the travel module defines no non-empty 'flights' and 'hotels' lists")
    if len(flights) + len(hotels) > _MAX_TABLE_ROWS:
        raise ValueError("the travel tables are too large")

    def row(item: Any, texts: tuple[str, ...], what: str) -> dict[str, Any]:
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in texts):
            raise ValueError(f"a {what} is not a record with text {', '.join(texts)}")
        return {k: v.strip().strip('"').strip("'") if k in texts and k != "date" else v for k, v in item.items()}

    hotel_rows = [row(h, ("location",), "hotel") for h in hotels]
    if not all(isinstance(h.get("preferences"), list) and all(isinstance(p, str) for p in h["preferences"])
               for h in hotel_rows):
        raise ValueError("a hotel's preferences are not a list of texts")
    return {"flights": [row(f, ("from_location", "to_location", "date"), "flight") for f in flights],
            "hotels": hotel_rows}


def _official_site(files: dict[str, str], where: str) -> dict[str, Any]:
    from envs.web_browsing import site_from_m3_pages

    rel = where.rsplit("/", 1)[0] + "/web_pages.jsonl"
    if rel not in files:
        raise ValueError(f"no {rel}")
    records = []
    for lineno, line in enumerate(files[rel].splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError(f"{rel}:{lineno} is not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("name"), str) \
                or not isinstance(record.get("content"), str):
            raise TypeError(f"{rel}:{lineno} is not a page {{\"name\": ..., \"content\": ...}}")
        records.append(record)
    return site_from_m3_pages(records, landing="/")


def _json_value(value: Any, what: str, depth: int = 0) -> Any:
    """`value` if it is plain JSON data (finite numbers, text keys), else OfficialTaskError."""
    if depth > 60:
        raise OfficialTaskError(f"{what} is nested too deeply")
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise OfficialTaskError(f"{what} {value!r} is not a finite number")
        return value
    if isinstance(value, list):
        return [_json_value(v, what, depth + 1) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_value(v, what, depth + 1) for k, v in value.items()}
    raise OfficialTaskError(f"{what} of type {type(value).__name__} is not plain data")


def _one_line(text: str, limit: int = 300) -> str:
    """`text` on one line of printable characters, at most `limit` of them."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


# -- the untrusted side: what runs in the sandbox -------------------------------------------------
#
# Preceded by ``_JOB = json.loads(...)``: {"files": {path under tasks/: text}, "domains": [[domain,
# module, [globals to report]]], "tools": {file: [tool functions to record]}, "format", "root",
# "max_tasks", "max_calls"}. Standard library only. Leaves in ``answer``: {"format", "domains":
# [{"domain", "tasks": [{"name", "instruction", "expected_output", "calls"?}], "globals"} or
# {"domain", "error"}]}, stopping at the first domain that fails.

_SANDBOX_PROGRAM = r'''
import builtins, importlib, importlib.abc, importlib.machinery, io, itertools, math, os, posixpath, sys
from collections import namedtuple
from enum import Enum

FILES = _JOB["files"]
ROOT = _JOB["root"]
RECORD = {ROOT + "/" + rel: set(tools) for rel, tools in _JOB["tools"].items()}


def to_json(value, depth=0):
    """Plain JSON data: tuples become lists, dict keys texts; anything else is an error."""
    if depth > 40:
        raise ValueError("is nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [to_json(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v, depth + 1) for k, v in value.items()}
    raise ValueError(f"of type {type(value).__name__} is not plain data")


def describe(error):
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 500 else text[:500] + "..."


# -- the checkout's files, served from FILES ----------------------------------------------------
def shipped(path):
    """The path under tasks/ of a file of the checkout, or None."""
    try:
        path = os.fspath(path)
    except TypeError:
        return None
    if not isinstance(path, str):
        return None
    path = posixpath.normpath(path)
    return path[len(ROOT) + 1:] if path.startswith(ROOT + "/") else None


_real_open = builtins.open


def open_shipped(file, mode="r", *args, **kwargs):
    rel = shipped(file)
    if rel is None:
        return _real_open(file, mode, *args, **kwargs)
    if rel not in FILES:
        raise FileNotFoundError(2, "No such file or directory", os.fspath(file))
    if not set(mode) <= set("rtb"):
        raise PermissionError(13, "The task files are read-only", os.fspath(file))
    text = FILES[rel]
    return io.BytesIO(text.encode("utf-8")) if "b" in mode else io.StringIO(text)


builtins.open = open_shipped


# -- tasks.base: records tasks and registrations (the checkout's base.py is the harness) -------------
ToolType = namedtuple("ToolType", ["name", "description", "function", "fn_signature"])


class ActionMode(Enum):
    TEXT_AS_ACTION = "text_as_action"
    JSON_AS_ACTION = "json_as_action"
    CODE_AS_ACTION = "code_as_action"


pending_calls = []
registered = []


class Task:
    def __init__(self, name, tools, instruction, expected_output, is_single_tool_task=True):
        self.name = name
        self.tools = tools
        self.instruction = instruction
        self.expected_output = expected_output
        self.is_single_tool_task = is_single_tool_task
        self.calls = list(pending_calls)  # the tool calls made since the previous task
        pending_calls.clear()


def register_task_iterator(task_iter, length):
    registered.append((sys._getframe(1).f_globals.get("__name__"), task_iter))


def get_task_iterator():
    for _owner, tasks in registered:
        yield from tasks


BASE = {"ToolType": ToolType, "ActionMode": ActionMode, "Task": Task,
        "register_task_iterator": register_task_iterator, "get_task_iterator": get_task_iterator}


class Importer(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the package ``tasks``: ``tasks.base`` is ours, ``tasks.impl...`` from FILES."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in ("tasks", "tasks.base"):
            origin = ROOT + ("/__init__.py" if fullname == "tasks" else "/base.py")
            package = fullname == "tasks"
        elif fullname.startswith("tasks.impl"):
            rel = fullname.replace(".", "/")[len("tasks/"):]
            if rel + "/__init__.py" in FILES or rel == "impl":
                origin, package = f"{ROOT}/{rel}/__init__.py", True
            elif rel + ".py" in FILES:
                origin, package = f"{ROOT}/{rel}.py", False
            else:
                return None
        else:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, self, origin=origin, is_package=package)
        spec.has_location = True
        if package:
            spec.submodule_search_locations = [posixpath.dirname(origin)]
        return spec

    def create_module(self, spec):
        return None

    def get_source(self, fullname):
        rel = shipped(sys.modules[fullname].__file__) if fullname in sys.modules else None
        return FILES.get(rel)

    def exec_module(self, module):
        if module.__name__ == "tasks.base":
            module.__dict__.update(BASE)
            return
        if module.__name__ == "tasks":
            return
        source = FILES.get(shipped(module.__file__), "")
        exec(compile(source, module.__file__, "exec", dont_inherit=True), module.__dict__)


sys.meta_path.insert(0, Importer())


# -- recording the official tool calls ---------------------------------------------------------------
open_calls = {}
recorded = [0]


def plain_or_error(entry, key, value):
    try:
        entry[key] = to_json(value)
    except (ValueError, TypeError, RecursionError) as e:
        entry["error"] = f"its {key} {e}"


def profile(frame, event, arg):
    if event == "call":
        code = frame.f_code
        tools = RECORD.get(code.co_filename)
        if not tools or code.co_name not in tools:
            return
        if getattr(frame.f_globals.get(code.co_name), "__code__", None) is not code:
            return  # a method or a nested function of the same name, not the tool
        if recorded[0] >= _JOB["max_calls"]:
            return
        recorded[0] += 1
        values = [frame.f_locals.get(n) for n in code.co_varnames[:code.co_argcount]]
        if code.co_flags & 0x04:  # CO_VARARGS
            values.extend(frame.f_locals.get(code.co_varnames[code.co_argcount + code.co_kwonlyargcount], ()))
        entry = {"tool": code.co_name}
        plain_or_error(entry, "args", values)
        open_calls[id(frame)] = entry
        pending_calls.append(entry)
    elif event == "return" and open_calls:
        entry = open_calls.pop(id(frame), None)
        if entry is not None:
            plain_or_error(entry, "result", arg)


# -- import each domain, report its tasks ------------------------------------------------------------
reports = []
for domain, module_name, wanted_globals in _JOB["domains"]:
    report = {"domain": domain}
    try:
        if RECORD:
            sys.setprofile(profile)
        try:
            module = importlib.import_module(module_name)
        finally:
            sys.setprofile(None)
        tasks = []
        for owner, iterable in registered:
            if owner != module_name and not str(owner).startswith(module_name + "."):
                continue
            for task in itertools.islice(iterable, _JOB["max_tasks"] + 1 - len(tasks)):
                if not isinstance(task, Task):
                    raise TypeError(f"register_task_iterator got a {type(task).__name__}, not a Task")
                tasks.append(task)
        out = []
        for task in tasks[:_JOB["max_tasks"] + 1]:
            record = {}
            for field in ("name", "instruction", "expected_output"):
                try:
                    record[field] = to_json(getattr(task, field))
                except (ValueError, TypeError, RecursionError) as e:
                    raise ValueError(f"task {str(task.name)[:80]!r}: {field} {e}") from None
            if RECORD:
                record["calls"] = task.calls
            out.append(record)
        report["tasks"] = out
        report["globals"] = {}
        for name in wanted_globals:
            if not hasattr(module, name):
                raise NameError(f"the module defines no {name!r}")
            try:
                report["globals"][name] = to_json(getattr(module, name))
            except (ValueError, TypeError, RecursionError) as e:
                raise ValueError(f"{name} {e}") from None
    except BaseException as e:  # SystemExit included: the module's failure, reported
        report = {"domain": domain, "error": describe(e)}
    reports.append(report)
    if "error" in report:
        break

answer = {"format": _JOB["format"], "domains": reports}
'''
