"""``CHECKPOINT_DIR/train_log.jsonl``: one line per logging step, written as TRL logs it.

Each line is a :data:`sca.records.schema.TRAIN_LOG_LINE` (docs/TRAJECTORY.md, "Training logs"):
step, epoch, loss, learning rate, grad norm, tokens/s since the last line, elapsed seconds; DPO's
reward margin and log-probabilities; GRPO's rewards and KL, and the episodes and groups its job
counts (``extra``). Only the main process of a distributed run writes.
"""

from __future__ import annotations

import json
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


class TrainLog(TrainerCallback):
    """Writes CHECKPOINT_DIR/train_log.jsonl: one line per logging step (main process only)."""

    KEYS = ("loss", "learning_rate", "grad_norm")
    EXTRA: typing.ClassVar[dict[str, str]] = {"rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
                                              "logps/chosen": "logps_chosen", "logps/rejected": "logps_rejected"}

    def __init__(self, path: Path, append: bool = False, echo: Callable[[dict], None] | None = None,
                 extra: Callable[[], dict] | None = None):
        self.path = Path(path)
        self.append = append
        self.echo = echo
        self.extra = extra  # more fields for each line (GRPO: groups, uniform groups, rewards)
        self.lines: list[dict[str, Any]] = []
        self.final: dict[str, Any] = {}
        self._t0 = self._t_last = 0.0
        self._tokens_last = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = self._t_last = time.monotonic()
        if state.is_world_process_zero and not self.append:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "train_runtime" in logs:
            self.final = dict(logs)
            return
        if "loss" not in logs and "eval_loss" not in logs:
            return
        now = time.monotonic()
        tokens = float(logs.get("num_tokens", self._tokens_last))
        dt = now - self._t_last
        line: dict[str, Any] = {"step": state.global_step, "epoch": round(float(state.epoch or 0.0), 4)}
        for k in self.KEYS:
            if k in logs:
                line[k] = logs[k]
        if "loss" in logs:
            line["tokens_per_s"] = round((tokens - self._tokens_last) / dt, 2) if dt > 0 else None
            line["num_tokens"] = int(tokens)
            self._tokens_last, self._t_last = tokens, now
        if "eval_loss" in logs:
            line["eval_loss"] = logs["eval_loss"]
        for k, name in self.EXTRA.items():
            if k in logs:
                line[name] = logs[k]
        for k in ("reward", "reward_std", "frac_reward_zero_std", "kl"):
            if k in logs:
                line[k] = logs[k]
        if self.extra is not None:
            line.update(self.extra())
        line["elapsed_s"] = round(now - self._t0, 3)
        self.lines.append(line)
        if state.is_world_process_zero:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
            if self.echo is not None:
                self.echo(line)
