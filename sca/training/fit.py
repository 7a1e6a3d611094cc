"""The run, one skeleton for every algorithm: :func:`fit`.

In order: the job's own checks (:meth:`Job.check <sca.training.job.Job.check>`), the checkpoint to
resume from, the output directory (its earlier run's settings: :func:`claim_output`), the reporting packages,
the base model; the tokenizer and its
end-of-turn tokens, the job's examples (offline: selected, encoded and checked before the model
loads); the training log; the job's TRL trainer, trained; the checkpoint saved, or the LoRA adapter
merged; the summary. What differs between algorithms is the job's (:mod:`sca.training.sft`,
:mod:`sca.training.dpo`, :mod:`sca.training.grpo`); bad input or options stop the run with a
one-line :class:`~sca.records.io.InputError` before any model is loaded.

Output, in the checkpoint directory: a Hugging Face checkpoint with its tokenizer (with
``lora`` a PEFT adapter, or with ``merge_lora`` the merged model, which plain transformers
and vLLM load; the adapter is then kept in ``adapter/``) and ``train_log.jsonl``
(:mod:`sca.training.log`); :class:`TrainSummary` is what the stage writes to ``train_summary.json``.

**A resume never mixes settings.** The run writes the settings that change its checkpoint (the stage's
``RESULT_SETTINGS``) to ``sca_run.json`` in the directory before anything loads; a later run into a directory
that holds an earlier run's checkpoint compares its own and stops, naming each difference, unless
``--overwrite``, which starts afresh (the earlier run's ``checkpoint-N`` folders are removed, so that no
later resume picks one up).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sca import __version__
from sca.records.io import InputError, Loaded, StreamedInput, write_json_atomic
from sca.records.stage_run import refuse_changed
from sca.training.algorithms import get_algorithm
from sca.training.configs import BOOL_WORDS
from sca.training.dpo import DPOJob
from sca.training.encoding import end_of_turn_ids, ensure_pad_token, eos_token_ids
from sca.training.grpo import GRPOJob
from sca.training.job import Job, Prepared
from sca.training.log import TrainLog
from sca.training.selection import Selection
from sca.training.sft import SFTJob

#: each kind of trainer's job (`Algorithm.trainer` picks one)
JOBS: dict[str, type[Job]] = {"sft": SFTJob, "dpo": DPOJob, "grpo": GRPOJob}


@dataclass
class TrainSummary:
    """What a run did: counts, tokens, steps, loss and times (also in train_summary.json)."""

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


def make_job(algo: str, data: Loaded | StreamedInput, *, sandbox: Any = None, user_config: Any = None) -> Job:
    """The job of `algo` on its input: trajectories (:class:`Loaded`) offline, tasks (:class:`StreamedInput`)
    online, whose episodes run in `sandbox` (a built :class:`~sandbox.Sandbox`) with the simulated user of
    `user_config`."""
    algorithm = get_algorithm(algo)
    if algorithm.online:
        return JOBS[algorithm.trainer](algorithm, data, sandbox=sandbox, user_config=user_config)
    return JOBS[algorithm.trainer](algorithm, data)


def prepare(algo: str, records: list[dict[str, Any]], tokenizer: Any, config: Any, path: str = "<input>",
            eos_ids: Iterable[int] = ()) -> tuple[Selection, Prepared]:
    """Select, encode, check (masks, token parity) and truncate the examples of an offline `algo`. No training."""
    algorithm = get_algorithm(algo)
    return JOBS[algorithm.trainer](algorithm, None).encode(records, tokenizer, config, path, eos_ids)


def fit(
    algo: str,
    data: Loaded | StreamedInput,
    config: Any,
    output_dir: str | Path,
    *,
    preset: str | None = None,
    overwrite: bool = False,
    sandbox: Any = None,
    user_config: Any = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    on_warn: Callable[[str], None] | None = None,
    started: float | None = None,
    run_settings: dict[str, Any] | None = None,
) -> TrainSummary:
    """Train `algo` on `data` (trajectories, or for grpo tasks) with `config` (``configs.build_config``) and write
    the checkpoint and its log to `output_dir`; returns what was done.

    `preset`: the preset `config` was built with (for the summary's settings); `sandbox`, `user_config`: grpo's
    (:func:`make_job`); `on_log` gets each line of train_log.jsonl, `on_status` a word on each phase (both on the
    main process only), `on_warn` a warning (resuming a directory whose settings cannot be checked); `started`: when
    the run began (``time.monotonic()``), for its wall time; `run_settings`: the settings that change the checkpoint
    (:func:`claim_output`), None to leave the directory's earlier settings unchecked.
    """
    wall0 = time.monotonic() if started is None else started
    main = int(os.environ.get("RANK", "0") or 0) == 0  # torchrun / accelerate launch set RANK
    status = on_status if on_status is not None and main else (lambda msg: None)
    job = make_job(algo, data, sandbox=sandbox, user_config=user_config)
    out = Path(output_dir)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    job.check(config)
    _check_report_to(config)  # before the directory is claimed: a refused run writes nothing
    resume = resume_checkpoint(config, out)
    if overwrite and resume is not None:
        raise InputError("--overwrite starts afresh: it does not go with resume_from_checkpoint")
    if run_settings is not None:
        unchecked = claim_output(out, run_settings, overwrite=overwrite, resuming=resume is not None, write=main)
        if unchecked and main and on_warn is not None:
            on_warn(unchecked)
    _check_output(out, overwrite, resume is not None)
    model = _model_path(config)

    status("tokenizing" if job.encodes_examples else "loading the model")
    tokenizer = _load_tokenizer(model, config.trust_remote_code)
    eos_ids = end_of_turn_ids(tokenizer, eos_token_ids(model))
    job.prepare(tokenizer, eos_ids, config)
    ensure_pad_token(tokenizer, eos_ids)
    peft_config = _peft_config(config)

    if job.encodes_examples:
        status("loading the model")
    log = TrainLog(out / "train_log.jsonl", append=resume is not None, echo=on_log if main else None,
                   extra=job.log_extra())
    with job.session():
        trainer = job.trainer(config, model, tokenizer, [log], peft_config)
        status("training")
        result = trainer.train(resume_from_checkpoint=resume)
        status("saving")
        merged = _save(trainer, config, model, out, tokenizer)

    losses = [line["loss"] for line in log.lines if "loss" in line]
    train_seconds = float(log.final.get("train_runtime", result.metrics.get("train_runtime", 0.0)))
    tokens_per_s = None
    if job.encodes_examples:
        # TRL's count of the non-padding tokens trained on (all processes), as in its `num_tokens` log
        total_tokens = float(getattr(trainer, "_total_train_tokens", 0) or 0)
        if not total_tokens:
            total_tokens = float(max((line.get("num_tokens", 0) for line in log.lines), default=0))
        tokens_per_s = round(total_tokens / train_seconds, 2) if total_tokens and train_seconds else None
    return TrainSummary(
        algo=algo, model=model, output_dir=str(out), **job.counts(),
        steps=trainer.state.global_step, epochs=round(float(trainer.state.epoch or 0.0), 4),
        first_loss=losses[0] if losses else None, final_loss=losses[-1] if losses else None,
        train_seconds=round(train_seconds, 3), wall_seconds=round(time.monotonic() - wall0, 3),
        tokens_per_s=tokens_per_s, lora=bool(config.lora), merged=merged,
        settings=_settings(algo, config, model, preset), main_process=trainer.is_world_process_zero(),
    )


_CHECKPOINT_FILES = ("train_summary.json", "config.json", "adapter_config.json", "model.safetensors")
#: the folders transformers saves a run's state in while it trains (what resume_from_checkpoint resumes)
_STEP_CHECKPOINT = re.compile(r"^checkpoint-\d+$")
#: the file, in the checkpoint directory, of the settings that made it (:func:`claim_output`)
RUN_FILE = "sca_run.json"


def _step_checkpoints(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.is_dir() and _STEP_CHECKPOINT.match(p.name))


def _held(out: Path) -> list[str]:
    """What an earlier run left in `out` (checkpoint files, checkpoint-N folders), by name."""
    if not out.is_dir():
        return []
    return [name for name in _CHECKPOINT_FILES if (out / name).exists()] + [p.name for p in _step_checkpoints(out)]


def claim_output(out: Path, settings: dict[str, Any], *, overwrite: bool, resuming: bool, write: bool = True) -> str | None:
    """Make `out` this run's: refuse it if it holds a checkpoint made with other `settings` (the result-changing
    ones, by dotted name), then record them in ``sca_run.json`` (`write`: on the main process only).

    Raises :class:`~sca.records.stage_run.SettingsChanged` (one line naming each difference, as every stage
    words it) unless `overwrite`, which removes the earlier run's checkpoint-N folders and summary instead: a
    later resume must not pick up a step of the run it replaced. A directory holding a checkpoint but no
    ``sca_run.json`` (made by an older sca) cannot be checked: returns the warning to give when `resuming`
    (and leaves it without one: its settings stay unknown); otherwise None.
    """
    path = out / RUN_FILE
    held = _held(out)
    if held and not overwrite:
        try:
            before = json.loads(path.read_text())["result_settings"]
        except (OSError, ValueError, KeyError, TypeError):
            before = None
        if not isinstance(before, dict):
            return (f"{out}: made by an sca that did not record its settings ({RUN_FILE}); resuming "
                    f"{held[-1]} without checking that this run's are the same") if resuming else None
        # as the file holds them (enums as their values)
        refuse_changed(out, before, json.loads(json.dumps(settings, default=str)), kind="directory")
        if path.is_file():
            return None  # the same settings: the file still describes the run that made the checkpoint
    if not write:
        return None
    if overwrite:
        for step in _step_checkpoints(out):
            shutil.rmtree(step)
        (out / "train_summary.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {
        "stage": "train",
        "command": [Path(sys.argv[0]).name] + sys.argv[1:],
        "sca_version": __version__,
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "result_settings": settings,
    })
    return None


def _check_output(out: Path, overwrite: bool, resuming: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    if out.is_dir() and not overwrite and not resuming:
        found = _held(out)
        if found and _STEP_CHECKPOINT.match(found[0]):
            raise InputError(f"{out}: already holds a checkpoint ({found[0]}) of an unfinished run; "
                             "--set resume_from_checkpoint=true resumes it, --overwrite starts afresh")
        if found:
            raise InputError(f"{out}: already holds a checkpoint ({found[0]}); pass --overwrite to train into it anyway")


def resume_checkpoint(config: Any, out: Path) -> str | None:
    """The checkpoint `resume_from_checkpoint` names (true: the last checkpoint-N in the output directory,
    or a path), checked before training; None to start afresh."""
    resume = config.resume_from_checkpoint
    if isinstance(resume, str) and resume.strip().lower() in BOOL_WORDS:
        resume = BOOL_WORDS[resume.strip().lower()]
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


def _load_tokenizer(model: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the tokenizer of {model}: {' '.join(str(e).split())[:300]}") from None


def _save(trainer: Any, config: Any, base: str, out: Path, tokenizer: Any) -> bool:
    """The checkpoint: the model (or adapter) and the tokenizer; with merge_lora the adapter in adapter/ and the
    merged model beside it. Returns whether it merged."""
    if config.lora and config.merge_lora:
        adapter_dir = out / "adapter"
        trainer.save_model(str(adapter_dir))
        if trainer.is_world_process_zero():
            _merge_lora(base, adapter_dir, out, tokenizer, config.trust_remote_code)
        return True
    trainer.save_model(str(out))  # the model (or adapter) and the tokenizer, from the main process
    return False


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

