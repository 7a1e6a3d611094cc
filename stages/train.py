"""`sca train`: train a model on the trajectories `sca rollout` wrote, with TRL's trainers.

Algorithms (``ALGORITHMS``; each picks its examples from the records, then hands them to a TRL trainer):

* ``rft``, the paper's self-improvement (rejection fine-tuning, i.e. REINFORCE with a 0/1
  reward): supervised fine-tuning (TRL's ``SFTTrainer``) on the trajectories with reward 1.
* ``sft``, distillation: the same on every trajectory whose reward is 0 or 1. Trajectories
  with a null reward (an infrastructure failure: a sandbox or inference error, see
  docs/TRAJECTORY.md) are left out, since their conversation is broken by something that was
  not the model's doing.
* ``dpo``: TRL's ``DPOTrainer`` on pairs of trajectories of the same ``task_id``: one with
  reward 1 (chosen) against one with reward 0 (rejected). Every trajectory of a task is used:
  the i-th pair of a task takes the i-th chosen and the i-th rejected trajectory, in trial
  order, cycling the shorter side, so a task with C chosen and R rejected gives max(C, R)
  pairs (at most ``max_pairs_per_task``). Tasks with only one side are counted and skipped.

**The loss covers the assistant's own tokens only**, in every assistant turn: never the
system prompt, user messages, observations or tool results. We build the mask from the chat
template ourselves, so it works with any template, with or without ``{% generation %}``
markers: the conversation is rendered progressively, and for the assistant message i

    context_i = render(messages[:i], add_generation_prompt=True)
    turn_i    = render(messages[:i + 1])[len(context_i):]

``turn_i`` (the reply, the end-of-turn token, and any glue the template writes after it) is
tokenized on its own and appended after the tokens of what came before; its tokens up to and
including the first end-of-turn token are trained, the glue after it (e.g. the newline after
``<|im_end|>``) is not: the model never generates it; after the last reply it is dropped (no
newline, empty turn or generation prompt left untrained at the end of an example). The end-of-turn
tokens are the checkpoint's eos ids, the tokenizer's eos token and the chat template's own
end-of-turn token (read from a rendered probe reply), so a tokenizer whose eos token is missing or
differs from the template's still trains each reply to its end of turn. A template that renders an earlier
part of the conversation differently once later turns exist (``render(messages[:i])`` not a
prefix of ``render(messages[:i+1])``, e.g. templates that drop reasoning from past turns)
cannot be trained on whole conversations and is refused with a one-line error. Messages after
the last assistant reply carry no loss and are dropped. **Before any training**, every
example is checked independently of how its mask was made: the trained positions must form
exactly one run per assistant message, each run must decode to that message's content and end with
its end-of-turn token (unless the model stopped without one); this is checked again on each example
as trained, after the cut at ``max_length``; otherwise the run stops with a one-line error naming
the record and turn.

**Token parity** (``token_ids``, ``--token-ids``): a record's ``assistant_token_ids`` are the
token ids the model generated for each assistant message. ``check`` (default): re-tokenizing
each reply must reproduce them (the re-tokenized reply, or the same without its final
end-of-turn token when generation stopped on a stop string or the length limit); any mismatch
stops the run with the count and the first example. What is trained is then what the model
produced, as under ``use``: a reply it ended without an end-of-turn token is trained without one. ``use``: the generated ids are trained
on as they are (the reply's span is replaced by them; the template's end-of-turn token, when
the model did not generate one, follows as untrained context); mismatches are counted and
reported. ``ignore``: replies are re-tokenized and the ids are not looked at.

**DPO with multi-turn pairs.** Two trajectories of one task share a beginning (the system
prompt, usually the first user message, sometimes whole turns). The prompt is that shared
part: the longest common token prefix of the two encoded conversations, moved back to the
start of an assistant reply if it ends inside one, so each diverging reply is scored whole.
So the prompt holds every message both sides share, then the header of the first message where
they diverge (and, when that message is not the model's, the start both versions share); chosen
and rejected are the two continuations, which can hold several turns:
their user, observation and tool tokens are in the sequence as context but out of the
log-probabilities, through a per-token completion mask (``_MaskedPreferenceCollator``: TRL's
preference collator with that mask applied). A pair whose continuations hold no assistant
token on one side is skipped. TRL's own loss and trainer do the rest.

Options: one typed config per trainer, the single source of options and defaults:
``SFTTrainConfig`` (a TRL ``SFTConfig``, for ``rft`` and ``sft``) and ``DPOTrainConfig`` (a
``DPOConfig``), each with our fields added (``SCA_FIELDS``: base model, token-id policy, LoRA,
global batch size). Values come, later ones winning, from the class defaults, a preset
(``PRESETS``, e.g. ``paper``), a YAML file, the named CLI flags, and ``key=value`` overrides;
an unknown key is a one-line error. Those classes import TRL, so they are built on first use
(``stages.train.SFTTrainConfig`` works; ``sca --help`` stays light).

Choices: bf16 mixed precision on a GPU that has it, fp32 otherwise; gradient checkpointing on
(TRL's default); sequences padded per batch, no packing and no padding-free batches by
default: with transformers' SDPA and eager attention, padding-free batches let sequences
attend to each other (we measured it), so ``padding_free``/``packing`` are allowed only with a
FlashAttention implementation (``model_init_kwargs.attn_implementation``); TRL 1.16's DPO
trainer has no padding-free mode. Long conversations are cut at ``max_length`` (keeping the
start); an example left without any assistant token is skipped and counted.

Output, in the checkpoint directory: a Hugging Face checkpoint with its tokenizer (with
``lora`` a PEFT adapter, or with ``merge_lora`` the merged model, which plain transformers
and vLLM load; the adapter is then kept in ``adapter/``), ``train_log.jsonl`` (one line per
logging step: step, epoch, loss, learning_rate, grad_norm, tokens_per_s, elapsed_s) and
``train_summary.json`` (command, inputs with hashes, settings, counts, times).

Adding an algorithm is adding an :class:`Algorithm` to ``ALGORITHMS`` and, for a new kind of
trainer, a runner to ``_RUNNERS``. ``grpo`` is online (``ONLINE``, :mod:`stages.train_grpo`): it
trains on tasks, not trajectories, with rewards from episodes our engine plays during training.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import json
import os
import sys
import time
import types as types_module
import typing
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from sca import __version__
from sca.records.io import InputError, Loaded, load_records, write_json_atomic
from sca.records import Field, RecordError, RecordSchema

# -- the trajectory record (docs/TRAJECTORY.md): the fields this stage relies on -------------------

ROLES = ("system", "user", "assistant", "tool")


def _type_name(value: Any) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)


def _check_messages(record: dict[str, Any]) -> None:
    messages = record["messages"]
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RecordError(f"messages[{i}]", f"expected an object, got {_type_name(m)}")
        role = m.get("role")
        if role not in ROLES:
            raise RecordError(f"messages[{i}].role", f"expected one of {', '.join(ROLES)}, got {role!r}")
        content = m.get("content")
        if not isinstance(content, str) and not (content is None and role == "assistant" and m.get("tool_calls")):
            raise RecordError(f"messages[{i}].content", f"expected string, got {_type_name(content)}")
    if messages[0].get("role") != "system":
        raise RecordError("messages[0].role", f"the system prompt must come first, got {messages[0].get('role')!r}")


def _check_reward(record: dict[str, Any]) -> None:
    if "reward" not in record:
        raise RecordError("reward", "missing required field")
    r = record["reward"]
    if r is not None and (isinstance(r, bool) or r not in (0, 1)):
        raise RecordError("reward", f"expected 0, 1 or null, got {json.dumps(r)}")


def _check_token_ids(record: dict[str, Any]) -> None:
    ids = record.get("assistant_token_ids")
    if ids is None:
        return
    if not isinstance(ids, list):
        raise RecordError("assistant_token_ids", f"expected list or null, got {_type_name(ids)}")
    n = sum(1 for m in record["messages"] if m.get("role") == "assistant")
    if len(ids) != n:
        raise RecordError("assistant_token_ids", f"{len(ids)} entries for {n} assistant messages")
    for i, entry in enumerate(ids):
        if entry is None:
            continue
        if not isinstance(entry, list) or any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in entry):
            raise RecordError(f"assistant_token_ids[{i}]", "expected a list of token ids (integers >= 0) or null")


TRAJECTORY = RecordSchema(
    name="trajectory",
    fields=(
        Field("id", str, non_empty=True, doc="<task_id>#<trial>, unique within a file"),
        Field("task_id", str, non_empty=True, doc="the task's id: DPO pairs trajectories of one task"),
        Field("trial", int, required=False, doc="0-based trial number"),
        Field("messages", list, non_empty=True, doc="the conversation, OpenAI-style, system prompt first"),
        Field("assistant_token_ids", list, required=False, doc="per assistant message: generated ids or null"),
    ),
    extra_checks=(_check_messages, _check_reward, _check_token_ids),
)
"""The trajectory fields `sca train` relies on (moves to sca.records with the rest of the schema)."""


# -- algorithms --------------------------------------------------------------------------------


@dataclass
class Selection:
    """What an algorithm takes from the records: single examples (SFT) or pairs (DPO)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> count, for the summary
    notes: dict[str, int] = field(default_factory=dict)


def _by_reward(records: list[dict[str, Any]]) -> Counter:
    return Counter({1: "reward 1", 0: "reward 0", None: "reward null"}[r["reward"]] for r in records)


def select_rft(records: list[dict[str, Any]], config: Any = None) -> Selection:
    sel = Selection(records=[r for r in records if r["reward"] == 1])
    counts = _by_reward(records)
    for reason in ("reward 0", "reward null"):
        if counts[reason]:
            sel.skipped[reason] = counts[reason]
    if not sel.records:
        raise InputError(f"no trajectory with reward 1 to train on ({_describe_rewards(counts)})")
    return sel


def select_sft(records: list[dict[str, Any]], config: Any = None) -> Selection:
    sel = Selection(records=[r for r in records if r["reward"] is not None])
    counts = _by_reward(records)
    if counts["reward null"]:
        sel.skipped["reward null"] = counts["reward null"]
    if not sel.records:
        raise InputError(f"no trajectory with a reward (0 or 1) to train on ({_describe_rewards(counts)})")
    return sel


def select_dpo(records: list[dict[str, Any]], config: Any = None) -> Selection:
    limit = getattr(config, "max_pairs_per_task", None)
    tasks: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: {0: [], 1: []})
    sel = Selection()
    for r in records:
        if r["reward"] is None:
            sel.skipped["reward null"] += 1
        else:
            tasks[r["task_id"]][r["reward"]].append(r)
    for sides in tasks.values():
        chosen = sorted(sides[1], key=_trial_key)
        rejected = sorted(sides[0], key=_trial_key)
        if not chosen or not rejected:
            sel.skipped["task with no reward-0 trajectory" if chosen else "task with no reward-1 trajectory"] += 1
            continue
        n = max(len(chosen), len(rejected))
        if limit is not None:
            n = min(n, limit)
        sel.pairs += [(chosen[i % len(chosen)], rejected[i % len(rejected)]) for i in range(n)]
    sel.notes["tasks paired"] = sum(1 for s in tasks.values() if s[0] and s[1])
    if not sel.pairs:
        raise InputError(
            f"no DPO pair: no task has both a trajectory with reward 1 and one with reward 0 "
            f"({len(tasks)} tasks; {_describe_rewards(_by_reward(records))})"
        )
    return sel


def _trial_key(r: dict[str, Any]) -> tuple[int, str]:
    trial = r.get("trial")
    return (trial if isinstance(trial, int) else 0, r["id"])


def _describe_rewards(counts: Counter) -> str:
    total = sum(counts.values())
    parts = [f"{counts[k]} {k}" for k in ("reward 1", "reward 0", "reward null") if counts[k]]
    return f"{total} records" + (": " + ", ".join(parts) if parts else "")


@dataclass(frozen=True)
class Algorithm:
    """One `--algo`: which records it trains on (`select`) and which trainer runs it (`trainer`)."""

    name: str
    trainer: str  # a key of _RUNNERS and of the config classes: "sft" or "dpo"
    select: Callable[[list[dict[str, Any]], Any], Selection]
    help: str


ALGORITHMS: dict[str, Algorithm] = {
    "rft": Algorithm("rft", "sft", select_rft, "SFT on the trajectories with reward 1 (the paper's self-improvement)"),
    "sft": Algorithm("sft", "sft", select_sft, "SFT on every trajectory with reward 0 or 1 (distillation)"),
    "dpo": Algorithm("dpo", "dpo", select_dpo, "DPO on (reward 1, reward 0) pairs of the same task"),
}

#: online algorithms: they train on tasks, with rewards from episodes played during training
ONLINE = {"grpo": "GRPO on tasks: each group is K live episodes of the model in training (stages/train_grpo.py)"}


def get_algorithm(name: str) -> Algorithm:
    if name in ALGORITHMS:
        return ALGORITHMS[name]
    if name in ONLINE:
        return Algorithm(name, name, lambda records, config=None: Selection(records=[]), ONLINE[name])
    raise InputError(f"unknown --algo {name!r} (choose one of {', '.join([*ALGORITHMS, *ONLINE])})")


# -- presets and config building ---------------------------------------------------------------

#: the paper's hyperparameters (Self-Challenging Language Model Agents, NeurIPS 2025), per algorithm
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "rft": {"learning_rate": 1e-5, "global_batch_size": 8, "num_train_epochs": 6, "max_length": 16384},
        "sft": {"learning_rate": 1e-5, "global_batch_size": 8, "num_train_epochs": 6, "max_length": 16384},
        "dpo": {"learning_rate": 2e-7, "beta": 0.1, "max_length": 16384},
        "grpo": {"learning_rate": 1e-6, "beta": 0.001, "epsilon": 0.1},
    },
}

TOKEN_ID_POLICIES = ("check", "use", "ignore")

#: our fields, added to both config classes: (name, type, default, help)
SCA_FIELDS: tuple[tuple[str, Any, Any, str], ...] = (
    ("model_name_or_path", "str | None", None,
     "Base model: a Hugging Face name (from your HF cache) or a local checkpoint; None: the bundled default model."),
    ("token_ids", "str", "check",
     ("What to do with the records' assistant_token_ids: check (re-tokenizing must reproduce them; a mismatch "
      "stops the run), use (train on them), ignore.")),
    ("global_batch_size", "int | None", None,
     ("Examples per optimizer step over all processes; sets gradient_accumulation_steps (and lowers "
      "per_device_train_batch_size if needed). None: per_device_train_batch_size x accumulation x processes.")),
    ("lora", "bool", False, "Train a LoRA adapter (PEFT) instead of every weight."),
    ("merge_lora", "bool", False, "Merge the LoRA adapter into the base model when done (implies lora)."),
    ("lora_r", "int", 16, "LoRA rank."),
    ("lora_alpha", "int", 32, "LoRA alpha."),
    ("lora_dropout", "float", 0.05, "LoRA dropout."),
    ("lora_target_modules", "str", "all-linear", "Modules that get adapters: all-linear or a comma-separated list."),
)

#: TRL/transformers defaults we change, for both trainers: log every step (train_log.jsonl), keep the
#: checkpoint directory a plain model (no intermediate checkpoint-N folders unless asked), no reporting
_SHARED_DEFAULTS: dict[str, Any] = {
    "gradient_checkpointing": None,  # resolved in _post_init: on unless turned off (TRL's default, under the
    "activation_checkpointing": None,  # name transformers 5 prefers, so no deprecation warning on every run)
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": "none",
    "max_length": 4096,
}
_DPO_EXTRA_FIELDS: tuple[tuple[str, Any, Any, str], ...] = (
    ("max_pairs_per_task", "int | None", None, "At most this many DPO pairs per task (None: max(chosen, rejected))."),
)

_FLASH = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn", "kernels-community/flash-attn3")


def _post_init(self: Any, parent: type) -> None:
    """Our checks and defaults, then the TRL config's own __post_init__, then the global batch."""
    if self.token_ids not in TOKEN_ID_POLICIES:
        raise ValueError(f"token_ids must be one of {', '.join(TOKEN_ID_POLICIES)}, not {self.token_ids!r}")
    if self.merge_lora:
        self.lora = True
    if self.lora_r < 1:
        raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
    if self.global_batch_size is not None and self.global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {self.global_batch_size}")
    if getattr(self, "truncation_mode", "keep_start") != "keep_start":
        raise ValueError("truncation_mode must be keep_start: sca train keeps the start of long conversations")
    # transformers 5 renamed gradient_checkpointing* to activation_checkpointing*; either name works here
    for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                     ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        if getattr(self, new) is None:
            setattr(self, new, getattr(self, old))
        setattr(self, old, None)
    if self.activation_checkpointing is None:  # on, unless FSDP checkpoints itself (transformers refuses both)
        self.activation_checkpointing = not (_env_true("ACCELERATE_USE_FSDP") and _env_true("FSDP_ACTIVATION_CHECKPOINTING"))
    if self.bf16 is None and not self.fp16:
        self.bf16 = _bf16_available()  # bf16 mixed precision on a GPU that has it, fp32 on CPU
    init_kwargs = self.model_init_kwargs
    if isinstance(init_kwargs, str):  # TRL accepts JSON text here
        try:
            init_kwargs = json.loads(init_kwargs)
        except json.JSONDecodeError:
            raise ValueError(f"model_init_kwargs is not a JSON object: {init_kwargs!r}") from None
    attn = init_kwargs.get("attn_implementation") if isinstance(init_kwargs, dict) else None
    if (getattr(self, "padding_free", False) or getattr(self, "packing", False)) and attn not in _FLASH:
        raise ValueError(
            "padding_free/packing need a FlashAttention implementation (model_init_kwargs.attn_implementation="
            "flash_attention_2): with SDPA or eager attention the sequences of a batch would attend to each other"
        )
    # before the parent's __post_init__: GRPOConfig derives its generation batch from these there
    world = _launch_world_size()
    if self.global_batch_size is not None:
        per = max(1, min(self.per_device_train_batch_size, self.global_batch_size // world))
        if self.global_batch_size % (per * world):
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of per_device_train_batch_size "
                f"{per} x {world} processes"
            )
        self.per_device_train_batch_size = per
        self.gradient_accumulation_steps = self.global_batch_size // (per * world)
    if hasattr(self, "num_generations"):
        _check_generation_batch(self, world)
    parent.__post_init__(self)


def _launch_world_size() -> int:
    """The number of training processes, as torchrun / accelerate launch announce it (WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    except ValueError:
        return 1


def _check_generation_batch(config: Any, world: int) -> None:
    """GRPO: the episodes of one generation (TRL's generation batch, over all processes) must hold whole
    groups of num_generations (--k) episodes. Computed as TRL's GRPOConfig does, and checked before it, so
    the error says what to change."""
    k, per = config.num_generations, config.per_device_train_batch_size
    if k is None or k < 2:
        raise ValueError(f"num_generations (--k) must be at least 2, got {k}: GRPO compares the episodes of a task")
    if config.generation_batch_size is not None:
        batch, how = config.generation_batch_size, "generation_batch_size"
    else:
        steps = config.steps_per_generation or config.gradient_accumulation_steps
        name = "steps_per_generation" if config.steps_per_generation else "gradient_accumulation_steps"
        batch = per * steps * world
        how = f"per_device_train_batch_size {per} x {name} {steps} x {world} processes"
    if batch % k:
        raise ValueError(
            f"the generation batch ({how} = {batch} episodes) is not a multiple of num_generations (--k) {k}: "
            f"each task's {k} episodes must be generated together; make it a multiple of {k}"
        )


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _bf16_available() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@cache
def _heavy() -> dict[str, Any]:
    """Classes that subclass TRL/transformers ones, built on first use (importing TRL takes seconds)."""
    import torch
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer, GRPOConfig, SFTConfig
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from stages.train_grpo import GRPO_DEFAULTS, GRPO_EXTRA_FIELDS

    def make_config(name: str, parent: type, extra: tuple, doc: str, defaults: dict[str, Any] | None = None) -> type:
        ns: dict[str, Any] = {"__annotations__": {}, "__doc__": doc, "__module__": __name__}
        for fname, ftype, default, help_ in SCA_FIELDS + extra:
            ns["__annotations__"][fname] = ftype
            ns[fname] = field(default=default, metadata={"help": help_})
        for fname, default in {**_SHARED_DEFAULTS, **(defaults or {})}.items():
            if fname not in parent.__dataclass_fields__:  # GRPOConfig has no max_length (its episodes set it)
                continue
            ftype = parent.__dataclass_fields__[fname].type
            ns["__annotations__"][fname] = ftype | None if default is None and isinstance(ftype, type) else ftype
            ns[fname] = field(default=default, metadata=dict(parent.__dataclass_fields__[fname].metadata))
        ns["__post_init__"] = lambda self: _post_init(self, parent)
        cls = dataclass(type(name, (parent,), ns))
        cls.__qualname__ = name
        return cls

    sft_config = make_config(
        "SFTTrainConfig", SFTConfig, (),
        "Options of `sca train --algo rft|sft`: TRL's SFTConfig with our fields (SCA_FIELDS) and defaults.",
    )
    dpo_config = make_config(
        "DPOTrainConfig", DPOConfig, _DPO_EXTRA_FIELDS,
        "Options of `sca train --algo dpo`: TRL's DPOConfig with our fields (SCA_FIELDS) and defaults.",
    )
    grpo_config = make_config(
        "GRPOTrainConfig", GRPOConfig, GRPO_EXTRA_FIELDS,
        "Options of `sca train --algo grpo`: TRL's GRPOConfig with our fields (SCA_FIELDS, the episode's) and "
        "defaults.",
        GRPO_DEFAULTS,
    )

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

    return {
        "sft": sft_config, "dpo": dpo_config, "grpo": grpo_config, "SFTTrainConfig": sft_config,
        "DPOTrainConfig": dpo_config, "GRPOTrainConfig": grpo_config,
        "MaskedPreferenceCollator": MaskedPreferenceCollator, "PretokenizedDPOTrainer": PretokenizedDPOTrainer,
        "TrainLog": TrainLog,
    }


def __getattr__(name: str) -> Any:  # stages.train.SFTTrainConfig etc., built on first use
    if name in ("SFTTrainConfig", "DPOTrainConfig", "GRPOTrainConfig", "MaskedPreferenceCollator",
                "PretokenizedDPOTrainer", "TrainLog"):
        return _heavy()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def config_class(algo: str) -> type:
    """The typed config of an algorithm (SFTTrainConfig for rft/sft, DPOTrainConfig for dpo)."""
    return _heavy()[get_algorithm(algo).trainer]


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


_NONE_WORDS = {"none", "null", "~"}
#: TRL options typed `str` whose documented values include true/false (TRL maps the booleans itself:
#: GRPOConfig's scale_rewards True -> "group", False -> "none"); as text "false" would be an invalid mode
_TEXT_OR_BOOL = {"scale_rewards"}
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """A string value (from --set, or a YAML scalar YAML left as text) as the type the field wants."""
    if not isinstance(value, str):
        return value
    types = set(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types_module.UnionType) else {hint}
    origins = {typing.get_origin(t) or t for t in types}
    text = value.strip()
    # "none" is a real value of some text options (report_to=none), so there only null or ~ mean None
    if type(None) in types and text.lower() in (_NONE_WORDS - {"none"} if str in origins else _NONE_WORDS):
        return None
    if bool in types or key in _TEXT_OR_BOOL:
        if text.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[text.lower()]
        if str not in origins:  # `str | bool` (include_num_input_tokens_seen=non_padding): other text stays text
            raise InputError(f"{key}: expected true or false, got {value!r}")
        return value
    if int in types:
        try:
            return int(text)
        except ValueError:
            if float not in types and str not in origins:
                raise InputError(f"{key}: expected an integer, got {value!r}") from None
    if float in types:
        try:
            return float(text)
        except ValueError:
            if str not in origins:
                raise InputError(f"{key}: expected a number, got {value!r}") from None
    if (dict in origins or list in origins) and text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{key}: not valid JSON: {e.msg} (column {e.colno})") from None
    if list in origins and str not in origins:
        return [p.strip() for p in text.split(",") if p.strip()]
    return value


def parse_sets(sets: Iterable[str]) -> dict[str, str]:
    """``key=value`` strings to a dict (values stay text; they are typed against the config)."""
    out: dict[str, str] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: expected key=value")
        out[key.strip().replace("-", "_")] = value
    return out


def _read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of option: value, got {_type_name(data)}")
    return data


def build_config(
    algo: str,
    output_dir: str | Path,
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    options: dict[str, Any] | None = None,
    sets: Iterable[str] = (),
) -> Any:
    """The config of `algo`, from (later wins) its defaults, `preset`, `config_file` (YAML),
    `options` (the named CLI flags; None values are left out) and `sets` (``key=value``).

    Raises :class:`InputError` (one line) for an unknown key, a bad value or a failed check.
    """
    cls = config_class(algo)
    types = _field_types(cls)
    layers: list[tuple[str, dict[str, Any]]] = []
    if preset is not None:
        if preset not in PRESETS:
            raise InputError(f"unknown --preset {preset!r} (choose one of {', '.join(PRESETS)})")
        layers.append((f"preset {preset}", PRESETS[preset].get(algo, {})))
    if config_file is not None:
        layers.append((str(config_file), _read_yaml(config_file)))
    layers.append(("options", {k: v for k, v in (options or {}).items() if v is not None}))
    layers.append(("--set", parse_sets(sets)))

    values: dict[str, Any] = {}
    for source, layer in layers:
        for key, value in layer.items():
            key = str(key).replace("-", "_")
            if key == "output_dir":
                raise InputError(f"{source}: output_dir is the CHECKPOINT_DIR argument (-o), not an option")
            if key not in types:
                close = difflib.get_close_matches(key, list(types), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise InputError(f"{source}: unknown option {key!r} for --algo {algo}{hint}")
            values[key] = _coerce(key, value, types[key])
    try:
        return cls(output_dir=str(output_dir), **values)
    except (TypeError, ValueError) as e:
        msg = " ".join(str(e).split())
        raise InputError(f"bad training option: {msg}") from None


# -- chat encoding: the assistant-only mask and token parity --------------------------------------


@dataclass
class Encoded:
    """One conversation as tokens: `mask` is 1 on trained (assistant) tokens."""

    id: str
    input_ids: list[int]
    mask: list[int]
    expected: list[str]  # per assistant message, the text its trained tokens must decode to
    tool_names: list[list[str]]  # per assistant message, the tool names its span must mention
    #: per assistant message: its trained tokens end with an end-of-turn token (False when the model's own
    #: ids end without one: stopped on a stop string or the length limit, or a template that writes none)
    eot: list[bool] = field(default_factory=list)
    eos_ids: list[int] = field(default_factory=list)  # the end-of-turn token ids
    cut: bool = False  # cut at max_length inside its last trained span (see `window`)


@dataclass
class Parity:
    """Token parity between generated ids and re-tokenized replies, over the turns that have ids."""

    checked: int = 0
    mismatched: int = 0
    used: int = 0
    first: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ChatEncoder:
    """Encodes conversations with a tokenizer's chat template (see the module docstring)."""

    def __init__(self, tokenizer: Any, token_ids: str = "check", eos_token_ids: Iterable[int] | None = None):
        if token_ids not in TOKEN_ID_POLICIES:
            raise ValueError(f"token_ids must be one of {', '.join(TOKEN_ID_POLICIES)}")
        if not getattr(tokenizer, "chat_template", None):
            raise InputError("the tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.policy = token_ids
        self.eos = set(end_of_turn_ids(tokenizer, eos_token_ids))
        self.parity = Parity()

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool, where: str, index: int) -> str:
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as e:  # noqa: BLE001 (jinja raises its own errors: unsupported role, raise_exception...)
            raise InputError(f"{where}: the chat template fails on messages[:{index}]: {' '.join(str(e).split())}") \
                from None
        if not isinstance(text, str):
            raise InputError(f"{where}: the chat template did not render text")
        return text

    def _tokens(self, text: str) -> list[int]:
        # the template writes every special token it wants (as hf inference does)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, record: dict[str, Any], where: str) -> Encoded:
        messages = record["messages"]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        gen_ids = record.get("assistant_token_ids") or []
        ids: list[int] = []
        mask: list[int] = []
        expected: list[str] = []
        tools: list[list[str]] = []
        eot: list[bool] = []
        done = ""  # the text encoded so far
        k = -1  # index of the assistant message among assistant messages
        for i in range(last + 1):
            if messages[i]["role"] != "assistant":
                continue
            k += 1
            context = self._render(messages[:i], True, where, i)
            if not context.startswith(done):
                raise InputError(
                    f"{where}: the chat template is not prefix-stable: rendering messages[:{i}] changes the text "
                    f"of earlier turns, so a whole conversation would not match what the model saw; "
                    "use a template that renders past turns unchanged"
                )
            ids += self._tokens(context[len(done):])
            mask += [0] * (len(ids) - len(mask))
            full = self._render(messages[: i + 1], False, where, i + 1)
            if not full.startswith(context):
                raise InputError(
                    f"{where}: the chat template is not prefix-stable at messages[{i}]: the reply does not follow "
                    "the generation prompt (add_generation_prompt) as rendered"
                )
            turn_text = full[len(context):]
            piece = self._tokens(turn_text)
            eos_at = next((j for j, t in enumerate(piece) if t in self.eos), None)
            trained = piece[: eos_at + 1] if eos_at is not None else piece
            after = piece[eos_at + 1:] if eos_at is not None else []
            content = messages[i].get("content") or ""
            want = content if turn_text.startswith(content) else content.strip()
            generated = gen_ids[k] if k < len(gen_ids) else None
            if generated is not None and self.policy != "ignore":
                self.parity.checked += 1
                # the model stopped without its end-of-turn token (a stop string, put back in the text; the
                # length limit): its ids are the re-tokenized reply without the template's end-of-turn
                same = generated == trained or (eos_at is not None and generated == trained[:-1])
                if not same:
                    self.parity.mismatched += 1
                    if self.parity.first is None:
                        self.parity.first = f"{where}: assistant message {k} (messages[{i}]): " + _first_diff(
                            self.tokenizer, generated, trained)
                if self.policy == "use":
                    self.parity.used += 1
                if same or self.policy == "use":
                    # what is trained is what the model produced, under check as under use: its ids; the
                    # template's end-of-turn token, when the model did not generate one, follows as context
                    if not (generated and generated[-1] in self.eos) and eos_at is not None:
                        after = piece[eos_at:]
                    trained = list(generated)
                    if not same:
                        want = self.tokenizer.decode(trained, skip_special_tokens=True,
                                                     clean_up_tokenization_spaces=False)
            if i == last:
                # nothing after the last reply is trained or kept: the template's glue after it (a newline, a
                # generation prompt, an empty turn) would sit untrained at the end of every example; only the
                # end-of-turn token stays, as context, when the model did not generate it
                after = after[:1] if after and after[0] in self.eos else []
            ids += trained
            mask += [1] * len(trained)
            ids += after
            mask += [0] * len(after)
            expected.append(want)
            eot.append(bool(trained) and trained[-1] in self.eos)
            tools.append([str((c.get("function") or {}).get("name", "")) for c in messages[i].get("tool_calls") or []
                          if isinstance(c, dict)])
            done = full
        return Encoded(id=str(record["id"]), input_ids=ids, mask=mask, expected=expected, tool_names=tools,
                       eot=eot, eos_ids=sorted(self.eos))


def template_end_of_turn(tokenizer: Any) -> int | None:
    """The special token a chat template closes an assistant turn with (``<|im_end|>``, ``<|eot_id|>``...),
    found by rendering a probe reply; None if the template writes none (or cannot render the probe)."""
    reply = "sca-probe-reply"
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    special |= {i for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
                if getattr(t, "special", False)}
    for start in ([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                  [{"role": "user", "content": "u"}]):
        try:
            context = tokenizer.apply_chat_template(start, tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(start + [{"role": "assistant", "content": reply}], tokenize=False)
        except Exception:  # noqa: BLE001, S112 (a template that refuses a system message: try without)
            continue
        if not (isinstance(full, str) and isinstance(context, str) and full.startswith(context)):
            continue
        at = full.find(reply, len(context))
        if at < 0:
            continue
        for t in tokenizer(full[at + len(reply):], add_special_tokens=False)["input_ids"]:
            if t in special:
                return t
        return None
    return None


def end_of_turn_ids(tokenizer: Any, eos_token_ids: Iterable[int] | None = ()) -> list[int]:
    """The tokens that end an assistant turn: the checkpoint's eos ids (`eos_token_ids`, from its generation
    config), the tokenizer's eos token, and the chat template's own end-of-turn token (which a tokenizer whose
    eos_token is missing or different, e.g. a base model's, does not name)."""
    eos = {int(t) for t in eos_token_ids or () if t is not None}
    if getattr(tokenizer, "eos_token_id", None) is not None:
        eos.add(tokenizer.eos_token_id)
    eot = template_end_of_turn(tokenizer)
    if eot is not None:
        eos.add(eot)
    return sorted(eos)


def ensure_pad_token(tokenizer: Any, eos_ids: list[int]) -> None:
    """A pad token for batching: the tokenizer's, else its eos token, else the template's end-of-turn token."""
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    elif eos_ids:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(eos_ids[0])
    else:
        raise InputError("the tokenizer has no pad, eos or end-of-turn token to pad batches with")


def _first_diff(tokenizer: Any, generated: list[int], retokenized: list[int]) -> str:
    at = next((j for j, (a, b) in enumerate(zip(generated, retokenized)) if a != b), min(len(generated), len(retokenized)))
    g, r = generated[at: at + 4], retokenized[at: at + 4]
    return (f"at token {at}, generated {g} {tokenizer.decode(g, clean_up_tokenization_spaces=False)!r} vs "
            f"re-tokenized {r} {tokenizer.decode(r, clean_up_tokenization_spaces=False)!r} "
            f"({len(generated)} vs {len(retokenized)} tokens)")


def mask_runs(mask: list[int]) -> list[tuple[int, int]]:
    """The [start, end) runs of 1s in a 0/1 mask."""
    runs, start = [], None
    for j, bit in enumerate(mask):
        if bit and start is None:
            start = j
        elif not bit and start is not None:
            runs.append((start, j))
            start = None
    if start is not None:
        runs.append((start, len(mask)))
    return runs


def verify_mask(tokenizer: Any, enc: Encoded, where: str) -> None:
    """Check, independently of how the mask was built, that it covers exactly the assistant turns.

    The trained tokens must form one run per assistant message, in order, each decoding to that
    message's content (a tool-calling message: starting with its content and naming its tools) and
    ending with the end-of-turn token exactly when the turn has one (``Encoded.eot``). An example cut
    at max_length (:func:`window`, ``Encoded.cut``) is checked as it is trained: its last run may stop
    at the end of the sequence, a prefix of its message. Raises :class:`InputError` (one line) otherwise.
    """
    if len(enc.mask) != len(enc.input_ids):
        raise InputError(f"{where}: the assistant mask has {len(enc.mask)} entries for {len(enc.input_ids)} tokens")
    runs = mask_runs(enc.mask)
    if not runs:
        raise InputError(f"{where}: the assistant mask is empty: no token would be trained")
    if len(runs) != len(enc.expected):
        raise InputError(
            f"{where}: the assistant mask has {len(runs)} trained spans for {len(enc.expected)} assistant messages"
        )
    eos = set(enc.eos_ids)
    for k, ((s, e), want, names) in enumerate(zip(runs, enc.expected, enc.tool_names)):
        got = tokenizer.decode(enc.input_ids[s:e], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if enc.cut and k == len(runs) - 1:  # cut by max_length: a prefix of the message (a split character aside)
            if e != len(enc.input_ids) or not want.startswith(got.rstrip("\ufffd")):
                raise InputError(
                    f"{where}: the assistant mask does not match assistant message {k} as cut at max_length: its "
                    f"tokens decode to {_clip(got)} but the message starts {_clip(want[:len(got) + 10])}"
                )
            continue
        ok = got.startswith(want) and all(n in got for n in names) if names else got == want
        if not ok:
            raise InputError(
                f"{where}: the assistant mask does not match assistant message {k}: its tokens decode to "
                f"{_clip(got)} but the message is {_clip(want)}"
            )
        if k < len(enc.eot) and (enc.input_ids[e - 1] in eos) != enc.eot[k]:
            what = "leaves out its end-of-turn token" if enc.eot[k] else "ends on an end-of-turn token the model " \
                                                                         "did not generate"
            raise InputError(f"{where}: the assistant mask of assistant message {k} {what}")


def window(enc: Encoded, start: int, end: int) -> Encoded:
    """`enc` as a trainer gets it: cut at `end` (max_length) and trained only from `start` on (a DPO
    completion after its shared prompt); the messages it keeps are those whose trained span starts in
    [start, end), and a span that `end` cuts sets ``cut``. Check the result with :func:`verify_mask`."""
    runs = mask_runs(enc.mask)
    keep = [k for k, (s, _) in enumerate(runs) if start <= s < end]
    return dataclasses.replace(
        enc, input_ids=enc.input_ids[:end], mask=[0] * min(start, end) + enc.mask[start:end],
        expected=[enc.expected[k] for k in keep if k < len(enc.expected)],
        tool_names=[enc.tool_names[k] for k in keep if k < len(enc.tool_names)],
        eot=[enc.eot[k] for k in keep if k < len(enc.eot)],
        cut=bool(keep) and runs[keep[-1]][1] > end,
    )


def _clip(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[: n // 2] + "..." + text[-n // 2:])


# -- building the datasets ---------------------------------------------------------------------


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


def _where(path: str, record: dict[str, Any]) -> str:
    return f"{path}: record {record['id']!r}"


def prepare_sft(selection: Selection, encoder: ChatEncoder, max_length: int | None, path: str) -> Prepared:
    """One example per trajectory: input_ids, and labels (-100 off the assistant tokens)."""
    prep = Prepared(rows=[], skipped=Counter(selection.skipped))
    for record in selection.records:
        where = _where(path, record)
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
            where = _where(path, record)
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
            verify_mask(encoder.tokenizer, window(enc, p, p + len(side)), _where(path, rec))
        prep.rows.append({"prompt_ids": c.input_ids[:p], "chosen_ids": c_ids, "rejected_ids": r_ids,
                          "chosen_mask": c_mask, "rejected_mask": r_mask})
        prep.tokens += 2 * p + len(c_ids) + len(r_ids)
        prep.trained_tokens += sum(c_mask) + sum(r_mask)
    prep.examples = len(prep.rows)
    prep.parity = encoder.parity
    if not prep.rows:
        raise InputError(f"{path}: no DPO pair left to train on ({_reasons(prep.skipped)})")
    return prep


def _reasons(skipped: Counter) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in skipped.most_common()) or "nothing skipped"


def check_parity(parity: Parity, policy: str) -> None:
    """Under `check`, any mismatch between generated and re-tokenized ids stops the run."""
    if policy == "check" and parity.mismatched:
        raise InputError(
            f"token ids: {parity.mismatched} of {parity.checked} assistant messages are not reproduced by "
            f"re-tokenizing; first: {parity.first}; pass --token-ids use to train on the generated ids, "
            "or --token-ids ignore to re-tokenize"
        )


def eos_token_ids(model_path: str) -> list[int]:
    """End-of-turn ids of a checkpoint's generation config (as the hf inference backend stops on)."""
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except Exception:  # noqa: BLE001 (no generation_config.json: the tokenizer's eos alone)
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []


# -- the run ------------------------------------------------------------------------------------


@dataclass
class TrainSummary:
    """What `train` did: counts, tokens, steps, loss and times (also in train_summary.json)."""

    algo: str
    model: str
    output_dir: str
    records: int = 0
    examples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    parity: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    epochs: float = 0.0
    first_loss: float | None = None
    final_loss: float | None = None
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    tokens_per_s: float | None = None
    lora: bool = False
    merged: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    main_process: bool = True  # False on the other processes of a distributed run (they print nothing)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


_CHECKPOINT_FILES = ("train_summary.json", "config.json", "adapter_config.json", "model.safetensors")


def _check_output(out: Path, overwrite: bool, resuming: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    if out.is_dir() and not overwrite and not resuming:
        found = [name for name in _CHECKPOINT_FILES if (out / name).exists()]
        if found:
            raise InputError(f"{out}: already holds a checkpoint ({found[0]}); pass --overwrite to train into it anyway")


def resume_checkpoint(config: Any, out: Path) -> str | None:
    """The checkpoint `resume_from_checkpoint` names (true: the last checkpoint-N in the output directory,
    or a path), checked before training; None to start afresh."""
    resume = config.resume_from_checkpoint
    if isinstance(resume, str) and resume.strip().lower() in _BOOL_WORDS:
        resume = _BOOL_WORDS[resume.strip().lower()]
    if not resume:
        return None
    if resume is True:
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(str(out)) if out.is_dir() else None
        if last is None:
            raise InputError(f"resume_from_checkpoint: no checkpoint-N directory in {out} to resume from "
                             "(save some with --set save_strategy=steps --set save_steps=N)")
        return last
    if not Path(str(resume)).is_dir():
        raise InputError(f"resume_from_checkpoint: {resume}: no such checkpoint directory")
    return str(resume)


def _model_path(config: Any) -> str:
    if config.model_name_or_path:
        return str(config.model_name_or_path)
    from sca.inference.default_model import default_model_path

    try:
        return str(default_model_path())
    except Exception as e:  # noqa: BLE001 (BackendUnavailable: the bundled model package is missing)
        raise InputError(str(e)) from None


def _settings(algo: str, config: Any, model: str, preset: str | None) -> dict[str, Any]:
    keys = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
            "gradient_accumulation_steps", "global_batch_size", "max_length", "bf16", "gradient_checkpointing",
            "padding_free", "packing", "token_ids", "lora", "merge_lora", "lora_r", "lora_alpha", "seed",
            "beta", "loss_type", "lr_scheduler_type", "warmup_steps", "report_to")
    out = {"algo": algo, "model": model, "preset": preset}
    for k in keys:
        if hasattr(config, k):
            v = getattr(config, k)
            out[k] = v if isinstance(v, (int, float, str, bool, type(None), list)) else str(v)
    out["world_size"] = config.world_size
    return out


def _peft_config(config: Any) -> Any:
    if not config.lora:
        return None
    try:
        from peft import LoraConfig
    except ImportError:
        raise InputError("--lora needs the peft package: pip install peft") from None
    targets: Any = config.lora_target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in str(targets).split(",") if t.strip()]
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


def _check_report_to(config: Any) -> None:
    import importlib.util

    need = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}
    for name in config.report_to or []:
        mods = need.get(name)
        if mods and not any(importlib.util.find_spec(m) for m in mods):
            raise InputError(f"--report-to {name} needs the {mods[0]} package: pip install {mods[0]}")


def _run_sft(config: Any, model: str, tokenizer: Any, prep: Prepared, callbacks: list, peft_config: Any) -> Any:
    from datasets import Dataset
    from trl import SFTTrainer

    dataset = Dataset.from_list(prep.rows)
    return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=peft_config, callbacks=callbacks)


def _run_dpo(config: Any, model: str, tokenizer: Any, prep: Prepared, callbacks: list, peft_config: Any) -> Any:
    from datasets import Dataset

    heavy = _heavy()
    collator = heavy["MaskedPreferenceCollator"](
        pad_token_id=tokenizer.pad_token_id, max_length=config.max_length, truncation_mode=config.truncation_mode,
        pad_to_multiple_of=config.pad_to_multiple_of,
    )
    dataset = Dataset.from_list(prep.rows)
    return heavy["PretokenizedDPOTrainer"](model=model, args=config, train_dataset=dataset,
                                           processing_class=tokenizer, data_collator=collator,
                                           peft_config=peft_config, callbacks=callbacks)


#: how each kind of trainer is built from the prepared examples (`Algorithm.trainer` picks one)
_RUNNERS: dict[str, tuple[Callable[..., Prepared], Callable[..., Any]]] = {
    "sft": (prepare_sft, _run_sft),
    "dpo": (prepare_dpo, _run_dpo),
}


def prepare(algo: str, records: list[dict[str, Any]], tokenizer: Any, config: Any, path: str = "<input>",
            eos_ids: Iterable[int] = ()) -> tuple[Selection, Prepared]:
    """Select, encode, check (masks, token parity) and truncate the examples of `algo`. No training."""
    algorithm = get_algorithm(algo)
    selection = algorithm.select(records, config)
    encoder = ChatEncoder(tokenizer, config.token_ids, eos_ids)
    prep = _RUNNERS[algorithm.trainer][0](selection, encoder, config.max_length, path)
    check_parity(prep.parity, config.token_ids)
    if not prep.rows:
        raise InputError(f"{path}: no example left to train on ({_reasons(prep.skipped)})")
    return selection, prep


def train(
    trajectories: str | Path,
    output_dir: str | Path,
    *,
    algo: str = "rft",
    config: Any = None,
    preset: str | None = None,
    config_file: str | Path | None = None,
    options: dict[str, Any] | None = None,
    sets: Iterable[str] = (),
    overwrite: bool = False,
    skip_invalid: bool = False,
    on_skip: Callable[[str], None] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    sandbox: Any = None,
    user: Any = None,
) -> TrainSummary:
    """Train on a trajectory file and write a checkpoint to `output_dir`.

    ``algo="grpo"`` trains on a CaT task file instead, with episodes played during training
    (:mod:`stages.train_grpo`): `sandbox` (a :class:`~sandbox.SandboxConfig`) runs their actions
    and rewards, `user` (a :class:`~sca.inference.config.ModelConfig`, default the model in
    training) plays the simulated user of retail and airline.

    `config`: a ready config (``config_class(algo)``); otherwise one is built by
    :func:`build_config` from `preset`, `config_file`, `options` and `sets`. `on_log` gets each
    line of train_log.jsonl, `on_status` a word on each phase. Raises :class:`InputError` (one
    line) for bad input or options, before any training starts.
    """
    started, wall0 = _now(), time.monotonic()
    main = int(os.environ.get("RANK", "0") or 0) == 0  # torchrun / accelerate launch set RANK
    status = on_status if on_status is not None and main else (lambda msg: None)
    algorithm = get_algorithm(algo)
    if algo in ONLINE:
        from sandbox.config import SandboxConfig
        from stages.train_grpo import read_tasks, run_grpo

        tasks = read_tasks(str(trajectories))  # bad input fails here, before the slow imports; stdin read once
        if config is None:
            config = build_config(algo, output_dir, preset=preset, config_file=config_file, options=options, sets=sets)
        return run_grpo(tasks, output_dir, config, sandbox=(sandbox or SandboxConfig()).build(),
                        user_config=user, overwrite=overwrite, on_log=on_log if main else None, on_status=status)
    out = Path(output_dir)
    loaded: Loaded = load_records(trajectories, TRAJECTORY, skip_invalid=skip_invalid, on_skip=on_skip)
    algorithm.select(loaded.records, config)  # bad input fails here, before the slow imports

    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if config is None:
        config = build_config(algo, out, preset=preset, config_file=config_file, options=options, sets=sets)
    resume = resume_checkpoint(config, out)
    resuming = resume is not None
    _check_output(out, overwrite, resuming)
    _check_report_to(config)
    model = _model_path(config)

    status("tokenizing")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the tokenizer of {model}: {' '.join(str(e).split())[:300]}") from None
    eos_ids = end_of_turn_ids(tokenizer, eos_token_ids(model))
    selection, prep = prepare(algo, loaded.records, tokenizer, config, loaded.path, eos_ids)
    ensure_pad_token(tokenizer, eos_ids)
    peft_config = _peft_config(config)

    status("loading the model")
    heavy = _heavy()
    log = heavy["TrainLog"](out / "train_log.jsonl", append=resuming, echo=on_log if main else None)
    trainer = _RUNNERS[algorithm.trainer][1](config, model, tokenizer, prep, [log], peft_config)

    status("training")
    result = trainer.train(resume_from_checkpoint=resume)

    status("saving")
    merged = False
    if config.lora and config.merge_lora:
        adapter_dir = out / "adapter"
        trainer.save_model(str(adapter_dir))
        if trainer.is_world_process_zero():
            _merge_lora(model, adapter_dir, out, tokenizer, config.trust_remote_code)
        merged = True
    else:
        trainer.save_model(str(out))  # the model (or adapter) and the tokenizer, from the main process

    losses = [line["loss"] for line in log.lines if "loss" in line]
    train_seconds = float(log.final.get("train_runtime", result.metrics.get("train_runtime", 0.0)))
    # TRL's count of the non-padding tokens trained on (all processes), as in its `num_tokens` log
    total_tokens = float(getattr(trainer, "_total_train_tokens", 0) or 0)
    if not total_tokens:
        total_tokens = float(max((line.get("num_tokens", 0) for line in log.lines), default=0))
    if loaded.skipped:
        prep.skipped["invalid line (--skip-invalid)"] = len(loaded.skipped)
    summary = TrainSummary(
        algo=algo, model=model, output_dir=str(out), records=len(loaded.records), examples=prep.examples,
        skipped=dict(prep.skipped.most_common()), notes=dict(selection.notes), truncated=prep.truncated,
        tokens=prep.tokens, trained_tokens=prep.trained_tokens, parity=prep.parity.to_dict(),
        steps=trainer.state.global_step, epochs=round(float(trainer.state.epoch or 0.0), 4),
        first_loss=losses[0] if losses else None, final_loss=losses[-1] if losses else None,
        train_seconds=round(train_seconds, 3), wall_seconds=round(time.monotonic() - wall0, 3),
        tokens_per_s=round(total_tokens / train_seconds, 2) if total_tokens and train_seconds else None,
        lora=bool(config.lora), merged=merged, settings=_settings(algo, config, model, preset),
        main_process=trainer.is_world_process_zero(),
    )
    if trainer.is_world_process_zero():
        _write_summary(out, summary, loaded, config, started)
    return summary


def _merge_lora(base: str, adapter_dir: Path, out: Path, tokenizer: Any, trust_remote_code: bool) -> None:
    """Load the base model afresh, merge the saved adapter into it, save a plain checkpoint.

    Done from the saved adapter on one process, so it works the same after DeepSpeed or FSDP.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _write_summary(out: Path, summary: TrainSummary, loaded: Loaded, config: Any, started: str) -> None:
    data = {
        "stage": "train",
        "command": [Path(sys.argv[0]).name] + sys.argv[1:],
        "sca_version": __version__,
        "inputs": [loaded.describe()],
        "settings": summary.settings,
        "started_at": started,
        "ended_at": _now(),
        "status": "finished",
        "summary": summary.to_dict(),
        "config": json.loads(json.dumps(config.to_dict(), default=str)),
    }
    write_json_atomic(out / "train_summary.json", data)
