"""`sca train`: train a model on the trajectories `sca rollout` wrote (``rft``, ``sft``, ``dpo``), or
online on CaT tasks (``grpo``), with TRL's trainers.

The stage is the file level: it reads the input (trajectories, each checked against
:data:`~sca.records.schema.TRAINING_TRAJECTORY`; for ``grpo`` CaT tasks), fails on bad input
before TRL is imported, builds the config (:func:`sca.training.configs.build_config`), trains
(:func:`sca.training.fit.fit`: the checkpoint and ``train_log.jsonl``) and writes
``train_summary.json`` (command, inputs with hashes, settings, counts, times, the whole config).
What is trained, and why it is done the way it is, is :mod:`sca.training`'s.

A rerun into a directory holding a checkpoint made with other :data:`RESULT_SETTINGS` stops with one line naming
each difference before any model loads (:func:`sca.training.fit.claim_output`, which records them in the
directory's ``sca_run.json``); the same settings resume as before (``--set resume_from_checkpoint=true``).
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sca import __version__
from sca.records.io import Loaded, StreamedInput, load_records, write_json_atomic
from sca.records.provenance import provenance
from sca.records.schema import TRAINING_TRAJECTORY
from sca.records.stage_run import MODEL_SETTINGS, SANDBOX_LIMITS, result_settings, under
from sca.training.algorithms import get_algorithm
from sca.training.selection import read_tasks

if TYPE_CHECKING:
    from sca.training.fit import TrainSummary

#: What changes the checkpoint a run writes: the run's algorithm, base model (as named; None: the bundled one),
#: preset and input (its sha256), and the config's fields of these names (TRL's and ours; those an algorithm's
#: config lacks are left out). Not here, free to change on a resume: logging, saving, evaluation, reporting,
#: output and workers, resume_from_checkpoint itself, and how the batch is split (global_batch_size is the
#: examples per optimizer step, however many processes and accumulation steps make them).
RESULT_SETTINGS = (
    "algo", "model", "preset", "input",
    # the optimization
    "learning_rate", "num_train_epochs", "max_steps", "global_batch_size", "seed", "data_seed", "lr_scheduler_type",
    "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "weight_decay", "optim", "adam_beta1", "adam_beta2",
    "adam_epsilon", "max_grad_norm", "bf16", "fp16",
    # what an example is
    "max_length", "token_ids", "padding_free", "packing", "max_pairs_per_task", "skip_uniform_from",
    # LoRA
    "lora", "merge_lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
    # DPO's and GRPO's losses
    "beta", "loss_type", "label_smoothing", "epsilon", "epsilon_high", "num_iterations", "scale_rewards",
    # GRPO's episodes: the group, the step budget, sampling, the reward and its judge, the simulated user (None:
    # the model in training), the sandbox's limits
    "num_generations", "episode_max_steps", "action_format", "episode_max_new_tokens", "temperature", "top_p",
    "top_k", "repetition_penalty", "reward", "judge_model", "judge_backend", "judge_temperature",
    *under("user", MODEL_SETTINGS), *under("sandbox", SANDBOX_LIMITS),
)


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
    on_warn: Callable[[str], None] | None = None,
    sandbox: Any = None,
    user: Any = None,
) -> TrainSummary:
    """Train on a trajectory file and write a checkpoint to `output_dir`.

    ``algo="grpo"`` trains on a CaT task file instead, with episodes played during training
    (:mod:`sca.training.grpo`): `sandbox` (a :class:`~sandbox.SandboxConfig`) runs their actions
    and rewards, `user` (a :class:`~sca.inference.config.ModelConfig`, default the model in
    training) plays the simulated user of retail and airline.

    `config`: a ready config (``sca.training.configs.config_class(algo)``); otherwise one is built
    by :func:`~sca.training.configs.build_config` from `preset`, `config_file`, `options` and `sets`.
    `on_log` gets each line of train_log.jsonl, `on_status` a word on each phase, `on_warn` a warning (default:
    to stderr). Raises :class:`~sca.records.io.InputError` (one line) for bad input or options, and
    :class:`~sca.records.stage_run.SettingsChanged` for a directory trained with other :data:`RESULT_SETTINGS`
    (unless `overwrite`), before any training starts.
    """
    started, clock = _now(), time.monotonic()
    algorithm = get_algorithm(algo)
    data: Loaded | StreamedInput
    if algorithm.online:
        data = read_tasks(str(trajectories))  # bad input fails here, before the slow imports; stdin read once
    else:
        data = load_records(trajectories, TRAINING_TRAJECTORY, skip_invalid=skip_invalid, on_skip=on_skip)
        algorithm.select(data.records, config)  # bad input fails here, before the slow imports

    from sca.training.configs import build_config  # TRL, from here on
    from sca.training.fit import fit

    if config is None:
        config = build_config(algo, output_dir, preset=preset, config_file=config_file, options=options, sets=sets)
    sandbox_config = None
    if algorithm.online:
        from sandbox.config import SandboxConfig

        sandbox_config = sandbox or SandboxConfig()
    settings = run_settings(algo, config, preset, data, user=user, sandbox=sandbox_config)
    warn = on_warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr, flush=True))
    running_sandbox = sandbox_config.build() if sandbox_config is not None else None
    summary = fit(algo, data, config, output_dir, preset=preset, overwrite=overwrite, sandbox=running_sandbox,
                  user_config=user, on_log=on_log, on_status=on_status, on_warn=warn, started=clock,
                  run_settings=settings)
    if summary.main_process:
        _write_summary(Path(output_dir), summary, data, config, started)
    return summary


def run_settings(algo: str, config: Any, preset: str | None, data: Loaded | StreamedInput, *, user: Any = None,
                 sandbox: Any = None) -> dict[str, Any]:
    """This run's :data:`RESULT_SETTINGS`, by dotted name, as JSON holds them (`user`, `sandbox`: grpo's)."""
    from sca.training.configs import launch_world_size  # TRL: imported by now

    fields = {k: getattr(config, k) for k in RESULT_SETTINGS if "." not in k and hasattr(config, k)}
    settings: dict[str, Any] = {**fields, "algo": algo, "model": config.model_name_or_path, "preset": preset,
                                "input": data.describe()["sha256"],
                                "global_batch_size": config.per_device_train_batch_size
                                * config.gradient_accumulation_steps * launch_world_size()}
    if get_algorithm(algo).online:
        settings["user"] = asdict(user) if user is not None else None
        settings["sandbox"] = asdict(sandbox) if sandbox is not None else None
    return json.loads(json.dumps(result_settings(settings, RESULT_SETTINGS), default=str))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_summary(out: Path, summary: TrainSummary, data: Loaded | StreamedInput, config: Any, started: str) -> None:
    record = {
        "stage": "train",
        "command": [Path(sys.argv[0]).name] + sys.argv[1:],
        "sca_version": __version__,
        "provenance": provenance(),
        "inputs": [data.describe()],
        "settings": summary.settings,
        "started_at": started,
        "ended_at": _now(),
        "status": "finished",
        "summary": summary.to_dict(),
        "config": json.loads(json.dumps(config.to_dict(), default=str)),
    }
    write_json_atomic(out / "train_summary.json", record)
