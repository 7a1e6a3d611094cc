"""The algorithms of ``sca train --algo``: the one list, light enough for the command line to read.

Each entry says what the algorithm trains on (its selection function, in
:mod:`sca.training.selection`; none for an online algorithm, which trains on tasks) and which kind
of trainer runs it (``trainer``: the key of its config class in :mod:`sca.training.configs` and of
its job in :mod:`sca.training.fit`). Adding an algorithm is adding an entry here and, for a new kind
of trainer, a config class and a job.

``sca --help`` imports this module, so it imports nothing at all: the selection functions are named
here and looked up when an algorithm selects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sca.training.selection import Selection


@dataclass(frozen=True)
class Algorithm:
    """One `--algo`: which records it trains on (`selector`) and which trainer runs it (`trainer`)."""

    name: str
    trainer: str  # "sft", "dpo" or "grpo": its config class and job
    help: str  # what it trains on, in a few words (sca train --help)
    #: offline: the function of sca.training.selection that picks its examples from the trajectories; None:
    #: online, on tasks, with rewards from episodes played during training
    selector: str | None = None

    @property
    def online(self) -> bool:
        return self.selector is None

    def select(self, records: list[dict[str, Any]], config: Any = None) -> Selection:
        """What this (offline) algorithm trains on, from the records; a one-line error if there is nothing."""
        from sca.training import selection

        return getattr(selection, self.selector)(records, config)


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("rft", "sft", "SFT on reward-1 trajectories (the paper)", "select_rft"),
    Algorithm("sft", "sft", "SFT on every rewarded one (distillation)", "select_sft"),
    Algorithm("dpo", "dpo", "reward-1 vs reward-0 pairs of a task", "select_dpo"),
    Algorithm("grpo", "grpo", "online, K live episodes per task"),
)}


def get_algorithm(name: str) -> Algorithm:
    if name in ALGORITHMS:
        return ALGORITHMS[name]
    from sca.records.io import InputError  # the error path only: this module stays import-free

    raise InputError(f"unknown --algo {name!r} (choose one of {', '.join(ALGORITHMS)})")
