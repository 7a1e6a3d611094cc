"""The bookkeeping every stage shares: inputs, resumable outputs, the sidecar meta, progress, counts.

A stage function opens a :class:`StageRun`, asks it which input records are
still to do, hands each finished record to :meth:`StageRun.write`, and closes
it; the run writes the sidecar meta and returns the counts. Progress and
summaries go to stderr, so ``-o -`` keeps stdout pure JSONL.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from sca import __version__
from sca.records.io import STDIO, InputError, Loaded, RecordWriter, write_json_atomic


class StageRun:
    """One run of a stage over its outputs (``outputs`` maps a role to a path)."""

    def __init__(
        self,
        stage: str,
        outputs: dict[str, str | None],
        *,
        inputs: list[Loaded] = (),  # type: ignore[assignment]
        settings: dict[str, Any] | None = None,
        overwrite: bool = False,
    ):
        paths = {role: p for role, p in outputs.items() if p}
        real = [p for p in paths.values() if p != STDIO]
        if len(set(real)) != len(real):
            raise InputError(f"the outputs must be different files (got {', '.join(real)})")
        self.stage = stage
        self.writers = {role: RecordWriter(p, overwrite=overwrite) for role, p in paths.items()}
        self.done_ids: set[str] = set()
        for w in self.writers.values():
            self.done_ids |= w.done_ids
        self.counts: Counter[str] = Counter()
        self.counts["resumed"] = len(self.done_ids)
        self.torn = sum(1 for w in self.writers.values() if w.torn_bytes)
        self.started = time.monotonic()
        primary = next(iter(paths.values()))
        self.meta = RunMeta(primary, stage, inputs, settings)
        self.meta.data["outputs"] = paths
        self.meta.start(overwrite=overwrite)
        self._closed = False

    def pending(self, records: list[dict[str, Any]], id_field: str = "id") -> list[dict[str, Any]]:
        """The records whose id is not yet in any output."""
        return [r for r in records if str(r[id_field]) not in self.done_ids]

    def write(self, role: str, record: dict[str, Any]) -> None:
        """Write a finished record to the output for `role` (dropped, but counted, if that output is off)."""
        self.counts[role] += 1
        writer = self.writers.get(role)
        if writer is not None:
            writer.write(record)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def close(self, status: str = "finished", extra: dict[str, Any] | None = None) -> dict[str, Any]:
        if self._closed:
            return dict(self.counts)
        self._closed = True
        for w in self.writers.values():
            w.close()
        counts: dict[str, Any] = dict(self.counts)
        counts["seconds"] = round(self.elapsed, 3)
        if extra:
            counts.update(extra)
        self.meta.finish(counts, status=status)
        return counts

    def __enter__(self) -> "StageRun":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.close(status="interrupted" if exc_type is KeyboardInterrupt else f"failed: {exc_type.__name__}")


@contextmanager
def progress(total: int, description: str, enabled: bool | None = None) -> Iterator[Any]:
    """A rich progress bar on stderr; yields ``advance(n=1)``. Quiet when stderr is not a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled or total == 0:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    err_console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunMeta:
    """The ``OUTPUT.meta.json`` sidecar: how an output file was made.

    Holds the command line, sca version, inputs with hashes, settings (model,
    sampling, seed...), start and end times and counts. A resumed run keeps
    the earlier runs' entries under ``previous_runs``. Written atomically.
    """

    def __init__(self, output: str | Path, stage: str, inputs: Iterable[Loaded] = (), settings: dict[str, Any] | None = None):
        self.output = str(output)
        self.path = None if self.output == STDIO else Path(self.output + ".meta.json")
        previous: list[dict[str, Any]] = []
        if self.path is not None and self.path.exists():
            try:
                old = json.loads(self.path.read_text())
                previous = old.pop("previous_runs", [])
                previous.append(old)
            except (ValueError, OSError):
                previous = []
        self.data: dict[str, Any] = {
            "stage": stage,
            "command": [Path(sys.argv[0]).name] + sys.argv[1:],
            "sca_version": __version__,
            "inputs": [i.describe() for i in inputs],
            "settings": settings or {},
            "started_at": _now(),
            "ended_at": None,
            "status": "running",
            "counts": {},
            "previous_runs": previous,
        }

    def start(self, overwrite: bool = False) -> None:
        if overwrite:
            self.data["previous_runs"] = []
        self._save()

    def finish(self, counts: dict[str, Any], status: str = "finished") -> None:
        self.data["counts"] = counts
        self.data["status"] = status
        self.data["ended_at"] = _now()
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        write_json_atomic(self.path, self.data)
