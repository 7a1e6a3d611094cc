"""`sca train`: train a model on the trajectories `sca rollout` wrote (``rft``, ``sft``, ``dpo``), or
online on CaT tasks (``grpo``), with TRL's trainers.

The stage is the file level: it reads the input (trajectories, each checked against
:data:`~sca.records.schema.TRAINING_TRAJECTORY`; for ``grpo`` CaT tasks), fails on bad input
before TRL is imported, builds the config (:func:`sca.training.configs.build_config`), trains
(:func:`sca.training.fit.fit`: the checkpoint and ``train_log.jsonl``) and writes
``train_summary.json`` (command, inputs with hashes, settings, counts, times, the whole config).
What is trained, and why it is done the way it is, is :mod:`sca.training`'s.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sca import __version__
from sca.records.io import Loaded, StreamedInput, load_records, write_json_atomic
from sca.records.provenance import provenance
from sca.records.schema import TRAINING_TRAJECTORY
from sca.training.algorithms import get_algorithm
from sca.training.selection import read_tasks

if TYPE_CHECKING:
    from sca.training.fit import TrainSummary


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
    (:mod:`sca.training.grpo`): `sandbox` (a :class:`~sandbox.SandboxConfig`) runs their actions
    and rewards, `user` (a :class:`~sca.inference.config.ModelConfig`, default the model in
    training) plays the simulated user of retail and airline.

    `config`: a ready config (``sca.training.configs.config_class(algo)``); otherwise one is built
    by :func:`~sca.training.configs.build_config` from `preset`, `config_file`, `options` and `sets`.
    `on_log` gets each line of train_log.jsonl, `on_status` a word on each phase. Raises
    :class:`~sca.records.io.InputError` (one line) for bad input or options, before any training starts.
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
    running_sandbox = None
    if algorithm.online:
        from sandbox.config import SandboxConfig

        running_sandbox = (sandbox or SandboxConfig()).build()
    summary = fit(algo, data, config, output_dir, preset=preset, overwrite=overwrite, sandbox=running_sandbox,
                  user_config=user, on_log=on_log, on_status=on_status, started=clock)
    if summary.main_process:
        _write_summary(Path(output_dir), summary, data, config, started)
    return summary


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
