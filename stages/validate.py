"""`sca validate`: the Code-as-Task filter over a file of tasks.

Every task goes through the CaT checks of :mod:`sca.cat` (the contract's checks, in its order, and
their rejection reasons), tasks in parallel over the sandbox's workers, each thread with its own
environments; accepted tasks go to the output, rejected ones (with the reason, detail and
traceback of the first failed check) to the rejected file. Resumable; the summary counts reasons.

Each task gets the checks of its format (:data:`sca.cat.CHECKS_OF_FORMAT`; ``verification_only``:
Figure 4's, for cat tasks), and the summary counts each format apart. A resumed run whose outputs
hold tasks of a format the input has not, or tasks held to other checks (a run with
``--verification-only`` onto one without), is refused: one file, one set of checks per format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sca.cat import CHECKS_OF_FORMAT, ValidateConfig, checks_of, validate_task
from sca.records import CAT_TASK
from sca.records.io import InputError, load_records, scan_jsonl
from sca.records.progress import progress
from sca.records.stage_run import (
    SANDBOX_LIMITS,
    StageRun,
    map_tasks,
    refuse_other_settings,
    under,
)
from sca.task_formats import task_format

__all__ = ["ValidateConfig", "ValidateSummary", "validate_file", "validate_records", "validate_task"]

#: the settings (of ValidateConfig) that change a verdict: a resume must keep them (sca.records.stage_run)
RESULT_SETTINGS = ("min_failure_cases", "verification_only", "audit", *under("sandbox", SANDBOX_LIMITS))

# -- a whole file ------------------------------------------------------------------------------


@dataclass
class ValidateSummary:
    """What a validate run did, read off the run's counts (the one place they are kept)."""

    accepted: int = 0
    rejected: int = 0
    resumed: int = 0
    skipped_invalid: int = 0
    total_input: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    sandbox: str = ""
    #: for each task format this run validated: accepted and rejected, as counted above
    by_format: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def from_counts(cls, counts: dict[str, Any], sandbox: str = "") -> ValidateSummary:
        by_format: dict[str, dict[str, int]] = {}
        for key, n in counts.items():
            if key.startswith("format:"):
                _, fmt, outcome = key.split(":")
                by_format.setdefault(fmt, {"accepted": 0, "rejected": 0})[outcome] = n
        return cls(by_format=by_format, accepted=counts.get("accepted", 0), rejected=counts.get("rejected", 0),
                   resumed=counts.get("resumed", 0), skipped_invalid=counts.get("skipped_invalid", 0),
                   total_input=counts.get("input", 0),
                   reasons={k.split(":", 1)[1]: v for k, v in sorted(counts.items(), key=lambda kv: -kv[1])
                            if k.startswith("reason:")},
                   seconds=counts.get("seconds", 0.0), sandbox=sandbox)

    @property
    def rate(self) -> float:
        done = self.accepted + self.rejected
        return done / self.seconds if self.seconds > 0 else 0.0


def validate_records(records: list[dict[str, Any]], config: ValidateConfig, sandbox: Any,
                     on_result: Callable[[dict[str, Any]], None]) -> None:
    """Validate many tasks in parallel, calling `on_result` in input order."""

    def one(task: dict[str, Any], env: Any) -> dict[str, Any]:
        validation = {**validate_task(task, env, sandbox, config), "sandbox": sandbox.backend_name}
        if config.audit and validation["valid"]:  # --audit: a lax verifier is rejected (sca.audit)
            from sca.audit.config import AuditConfig
            from sca.audit.mutants import audit_task, reject_if_lax

            audit = audit_task(task, env, sandbox, AuditConfig(sandbox=config.sandbox))
            return {**task, "validation": reject_if_lax(validation, audit), "audit": audit}
        return {**task, "validation": validation}

    map_tasks(records, config.sandbox.workers, "validate", one, on_result)


def refuse_mixing(paths: list[str | None], formats: set[str], config: ValidateConfig) -> None:
    """Raise InputError if an output an earlier run wrote (of `paths`) holds a task of a format not among the
    input's `formats`, one held to other checks than `config` gives its format, or one validated with --audit
    where `config` has none (or the other way round): resuming would mix them.
    An empty input writes nothing, and mixes nothing."""
    if not formats:
        return
    for path in paths:
        for record in scan_jsonl(path) if path else ():
            fmt = task_format(record)
            if fmt not in formats:
                raise InputError(f"{path}: holds {fmt} tasks, which the input has not ({', '.join(sorted(formats))}); "
                                 "resuming would mix them (write to another file, or pass --overwrite)")
            v = record.get("validation")
            # a record written before validation named its checks was held to its format's full set
            held = (v.get("check_set") or list(CHECKS_OF_FORMAT.get(fmt, ()))) if isinstance(v, dict) else None
            now = list(checks_of(fmt, config))
            if held is not None and held != now:
                raise InputError(f"{path}: its {fmt} tasks were held to the checks {', '.join(map(str, held))}, "
                                 f"this run's are {', '.join(now)}; resuming would mix them (write to another file, "
                                 "or pass --overwrite)")
            # --audit: every valid task of an audited run carries its audit, no task of another run does
            audited = "audit" in record
            if audited != config.audit and (audited or (isinstance(v, dict) and v.get("valid") is True)):
                raise InputError(f"{path}: its tasks were validated {'with' if audited else 'without'} --audit, this "
                                 f"run {'with' if config.audit else 'without'}; resuming would mix them (write to "
                                 "another file, or pass --overwrite)")


def validate_file(
    input_path: str,
    output: str,
    *,
    rejected: str | None = None,
    config: ValidateConfig | None = None,
    skip_invalid: bool = False,
    overwrite: bool = False,
    show_progress: bool | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> ValidateSummary:
    """Validate every task of `input_path`; valid ones to `output`, rejected ones to `rejected`."""
    config = config or ValidateConfig()
    loaded = load_records(input_path, CAT_TASK, skip_invalid=skip_invalid, on_skip=on_skip)
    if not overwrite:  # the sidecar's settings first (every difference named), then the records' own (no sidecar)
        refuse_other_settings([output, rejected], asdict(config), RESULT_SETTINGS)
        refuse_mixing([output, rejected], {task_format(r) for r in loaded.records}, config)
    settings = asdict(config)
    backend = ""
    with StageRun("validate", {"accepted": output, "rejected": rejected}, inputs=[loaded],
                  settings=settings, result=RESULT_SETTINGS, overwrite=overwrite) as run:
        todo = run.pending_input(loaded)
        if todo:
            with config.sandbox.build(workers=min(config.sandbox.workers, len(todo))) as sandbox:
                backend = sandbox.backend_name
                run.meta.data["settings"]["sandbox_backend"] = sandbox.backend_name
                with progress(len(todo), "validate", show_progress, unit="tasks") as advance:
                    def done(record: dict[str, Any]) -> None:
                        v = record["validation"]
                        run.counts[f"format:{v['format']}:{'accepted' if v['valid'] else 'rejected'}"] += 1
                        if v["valid"]:
                            run.write("accepted", record)
                        else:
                            run.counts[f"reason:{v['reason']}"] += 1
                            run.write("rejected", record)
                        advance()

                    validate_records(todo, config, sandbox, done)
        counts = dict(run.counts)
        counts["seconds"] = run.elapsed
    summary = ValidateSummary.from_counts(counts, sandbox=backend)
    return summary
