"""M3ToolEval as benchmarks: our held-out task sets, or the official tasks of a CodeAct checkout.

Both score a trial with the task's own ``evaluate(answer)``, built on the tolerant comparison
(:mod:`sca.benchmarks.m3.scoring`), run in the sandbox as a CaT task's is
(:func:`sca.agent.executor.evaluate_scorer`). An official task runs in an environment built from
what its checkout defines (the travel tables, the web pages), not in our default one.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from sca.benchmarks.base import Benchmark, BenchmarkTask

SCORER = "m3_tolerant"


class M3HeldOut(Benchmark):
    """Our held-out task set of one M3ToolEval environment (a JSONL file of :mod:`sca.benchmarks.m3`)."""

    scorer_name = SCORER
    takes_checkout = True

    def __init__(self, env: str, task_file: str) -> None:
        self.env = env
        self.task_file = task_file

    def _tasks(self) -> list[BenchmarkTask]:
        from sca.benchmarks.m3.tasks import load_tasks

        return load_tasks(self.task_file, self.env)

    def scorer(self, task: BenchmarkTask) -> Any:
        from sca.agent.executor import evaluate_scorer

        return evaluate_scorer(task.data["evaluation_function"])

    def from_checkout(self, path: str) -> Benchmark:
        return M3Official(self.env, path)


class M3Official(M3HeldOut):
    """The official M3ToolEval tasks of environment `env` found in the CodeAct checkout at `path`
    (loaded once, in the sandbox: :func:`sca.benchmarks.m3.official.load_official_tasks`)."""

    def __init__(self, env: str, path: str) -> None:
        self.env = env
        self.path = path

    @cached_property
    def _official(self) -> list[BenchmarkTask]:
        from sca.benchmarks.m3.official import load_official_tasks

        return [t for t in load_official_tasks(self.path) if t.data.get("env") == self.env]

    def _tasks(self) -> list[BenchmarkTask]:
        return list(self._official)

    def eval_tasks(self, split: str, *, limit: int | None = None,
                   drop_noop_solvable: bool = False) -> tuple[list[BenchmarkTask], int | None]:
        """Every official task (they are all the test split; `split` is not asked), the first `limit`."""
        tasks = self.tasks()
        return (tasks[:limit] if limit else tasks), None

    def make_env(self, task: BenchmarkTask) -> Any:
        from sca.benchmarks.m3.official import make_env

        return make_env(task)


CALCULATION = M3HeldOut("calculation", "tasks_calculation.jsonl")
WEB_BROWSING = M3HeldOut("web_browsing", "tasks_web_browsing.jsonl")
