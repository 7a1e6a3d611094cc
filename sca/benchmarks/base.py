"""What a benchmark is: the task set of one environment, the environment each task runs in, its scorer.

``sca eval`` runs the executor on a benchmark's tasks and scores every trial with the benchmark's
scorer; ``sca envs tasks`` lists the tasks; ``sca propose`` drops a proposed task whose instruction
is a test task's. None of them knows which benchmark it has: each is a :class:`Benchmark` found in
the registry (:mod:`sca.benchmarks`) by its environment's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BenchmarkTask:
    """One task of a benchmark (measured by ``sca eval``)."""

    id: str
    split: str  # "train" or "test" (or another name the benchmark uses)
    instruction: str  # what the user wants, as text
    data: dict[str, Any] = field(default_factory=dict)  # the benchmark's own record, untouched


class Benchmark:
    """The benchmark of environment :attr:`env`. Subclasses set :attr:`env` and :attr:`scorer_name`
    and implement :meth:`_tasks` and :meth:`scorer`; the rest has defaults."""

    env: str = ""
    #: the scorer's name, as each result records it
    scorer_name: str = ""
    #: whether the official M3ToolEval tasks of a CodeAct checkout can stand in for its own (:meth:`from_checkout`)
    takes_checkout: bool = False

    # -- the task set ---------------------------------------------------------------------------------
    def _tasks(self) -> list[BenchmarkTask]:
        """Every task, in the benchmark's order (each call a new list)."""
        raise NotImplementedError

    def tasks(self, split: str | None = None) -> list[BenchmarkTask]:
        """The tasks, optionally of one split only."""
        tasks = self._tasks()
        if split is None:
            return tasks
        if split not in self.splits():
            raise ValueError(f"{self.env}: unknown split {split!r} (have: {', '.join(self.splits())})")
        return [t for t in tasks if t.split == split]

    def splits(self) -> list[str]:
        return sorted({t.split for t in self._tasks()})

    def eval_tasks(self, split: str, *, limit: int | None = None,
                   drop_noop_solvable: bool = False) -> tuple[list[BenchmarkTask], int | None]:
        """The tasks ``sca eval`` runs: those of `split`, the first `limit`, less (with
        `drop_noop_solvable`) those scored 1 when the agent does nothing; and how many were left
        out so, or None where the benchmark has no such count. An unknown split is an InputError."""
        from sca.records.io import InputError

        if split not in self.splits():
            raise InputError(f"{self.env}: no split {split!r} (have {', '.join(self.splits())})")
        tasks = self.tasks(split)
        if limit:
            tasks = tasks[:limit]
        return self.without_noop_solvable(tasks) if drop_noop_solvable else (tasks, None)

    def without_noop_solvable(self, tasks: list[BenchmarkTask]) -> tuple[list[BenchmarkTask], int | None]:
        """`tasks` less those the scorer gives 1 when the agent does nothing, and how many; by
        default the benchmark knows of none, and says None."""
        return tasks, None

    def from_checkout(self, path: str) -> Benchmark:
        """The benchmark with the official tasks of the CodeAct checkout at `path` instead of its own,
        where it :attr:`takes_checkout`; else itself (the checkout does not concern it)."""
        return self

    # -- running a task -------------------------------------------------------------------------------
    def make_env(self, task: BenchmarkTask) -> Any:
        """A fresh environment in which `task` is solved (default: the environment's own)."""
        from envs import make_env

        return make_env(self.env)

    def scorer(self, task: BenchmarkTask) -> Any:
        """The scorer of an executor episode on `task` (a :data:`sca.agent.executor.Scorer`)."""
        raise NotImplementedError
