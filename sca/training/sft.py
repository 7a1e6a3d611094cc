"""Supervised fine-tuning (``rft``, ``sft``): one example per trajectory, TRL's ``SFTTrainer``.

Each example is the trajectory's tokens (:mod:`sca.training.encoding`) with labels -100 off the
assistant tokens, so TRL's loss is the mean over the assistant's own tokens; TRL gets them
pre-tokenized and does the rest.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sca.training.encoding import ChatEncoder, verify_mask, window
from sca.training.job import Prepared, TrajectoryJob, locate
from sca.training.selection import Selection


def prepare_sft(selection: Selection, encoder: ChatEncoder, max_length: int | None, path: str) -> Prepared:
    """One example per trajectory: input_ids, and labels (-100 off the assistant tokens)."""
    prep = Prepared(rows=[], skipped=Counter(selection.skipped))
    for record in selection.records:
        where = locate(path, record)
        if not any(m["role"] == "assistant" for m in record["messages"]):
            prep.skipped["no assistant message"] += 1
            continue
        enc = encoder.encode(record, where)
        verify_mask(encoder.tokenizer, enc, where)
        if max_length is not None and len(enc.input_ids) > max_length:
            prep.truncated += 1
            enc = window(enc, 0, max_length)
            if not any(enc.mask):
                prep.skipped["no assistant token within max_length"] += 1
                continue
            verify_mask(encoder.tokenizer, enc, where)  # as trained, not only before the cut
        ids, mask = enc.input_ids, enc.mask
        prep.rows.append({"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)]})
        prep.tokens += len(ids)
        prep.trained_tokens += sum(mask)
    prep.examples = len(prep.rows)
    prep.parity = encoder.parity
    return prep


class SFTJob(TrajectoryJob):
    """``rft`` and ``sft``: the selected trajectories, one example each, through TRL's SFTTrainer."""

    def examples(self, selection: Selection, encoder: ChatEncoder, max_length: int | None, path: str) -> Prepared:
        return prepare_sft(selection, encoder, max_length, path)

    def trainer(self, config: Any, model: str, tokenizer: Any, callbacks: list, peft_config: Any) -> Any:
        from datasets import Dataset
        from trl import SFTTrainer

        dataset = Dataset.from_list(self.prep.rows)
        return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=callbacks)
