"""The options of ``sca train``: one typed config per trainer, the single source of options and defaults.

``SFTTrainConfig`` (TRL's ``SFTConfig``, for ``rft`` and ``sft``), ``DPOTrainConfig`` (a
``DPOConfig``) and ``GRPOTrainConfig`` (a ``GRPOConfig``), each with our fields added
(:mod:`sca.training.options`: base model, token-id policy, LoRA, global batch size, and the
episode's for GRPO) and a few TRL defaults changed (:class:`_Defaults`). Values come, later ones
winning, from the class defaults, a preset (:data:`PRESETS`, e.g. ``paper``), a YAML file, the named
CLI flags, and ``key=value`` overrides (:func:`build_config`); an unknown key is a one-line error.
This module imports TRL (seconds): only code that trains imports it, never the command line.

Choices: bf16 mixed precision on a GPU that has it, fp32 otherwise; gradient checkpointing on
(TRL's default); sequences padded per batch, no packing and no padding-free batches by
default: with transformers' SDPA and eager attention, padding-free batches let sequences
attend to each other (we measured it), so ``padding_free``/``packing`` are allowed only with a
FlashAttention implementation (``model_init_kwargs.attn_implementation``); TRL 1.16's DPO
trainer has no padding-free mode. Long conversations are cut at ``max_length`` (keeping the
start): ``truncation_mode`` is always ``keep_start``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types as types_module
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.trainer_utils import SaveStrategy
from trl import DPOConfig, GRPOConfig, SFTConfig

from sca.agent.judge import REWARDS
from sca.inference.config import executor_defaults
from sca.records.io import InputError
from sca.training.algorithms import get_algorithm
from sca.training.options import (
    TOKEN_ID_POLICIES,
    EpisodeOptions,
    PairOptions,
    ScaOptions,
)

#: the paper's hyperparameters (Self-Challenging Language Model Agents, NeurIPS 2025), per algorithm
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "rft": {"learning_rate": 1e-5, "global_batch_size": 8, "num_train_epochs": 6, "max_length": 16384},
        "sft": {"learning_rate": 1e-5, "global_batch_size": 8, "num_train_epochs": 6, "max_length": 16384},
        "dpo": {"learning_rate": 2e-7, "beta": 0.1, "max_length": 16384},
        "grpo": {"learning_rate": 1e-6, "beta": 0.001, "epsilon": 0.1},
    },
}

#: tokens per example (SFT, DPO) unless told otherwise: TRL's 1024 cuts most agent conversations
MAX_LENGTH = 4096

_FLASH = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn", "kernels-community/flash-attn3")


def _like(parent: type, name: str, default: Any) -> Any:
    """The field `name` of the TRL config `parent` with another default (its help kept)."""
    return field(default=default, metadata=dict(parent.__dataclass_fields__[name].metadata))


@dataclass
class _Defaults:
    """TRL/transformers defaults we change, for every trainer (the fields are the same in TRL's three configs):
    log every step (train_log.jsonl), keep the checkpoint directory a plain model (no intermediate
    checkpoint-N folders unless asked), no reporting."""

    # resolved in _post_init: on unless turned off (TRL's default), under the name transformers 5 prefers, so
    # no deprecation warning on every run
    gradient_checkpointing: bool | None = _like(SFTConfig, "gradient_checkpointing", None)
    activation_checkpointing: bool | None = _like(SFTConfig, "activation_checkpointing", None)
    logging_steps: float = _like(SFTConfig, "logging_steps", 1)
    save_strategy: SaveStrategy | str = _like(SFTConfig, "save_strategy", "no")
    report_to: None | str | list[str] = _like(SFTConfig, "report_to", "none")


@dataclass
class SFTTrainConfig(ScaOptions, _Defaults, SFTConfig):
    """Options of `sca train --algo rft|sft`: TRL's SFTConfig with our fields (ScaOptions) and defaults."""

    max_length: int | None = _like(SFTConfig, "max_length", MAX_LENGTH)

    def __post_init__(self) -> None:
        _post_init(self, SFTConfig)


@dataclass
class DPOTrainConfig(PairOptions, ScaOptions, _Defaults, DPOConfig):
    """Options of `sca train --algo dpo`: TRL's DPOConfig with our fields (ScaOptions, PairOptions) and
    defaults."""

    max_length: int | None = _like(DPOConfig, "max_length", MAX_LENGTH)

    def __post_init__(self) -> None:
        _post_init(self, DPOConfig)


@dataclass
class GRPOTrainConfig(EpisodeOptions, ScaOptions, _Defaults, GRPOConfig):
    """Options of `sca train --algo grpo`: TRL's GRPOConfig with our fields (ScaOptions, the episode's:
    EpisodeOptions) and defaults. It has no max_length: its episodes set the lengths."""

    # our episodes hand TRL no sampling log-probabilities (a multi-turn episode's replies come from many generate
    # calls), so TRL's vLLM importance-sampling correction, which needs them, is off (turning it on is refused:
    # see sca.training.grpo.check_grpo_config)
    vllm_importance_sampling_correction: bool = _like(GRPOConfig, "vllm_importance_sampling_correction", False)

    def __post_init__(self) -> None:
        _check_reward(self)
        _post_init(self, GRPOConfig)


def _check_reward(config: Any) -> None:
    """GRPO's reward, and the judge's settings where it is the judge's (a judge's ModelConfig must be one)."""
    if config.reward not in REWARDS:
        raise ValueError(f"reward must be one of {', '.join(REWARDS)}, not {config.reward!r}")
    judge = {"model": config.judge_model, "backend": config.judge_backend, "base_urls": config.judge_base_urls,
             "temperature": config.judge_temperature}
    if config.reward != "judge" and any(v is not None for v in judge.values()):
        raise ValueError("judge_model, judge_backend, judge_base_urls and judge_temperature go with reward=judge")
    try:
        executor_defaults().with_(**judge)
    except ValueError as e:
        raise ValueError(f"the judge's settings: {e}") from None


#: each kind of trainer's config (`Algorithm.trainer` picks one)
CONFIGS: dict[str, type] = {"sft": SFTTrainConfig, "dpo": DPOTrainConfig, "grpo": GRPOTrainConfig}


def config_class(algo: str) -> type:
    """The typed config of an algorithm (SFTTrainConfig for rft/sft, DPOTrainConfig for dpo, GRPOTrainConfig
    for grpo)."""
    return CONFIGS[get_algorithm(algo).trainer]


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
        self.activation_checkpointing = not (env_true("ACCELERATE_USE_FSDP") and env_true("FSDP_ACTIVATION_CHECKPOINTING"))
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
    world = launch_world_size()
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


def launch_world_size() -> int:
    """The number of training processes, as torchrun / accelerate launch announce it (WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    except ValueError:
        return 1


def _check_generation_batch(config: Any, world: int) -> None:
    """GRPO: the episodes of one generation (TRL's generation batch, over all processes) must hold whole
    groups of num_generations (--group-size) episodes. Computed as TRL's GRPOConfig does, and checked before it, so
    the error says what to change."""
    k, per = config.num_generations, config.per_device_train_batch_size
    if k is None or k < 2:
        raise ValueError(f"num_generations (--group-size) must be at least 2, got {k}: GRPO compares the episodes "
                         "of a task")
    if config.generation_batch_size is not None:
        batch, how = config.generation_batch_size, "generation_batch_size"
    else:
        steps = config.steps_per_generation or config.gradient_accumulation_steps
        name = "steps_per_generation" if config.steps_per_generation else "gradient_accumulation_steps"
        batch = per * steps * world
        how = f"per_device_train_batch_size {per} x {name} {steps} x {world} processes"
    if batch % k:
        raise ValueError(
            f"the generation batch ({how} = {batch} episodes) is not a multiple of num_generations (--group-size) {k}: "
            f"each task's {k} episodes must be generated together; make it a multiple of {k}"
        )


def env_true(name: str) -> bool:
    """An environment switch of the launcher (accelerate's ACCELERATE_USE_FSDP...) is on."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _bf16_available() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


# -- building a config: defaults < preset < YAML < flags < --set ------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


_NONE_WORDS = {"none", "null", "~"}
#: TRL options typed `str` whose documented values include true/false (TRL maps the booleans itself:
#: GRPOConfig's scale_rewards True -> "group", False -> "none"); as text "false" would be an invalid mode
_TEXT_OR_BOOL = {"scale_rewards"}
#: the words a yes/no option (and resume_from_checkpoint) takes as booleans
BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


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
        if text.lower() in BOOL_WORDS:
            return BOOL_WORDS[text.lower()]
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
        kind = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list"}.get(type(data))
        raise InputError(f"{path}: expected a mapping of option: value, got {kind or type(data).__name__}")
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
