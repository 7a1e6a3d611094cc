"""An algorithm's part of a training run, as :func:`sca.training.fit.fit` asks for it.

:func:`~sca.training.fit.fit` runs every algorithm through the same skeleton (resume, output
check, tokenizer, log, train, save or merge, summary); a :class:`Job` fills in what differs: the
checks of its input and options, the examples it prepares before the model loads, what it holds
while training (GRPO: the sandbox), the TRL trainer, the log's extra fields and the summary's
counts. :class:`TrajectoryJob` is the offline part shared by SFT and DPO (select, encode, check);
:mod:`sca.training.sft`, :mod:`sca.training.dpo` and :mod:`sca.training.grpo` hold the three jobs.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sca.records.io import InputError, Loaded, StreamedInput
from sca.training.algorithms import Algorithm
from sca.training.encoding import ChatEncoder, Parity, check_parity
from sca.training.selection import Selection


class Job:
    """What one algorithm adds to :func:`~sca.training.fit.fit`, hook by hook, in the order fit calls them."""

    #: offline jobs encode their examples before the model loads (fit says "tokenizing" first), and the run's
    #: throughput is counted in those examples' tokens; GRPO's episodes are made while training
    encodes_examples = False

    def __init__(self, algorithm: Algorithm, source: Loaded | StreamedInput):
        self.algorithm = algorithm
        self.source = source  # the input, described in the summary

    def check(self, config: Any) -> None:
        """Before anything loads: refuse, with one line, what this algorithm cannot run with."""

    def prepare(self, tokenizer: Any, eos_ids: list[int], config: Any) -> None:
        """With the tokenizer, before the model loads: the examples (offline), checked."""

    def session(self) -> contextlib.AbstractContextManager:
        """What the job holds while its trainer is built and trains (GRPO: the sandbox)."""
        return contextlib.nullcontext()

    def log_extra(self) -> Callable[[], dict[str, Any]] | None:
        """More fields for each line of train_log.jsonl (GRPO: its episodes and groups)."""
        return None

    def trainer(self, config: Any, model: str, tokenizer: Any, callbacks: list, peft_config: Any) -> Any:
        """The TRL trainer, ready to train."""
        raise NotImplementedError

    def counts(self) -> dict[str, Any]:
        """The summary's counts (records, examples, skipped...: fields of TrainSummary), after training."""
        raise NotImplementedError


@dataclass
class Prepared:
    """The examples handed to TRL, with what was counted on the way."""

    rows: list[dict[str, Any]]
    examples: int = 0
    skipped: Counter = field(default_factory=Counter)
    truncated: int = 0
    tokens: int = 0  # tokens of the examples as trained (after truncation)
    trained_tokens: int = 0  # of which assistant tokens (the loss's)
    parity: Parity = field(default_factory=Parity)


def locate(path: str, record: dict[str, Any]) -> str:
    """A record, as one-line errors name it."""
    return f"{path}: record {record['id']!r}"


def reasons(skipped: Counter) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in skipped.most_common()) or "nothing skipped"


class TrajectoryJob(Job):
    """Training on trajectories: select (the algorithm's `select`), encode with the chat template, check the
    masks and the token parity, cut at max_length (:meth:`examples`, per trainer), then hand TRL the rows."""

    encodes_examples = True

    def __init__(self, algorithm: Algorithm, source: Loaded):
        super().__init__(algorithm, source)
        self.selection: Selection | None = None
        self.prep: Prepared | None = None

    def examples(self, selection: Selection, encoder: ChatEncoder, max_length: int | None, path: str) -> Prepared:
        """The rows of this trainer's dataset, from the selected records."""
        raise NotImplementedError

    def encode(self, records: list[dict[str, Any]], tokenizer: Any, config: Any, path: str = "<input>",
               eos_ids: Iterable[int] = ()) -> tuple[Selection, Prepared]:
        """Select, encode, check (masks, token parity) and truncate the examples. No training."""
        selection = self.algorithm.select(records, config)
        encoder = ChatEncoder(tokenizer, config.token_ids, eos_ids)
        prep = self.examples(selection, encoder, config.max_length, path)
        check_parity(prep.parity, config.token_ids)
        if not prep.rows:
            raise InputError(f"{path}: no example left to train on ({reasons(prep.skipped)})")
        return selection, prep

    def prepare(self, tokenizer: Any, eos_ids: list[int], config: Any) -> None:
        self.selection, self.prep = self.encode(self.source.records, tokenizer, config, self.source.path, eos_ids)

    def counts(self) -> dict[str, Any]:
        prep, skipped = self.prep, Counter(self.prep.skipped)
        if self.source.skipped:
            skipped["invalid line (--skip-invalid)"] = len(self.source.skipped)
        return {"records": len(self.source.records), "examples": prep.examples, "skipped": dict(skipped.most_common()),
                "notes": dict(self.selection.notes), "truncated": prep.truncated, "tokens": prep.tokens,
                "trained_tokens": prep.trained_tokens, "parity": prep.parity.to_dict()}
