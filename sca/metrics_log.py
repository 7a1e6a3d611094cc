"""Scalars of a rollout or eval run for TensorBoard or Weights & Biases (``--report-to``).

``sca train`` reports through TRL; the executor's stages had no such stream, so a long rollout could
be watched only in its log. :class:`MetricsLog` takes each trial as it is written (its reward, its
tokens per role), and at the end each task's mean reward over this run's trials and the run's
summary (Pass@1, Pass@k, tokens), and hands them to each sink as ``(tag, value, step)``, the shape of
TensorBoard's ``add_scalar``. Three axes, named by the tag's first part: ``trial/*`` by trial (in the
order they finished), ``task/*`` by task (sorted by id), ``run/*`` at the run's last trial.

The sinks' libraries load only when asked for (neither is a dependency of sca); a missing one is
:class:`MetricsLogUnavailable`, which the command line turns into a one-line error before any model
loads. Standard library only at import.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

#: the sinks ``--report-to`` takes (comma-separated for several); "none": no sink
REPORT_TO = ("none", "tensorboard", "wandb")
REPORT_TO_HELP = ("Also log scalars (trial rewards and tokens, per-task rewards, Pass@k) to tensorboard "
                  "(OUTPUT.tensorboard/) or wandb (project $WANDB_PROJECT, else sca); comma-separated for both "
                  "[default: none].")


class MetricsLogUnavailable(Exception):
    """A sink asked for cannot start: its library is not installed, or the name is unknown."""


class TensorBoardSink:
    """Event files in `logdir`, through torch's SummaryWriter (needs the ``tensorboard`` package)."""

    def __init__(self, logdir: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise MetricsLogUnavailable(
                f"--report-to tensorboard needs the tensorboard package (pip install tensorboard): {e}") from None
        self.logdir = logdir
        self.writer = SummaryWriter(log_dir=logdir)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """One W&B run, its settings as the run's config; each axis (``trial``, ``task``, ``run``) is a W&B
    step metric, because W&B's own step must only grow and the three axes do not grow together."""

    def __init__(self, name: str, config: dict[str, Any], directory: str):
        try:
            import wandb
        except ImportError as e:
            raise MetricsLogUnavailable(f"--report-to wandb needs the wandb package (pip install wandb): {e}") from None
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "sca"), name=name, config=config,
                              dir=directory)
        self._axes: set[str] = set()

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        axis = tag.split("/", 1)[0] + "_step"
        if axis not in self._axes:
            self._axes.add(axis)
            self.run.define_metric(axis)
            self.run.define_metric(tag.split("/", 1)[0] + "/*", step_metric=axis)
        self.run.log({tag: value, axis: step})

    def close(self) -> None:
        self.run.finish()


def logdir_for(output: str | None) -> str:
    """Where a run's TensorBoard files go: beside its output (as its ``.meta.json``); under ``runs/`` for
    ``-o -``."""
    return "runs/tensorboard" if output in (None, "-") else f"{output}.tensorboard"


def parse_report_to(value: str | list[str] | None) -> list[str]:
    """``--report-to`` as a list of sinks ("none" and empties dropped); an unknown one raises."""
    items = value if isinstance(value, list) else (value or "").split(",")
    names = [n.strip().lower() for item in items for n in str(item).split(",") if n.strip()]
    unknown = [n for n in names if n not in REPORT_TO]
    if unknown:
        raise MetricsLogUnavailable(f"--report-to takes {', '.join(REPORT_TO)}, not {', '.join(unknown)}")
    return [n for n in names if n != "none"]


def open_metrics_log(report_to: str | list[str] | None, *, stage: str, output: str | None,
                     settings: dict[str, Any] | None = None) -> MetricsLog | None:
    """The MetricsLog of ``--report-to`` (None when it names no sink); each sink's library loads now, so
    a missing one fails before the run starts."""
    names = parse_report_to(report_to)
    if not names:
        return None
    sinks: list[Any] = []
    try:
        for name in names:
            if name == "tensorboard":
                sinks.append(TensorBoardSink(logdir_for(output)))
            else:
                base = Path(output).name if output not in (None, "-") else stage
                sinks.append(WandbSink(f"{stage}:{base}", settings or {}, str(Path(logdir_for(output)).parent)))
    except BaseException:
        for s in sinks:
            s.close()
        raise
    return MetricsLog(sinks)


class MetricsLog:
    """The scalar stream of one run (see the module's docstring), to every sink: an object with
    ``add_scalar(tag, value, step)`` and ``close()`` (TensorBoardSink, WandbSink, a test's double)."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks
        self.trials = 0
        self._rewards: dict[str, list[float]] = defaultdict(list)

    def scalar(self, tag: str, value: float, step: int) -> None:
        for sink in self.sinks:
            sink.add_scalar(tag, float(value), step)

    def trial(self, record: dict[str, Any]) -> None:
        """A trajectory or eval result as it is written: its reward (none for an infrastructure failure,
        which is not a 0) and each role's tokens."""
        self.trials += 1
        reward = record.get("reward")
        if reward is not None:
            self.scalar("trial/reward", reward, self.trials)
            self._rewards[str(record.get("task_id"))].append(float(reward))
        for role, t in sorted((record.get("tokens") or {}).items()):
            self.scalar(f"trial/tokens_{role}", t.get("prompt", 0) + t.get("completion", 0), self.trials)

    def finish(self, summary: dict[str, float]) -> None:
        """Each task's mean reward over this run's scored trials, then the run's `summary` scalars (their
        tags under ``run/``), then close every sink."""
        try:
            for i, (_, rewards) in enumerate(sorted(self._rewards.items())):
                self.scalar("task/mean_reward", sum(rewards) / len(rewards), i)
            for name, value in summary.items():
                self.scalar(f"run/{name}", value, self.trials)
        finally:
            self.close()

    def close(self) -> None:
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()
