"""DPO (``dpo``): pairs of trajectories of one task, TRL's ``DPOTrainer``, on multi-turn pairs.

Two trajectories of one task share a beginning (the system prompt, usually the first user
message, sometimes whole turns). The prompt is that shared part: the longest common token
prefix of the two encoded conversations, moved back to the start of an assistant reply if it
ends inside one, so each diverging reply is scored whole (:func:`split_pair`). So the prompt
holds every message both sides share, then the header of the first message where they diverge
(and, when that message is not the model's, the start both versions share); chosen and rejected
are the two continuations, which can hold several turns: their user, observation and tool
tokens are in the sequence as context but out of the log-probabilities, through a per-token
completion mask (:class:`MaskedPreferenceCollator`: TRL's preference collator with that mask
applied). A pair whose continuations hold no assistant token on one side is skipped. TRL's own
loss and trainer do the rest (:class:`PretokenizedDPOTrainer`: TRL's, fed the examples as we
tokenized them).

This module subclasses TRL's classes, so it imports TRL: only code that trains imports it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from sca.records.io import InputError
from sca.training.encoding import ChatEncoder, Encoded, verify_mask, window
from sca.training.job import Prepared, TrajectoryJob, locate, reasons
from sca.training.selection import Selection


def split_pair(chosen: Encoded, rejected: Encoded) -> int:
    """Where a DPO pair's shared prompt ends: the longest common token prefix, moved back to the
    start of an assistant reply if it ends inside one (see the module docstring)."""
    a, b = chosen.input_ids, rejected.input_ids
    p = 0
    n = min(len(a), len(b))
    while p < n and a[p] == b[p]:
        p += 1
    moved = True
    while moved:
        moved = False
        for mask in (chosen.mask, rejected.mask):
            if 0 < p < len(mask) and mask[p] and mask[p - 1]:
                while p > 0 and mask[p - 1]:
                    p -= 1
                moved = True
    return p


def prepare_dpo(selection: Selection, encoder: ChatEncoder, max_length: int | None, path: str) -> Prepared:
    """One example per pair: prompt_ids, chosen_ids/rejected_ids and their assistant masks."""
    prep = Prepared(rows=[], skipped=Counter(selection.skipped))
    cache: dict[str, Encoded] = {}

    def encoded(record: dict[str, Any]) -> Encoded:
        if record["id"] not in cache:
            where = locate(path, record)
            enc = encoder.encode(record, where)
            verify_mask(encoder.tokenizer, enc, where)
            cache[record["id"]] = enc
        return cache[record["id"]]

    for c_rec, r_rec in selection.pairs:
        if not any(m["role"] == "assistant" for m in c_rec["messages"]) or \
                not any(m["role"] == "assistant" for m in r_rec["messages"]):
            prep.skipped["pair: no assistant message"] += 1
            continue
        c, r = encoded(c_rec), encoded(r_rec)
        p = split_pair(c, r)
        c_ids, c_mask, r_ids, r_mask = c.input_ids[p:], c.mask[p:], r.input_ids[p:], r.mask[p:]
        if not any(c_mask) or not any(r_mask):
            prep.skipped["pair: no diverging assistant token"] += 1
            continue
        if max_length is not None:
            if p >= max_length:
                prep.skipped["pair: shared prompt fills max_length"] += 1
                continue
            room = max_length - p
            if len(c_ids) > room or len(r_ids) > room:
                prep.truncated += 1
                if not any(c_mask[:room]) or not any(r_mask[:room]):
                    prep.skipped["pair: no assistant token within max_length"] += 1
                    continue
            c_ids, c_mask, r_ids, r_mask = c_ids[:room], c_mask[:room], r_ids[:room], r_mask[:room]
        # each side as DPO scores it: its completion after the shared prompt, cut at max_length
        for enc, side, rec in ((c, c_ids, c_rec), (r, r_ids, r_rec)):
            verify_mask(encoder.tokenizer, window(enc, p, p + len(side)), locate(path, rec))
        prep.rows.append({"prompt_ids": c.input_ids[:p], "chosen_ids": c_ids, "rejected_ids": r_ids,
                          "chosen_mask": c_mask, "rejected_mask": r_mask})
        prep.tokens += 2 * p + len(c_ids) + len(r_ids)
        prep.trained_tokens += sum(c_mask) + sum(r_mask)
    prep.examples = len(prep.rows)
    prep.parity = encoder.parity
    if not prep.rows:
        raise InputError(f"{path}: no DPO pair left to train on ({reasons(prep.skipped)})")
    return prep


class MaskedPreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator, with each completion's per-token mask (1: assistant token) applied,
    so the log-probabilities of a multi-turn continuation cover its assistant tokens only."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        width = out["input_ids"].shape[1]
        rows = []
        for key in ("chosen_mask", "rejected_mask"):  # the batch is [all chosen, all rejected]
            for ex in examples:
                m = [0] * len(ex["prompt_ids"]) + list(ex[key])
                if self.max_length is not None:
                    m = m[: self.max_length]
                rows.append(m + [0] * (width - len(m)))
        mask = torch.tensor(rows, dtype=out["completion_mask"].dtype, device=out["completion_mask"].device)
        out["completion_mask"] = out["completion_mask"] * mask
        return out


class PretokenizedDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer fed with examples sca already tokenized, split and checked (TRL 1.16's DPO
    trainer always re-tokenizes text; this only skips that)."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "chosen_ids", "rejected_ids", "chosen_mask",
                                       "rejected_mask", "ref_chosen_logps", "ref_rejected_logps"]


class DPOJob(TrajectoryJob):
    """``dpo``: pairs of the selected trajectories, through TRL's DPOTrainer with our masks."""

    def examples(self, selection: Selection, encoder: ChatEncoder, max_length: int | None, path: str) -> Prepared:
        return prepare_dpo(selection, encoder, max_length, path)

    def trainer(self, config: Any, model: str, tokenizer: Any, callbacks: list, peft_config: Any) -> Any:
        from datasets import Dataset

        collator = MaskedPreferenceCollator(
            pad_token_id=tokenizer.pad_token_id, max_length=config.max_length, truncation_mode=config.truncation_mode,
            pad_to_multiple_of=config.pad_to_multiple_of,
        )
        dataset = Dataset.from_list(self.prep.rows)
        return PretokenizedDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                                      data_collator=collator, peft_config=peft_config, callbacks=callbacks)
