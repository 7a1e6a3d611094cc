"""`sca audit`: verifier quality, measured (the library is :mod:`sca.audit`).

* :func:`audit_file`: each task's ``evaluate()`` mutation-tested with variants of its own solution,
  tasks in parallel over the sandbox's workers (each thread with its own environments); every task
  goes to the output with its ``audit``. Resumable like `sca validate`; the summary (printed, and in
  the sidecar's counts) is the lax rate per task format, over the whole output when resumed.
* :func:`sheet_file`: a labelling sheet (CSV) of trajectories stratified by reward.
* :func:`labels_file`: a labelled sheet's TP/FP/TN/FN and rates per task format (JSON).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sca.audit.config import AuditConfig
from sca.audit.labels import label_rates, read_labels, sheet_csv, sheet_rows
from sca.audit.mutants import audit_task, lax_rates
from sca.records import (
    CAT_TASK,
    STDIO,
    TRAJECTORY,
    InputError,
    RunMeta,
    StageRun,
    load_records,
    progress,
    scan_jsonl,
)
from sca.records.io import write_json_atomic
from sca.records.stage_run import SANDBOX_LIMITS, map_tasks, under

__all__ = ["AuditConfig", "AuditSummary", "audit_file", "audit_records", "labels_file", "sheet_file"]

#: the settings (of AuditConfig) that change an audit: a resume must keep them (sca.records.stage_run); the
#: bootstrap's (n_boot, seed) change only the rates, which are computed afresh over the whole output
RESULT_SETTINGS = ("max_mutants", "alternatives_per_argument", *under("sandbox", SANDBOX_LIMITS))


@dataclass
class AuditSummary:
    """What an audit run did: its counts, and the lax rates over the whole output."""

    audited: int  # this run
    resumed: int
    skipped_invalid: int
    total_input: int
    rates: dict[str, Any]
    seconds: float
    sandbox: str = ""

    @property
    def rate(self) -> float:
        return self.audited / self.seconds if self.seconds > 0 else 0.0


def audit_records(records: list[dict[str, Any]], config: AuditConfig, sandbox: Any,
                  on_result: Callable[[dict[str, Any]], None]) -> None:
    """Audit many tasks in parallel, calling `on_result` with each task and its ``audit``, in input order."""

    def one(task: dict[str, Any], env: Any) -> dict[str, Any]:
        return {**task, "audit": {**audit_task(task, env, sandbox, config), "sandbox": sandbox.backend_name}}

    map_tasks(records, config.sandbox.workers, "audit", one, on_result)


def audit_file(input_path: str, output: str, *, config: AuditConfig | None = None, skip_invalid: bool = False,
               overwrite: bool = False, show_progress: bool | None = None,
               on_skip: Callable[[str], None] | None = None) -> AuditSummary:
    """Audit every task of `input_path` into `output` (each task with its ``audit``)."""
    config = config or AuditConfig()
    loaded = load_records(input_path, CAT_TASK, skip_invalid=skip_invalid, on_skip=on_skip)
    backend = ""
    # what earlier runs wrote, for the rates over the whole output when this run resumes it
    earlier = [] if overwrite else [{"id": r.get("id"), "format": r.get("format"), "audit": r["audit"]}
                                    for r in scan_jsonl(output) if isinstance(r.get("audit"), dict)]
    written: list[dict[str, Any]] = []
    with StageRun("audit", {"audited": output}, inputs=[loaded], settings=asdict(config),
                  result=RESULT_SETTINGS, overwrite=overwrite) as run:
        todo = run.pending_input(loaded)
        if todo:
            with config.sandbox.build(workers=min(config.sandbox.workers, len(todo))) as sandbox:
                backend = run.meta.data["settings"]["sandbox_backend"] = sandbox.backend_name
                with progress(len(todo), "audit", show_progress, unit="tasks") as advance:
                    def done(record: dict[str, Any]) -> None:
                        lax = record["audit"]["lax"]
                        run.counts["lax" if lax else "tight" if lax is False else "skipped"] += 1
                        run.write("audited", record)
                        written.append({"format": record.get("format"), "audit": record["audit"]})
                        advance()

                    audit_records(todo, config, sandbox, done)
        everything = [r for r in earlier if str(r["id"]) in run.done_ids] + written
        rates = lax_rates(everything, config.n_boot, config.seed, config.confidence)
        counts = run.close(extra={"lax_rates": rates})
    return AuditSummary(audited=counts.get("audited", 0), resumed=counts.get("resumed", 0),
                        skipped_invalid=counts.get("skipped_invalid", 0), total_input=counts.get("input", 0),
                        rates=rates, seconds=counts.get("seconds", 0.0), sandbox=backend)


def sheet_file(trajectories_path: str, output: str, n: int, *, tasks_path: str | None = None,
               config: AuditConfig | None = None, skip_invalid: bool = False,
               on_skip: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write a labelling sheet of `n` trajectories of `trajectories_path` (see :func:`sca.audit.sheet_rows`)
    to the CSV `output`; `tasks_path` gives each task's ``evaluate``. Returns what it wrote, by reward and
    format."""
    config = config or AuditConfig()
    if n < 1:
        raise InputError(f"--sheet must be at least 1, not {n}")
    loaded = load_records(trajectories_path, TRAJECTORY, skip_invalid=skip_invalid, on_skip=on_skip)
    inputs = [loaded]
    tasks: dict[str, dict[str, Any]] = {}
    if tasks_path:
        task_file = load_records(tasks_path, CAT_TASK, skip_invalid=skip_invalid, on_skip=on_skip)
        inputs.append(task_file)
        tasks = {str(t["id"]): t for t in task_file.records}
    rows = sheet_rows(loaded.records, n, tasks, seed=config.seed, episode_chars=config.episode_chars)
    text = sheet_csv(rows)
    meta = RunMeta(output, "audit --sheet", inputs, {"n": n, "seed": config.seed,
                                                      "episode_chars": config.episode_chars})
    meta.start()
    if output == STDIO:
        import sys

        sys.stdout.write(text)
    else:
        _write_text_atomic(output, text)
    summary = {"rows": len(rows), "reward_1": sum(r["reward"] == 1 for r in rows),
               "reward_0": sum(r["reward"] == 0 for r in rows), "input": len(loaded.records),
               "without_evaluate": sum(not r["evaluate"] for r in rows),
               "formats": {f: sum(r["format"] == f for r in rows) for f in sorted({r["format"] for r in rows})}}
    meta.finish(summary)
    return summary


def _write_text_atomic(path: str, text: str) -> None:
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    except OSError as e:
        raise InputError(f"{path}: cannot write: {e.strerror}") from None


def labels_file(sheet_path: str, output: str, *, config: AuditConfig | None = None) -> dict[str, Any]:
    """Read a labelled sheet and write Figure 4's counts and rates per task format to the JSON `output`."""
    config = config or AuditConfig()
    try:
        text = Path(sheet_path).read_text(encoding="utf-8-sig")  # a spreadsheet may add a byte-order mark
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{sheet_path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    rows, unlabelled = read_labels(text, sheet_path)
    if not rows:
        raise InputError(f"{sheet_path}: no labelled row ({unlabelled} without a label): write 1 or 0 in the "
                         "label column")
    rates = {**label_rates(rows, config.n_boot, config.seed, config.confidence), "labelled": len(rows),
             "unlabelled": unlabelled}
    if output == STDIO:
        import json
        import sys

        sys.stdout.write(json.dumps(rates, indent=1) + "\n")
    else:
        write_json_atomic(output, rates)
    return rates
