"""`sca report`: tables and plots of the stages' outputs, gathered in one Markdown page.

:func:`report` reads any mix of files and directories (a directory: every ``*.jsonl`` in it,
and every ``train_log.jsonl`` below it, in checkpoint directories), works out what each file
is, and writes ``OUT_DIR/README.md`` with PNG plots beside it (matplotlib, Agg backend). The
sections, each present when its kind of input is:

* **Validation funnel** (propose and validate outputs), as in the paper: proposed, code runs,
  solution passes, failure cases fail (valid); counts and percentages of proposed, the paper's
  Llama-3.1-8B retail figures (47.7% / 9.5% / 5.2%) as a reference, and the rejection reasons.
* **Rewards per task** (rollout outputs): the per-task success rates, tasks solved by none /
  some / all trials, mean reward, Pass@1 / Pass@k / pass^k with bootstrap intervals,
  terminations and infrastructure failures (reward null: excluded from every figure, counted).
* **Pass@k per environment** (eval outputs, one run per file, named by its meta's model or
  its file name): :func:`sca.metrics.summarize` per (environment, split), the paper's Table 1
  beside runs of Llama-3.1-8B-Instruct itself.
* **Training** (``train_log.jsonl``): loss (and eval loss), learning rate, grad norm and
  tokens/s against the step.
* **Comparison** (``compare=(A, B)``): B against A paired by task, per environment, with
  :func:`sca.metrics.compare` (Pass@1 and Pass@k) and its verdict sentence.

What a file is. Its sidecar ``X.jsonl.meta.json`` names the stage that wrote it (``stage``:
propose, validate, rollout, eval; a sidecar ``train`` is a train log). A ``train_log.jsonl``
with ``train_summary.json`` beside it is a train log. Without either, the first record
decides: ``task_id``, ``trial`` and ``messages`` make a trajectory (eval results when it also
has ``split``, ``scorer`` or ``scorer_detail``, else rollout); ``step`` with ``loss`` or
``eval_loss`` a train log line; ``evaluation_function``, ``solution`` and ``failure_cases`` a
CaT task: ``sca propose`` output when its ``meta`` has ``source: "sca propose"`` or a
``status``, validate output when it has ``validation``. Every record is then checked against
its kind's schema (``sca.records``; the train log line of docs/TRAJECTORY.md). A line that is
not JSON, a record that breaks its schema, a sidecar that is not JSON or names an unknown
stage, records of no known kind: :class:`~sca.records.io.InputError`, one line naming the file
(and the line). CaT tasks without ``validation`` (not yet validated) and empty files whose
kind cannot be told have nothing to report: named on the command line they are an error, met
in a directory they are skipped with a note.

A run's outputs belong together: ``sca propose`` and ``sca validate`` write the sidecar for
their accepted output only, listing every output under ``outputs``; the rejected output named
there (looked for beside the accepted one, then as written) is read with it, even when not
given, so that the funnel covers the whole run.

The funnel. Every record of a propose or validate run is one *proposed* task (for propose
output, one challenger episode). Each is placed at the furthest stage its ``validation``
shows it reached (the checks run in this order and stop at the first failure: compile,
failure_case_count, noop_run, solution_run, answer_round_trip, failure_case_runs); the failed
check is ``failed_check``, else the first entry of ``checks`` with ``ok`` false, else the check
its ``reason`` belongs to:

============================  =======================================  ==========================
failed check                  reasons                                  furthest stage reached
============================  =======================================  ==========================
(no ``validation``)           propose only: the episode never gave an  proposed (no code)
                              ANSWER (``meta.reason``: max_steps,
                              context_limit, inference_error, ...)
compile                       compile                                  proposed
failure_case_count            failure_case_count                       proposed (solution not run)
noop_run                      any (noop_passes, evaluate_*, timeout..) proposed (solution not run)
solution_run                  solution_error, timeout, sandbox_error,  proposed
                              evaluate_writes/_not_bool/_error
solution_run                  solution_fails                           code runs
answer_round_trip             any (answer_not_typeable, ...)           code runs
failure_case_runs             any (failure_case_passes, ..._error...)  solution passes
none (``valid`` true)                                                  failure cases fail (valid)
============================  =======================================  ==========================

So "code runs" means every code string compiled and the solution and the ``evaluate`` after
it ran without error; "solution passes" that ``evaluate`` also returned True for the solution,
and for its answer as an executor would type it (CAT.md check 5); "failure cases fail" that
the task is valid. A task rejected before the solution ran (failure_case_count, noop_run) has
not shown that its code runs, so it stays at "proposed". A propose episode is placed by the
``validation`` of its last answer; its earlier revisions are not counted. A task that sca
propose dropped as a duplicate (``meta.status`` "duplicate") passed every check: it counts as
valid in the funnel, and the duplicates are listed among the reasons.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sca import metrics
from sca.cat import CHECK_OF_REASON, CHECKS
from sca.records.io import InputError
from sca.paper import RETAIL_FUNNEL_8B, TABLE1_ZERO_SHOT, zero_shot_row
from sca.records import EVAL_RESULT, TRAJECTORY, Field, RecordError, RecordSchema

__all__ = [
    "CHECKS",
    "FUNNEL_RULES",
    "FUNNEL_STAGES",
    "KINDS",
    "PAPER_FUNNEL",
    "PAPER_TABLE1",
    "Funnel",
    "PassRow",
    "Plot",
    "Report",
    "RewardStats",
    "Source",
    "Table",
    "TrainCurve",
    "collect",
    "funnel_stage",
    "is_paper_model",
    "report",
]

#: the kinds of input a report reads
KINDS = ("propose", "validate", "rollout", "eval", "train")

#: the stages of the validation funnel; a record's stage is an index into this
FUNNEL_STAGES = ("proposed", "code runs", "solution passes", "failure cases fail (valid)")

#: the checks of sca validate, in their order (stages/validate.py)

#: (failed check, reasons, furthest stage reached): the mapping the README page shows
FUNNEL_RULES: tuple[tuple[str, str, int], ...] = (
    ("(no validation: a propose episode that never gave an ANSWER)",
     "meta.reason: max_steps, context_limit, *_error", 0),
    ("compile", "compile", 0),
    ("failure_case_count", "failure_case_count (the solution never ran)", 0),
    ("noop_run", "any: noop_passes, evaluate_*, timeout, sandbox_error (the solution never ran)", 0),
    ("solution_run", "solution_error, timeout, sandbox_error, evaluate_writes, evaluate_not_bool, evaluate_error", 0),
    ("solution_run", "solution_fails", 1),
    ("answer_round_trip", "any: answer_not_typeable, or an error of the evaluate on the typed answer", 1),
    ("failure_case_runs", "any: failure_case_passes, failure_case_error, evaluate_*, timeout, sandbox_error", 2),
    ("none (validation.valid is true; sca propose duplicates too)", "", 3),
)

#: the paper's validation funnel (Llama-3.1-8B as challenger, retail): % of proposed tasks
PAPER_FUNNEL = ("paper: Llama-3.1-8B, retail", RETAIL_FUNNEL_8B)

#: the paper's Table 1, Llama-3.1-8B-Instruct zero-shot: (Pass@1, Pass@4) in %
PAPER_MODEL = "Llama-3.1-8B-Instruct"
PAPER_TABLE1 = TABLE1_ZERO_SHOT[PAPER_MODEL]

_ENV_ORDER = ("calculation", "web_browsing", "retail", "airline")

#: what a propose episode without an answer ended on (meta.reason)
_NO_ANSWER = {
    "max_steps": "the challenger used every reply without giving an ANSWER",
    "context_limit": "the conversation outgrew the model's context before an ANSWER",
    "inference_error": "the model backend failed before an ANSWER",
    "sandbox_error": "the sandbox failed before an ANSWER",
}


# =========================================================================== reading


@dataclass
class Source:
    """One input file: what it is and its records (only the fields a report needs)."""

    path: Path
    kind: str | None  # one of KINDS; None: nothing to report (see note)
    detected_by: str  # "meta", "train_summary.json", "fields", "outputs of X"
    meta: dict[str, Any] | None
    records: list[dict[str, Any]]
    name: str = ""  # the run's name: its model, or the file name
    group: str = ""  # the run it belongs to (the path of its primary output)
    note: str = ""
    model: str | None = None
    linked_from: tuple[str, Source] | None = None  # (role, primary): read as another output of that run
    base: Path | None = None  # labels are relative to this directory (the inputs' common one)

    @property
    def label(self) -> str:
        """The path shown: relative to the inputs' common directory."""
        if self.base is not None:
            try:
                return str(self.path.resolve().relative_to(self.base))
            except ValueError:
                pass
        return str(self.path)

    @property
    def told_by(self) -> str:
        if self.linked_from is not None:
            role, primary = self.linked_from
            return f"{role} output of {primary.label} (its meta)"
        return self.detected_by or "-"


def _check_number(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise RecordError(name, f"expected a number or null, got {type(value).__name__}")


def _check_validation(record: dict[str, Any]) -> None:
    """The validation object as docs/CAT.md describes it, and that it maps to a funnel stage."""
    v = record.get("validation")
    if v is None:
        return
    if not isinstance(v.get("valid"), bool):
        raise RecordError("validation.valid", "expected a boolean")
    checks = v.get("checks")
    if checks is not None:
        if not isinstance(checks, list):
            raise RecordError("validation.checks", "expected a list")
        for i, c in enumerate(checks):
            if not isinstance(c, dict) or not isinstance(c.get("check"), str) or not isinstance(c.get("ok"), bool):
                raise RecordError(f"validation.checks[{i}]", "expected an object with check (string) and ok (boolean)")
    if not v["valid"]:
        if not isinstance(v.get("reason"), str) or not v["reason"]:
            raise RecordError("validation.reason", "expected the rejection reason (a string)")
        if v.get("failed_check") is not None and not isinstance(v["failed_check"], str):
            raise RecordError("validation.failed_check", "expected a string")
    funnel_stage(v)  # raises RecordError when the record cannot be placed


def _cat_schema(validation_required: bool) -> RecordSchema:
    return RecordSchema(
        name="CaT task",
        fields=(
            Field("id", str, non_empty=True),
            Field("env", str, non_empty=True),
            Field("instruction", str),
            Field("evaluation_function", str),
            Field("solution", str),
            Field("failure_cases", list, item_type=str),
            Field("meta", dict, required=False),
            Field("validation", dict, required=validation_required),
        ),
        extra_checks=(_check_validation,),
    )


def _check_reward_present(record: dict[str, Any]) -> None:
    if "reward" not in record:
        raise RecordError("reward", "missing required field (0, 1, or null for an infrastructure failure)")


_TRAIN_NUMBERS = ("epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s", "elapsed_s")


def _check_train_line(record: dict[str, Any]) -> None:
    if not isinstance(record, dict):
        raise RecordError("", "expected a JSON object")
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise RecordError("step", "missing or not an integer")
    for name in _TRAIN_NUMBERS:
        _check_number(name, record.get(name))
    if record.get("loss") is None and record.get("eval_loss") is None:
        raise RecordError("loss", "a train log line needs loss or eval_loss")


_SCHEMAS: dict[str, Callable[[Any], None]] = {
    "propose": _cat_schema(False).check,
    "validate": _cat_schema(True).check,
    "rollout": RecordSchema("trajectory", TRAJECTORY.fields, extra_checks=TRAJECTORY.extra_checks
                            + (_check_reward_present,)).check,
    "eval": RecordSchema("eval result", EVAL_RESULT.fields, extra_checks=EVAL_RESULT.extra_checks
                         + (_check_reward_present,)).check,
    "train": _check_train_line,
}


def _slim(kind: str, record: dict[str, Any], lineno: int) -> dict[str, Any]:
    """The fields a report uses (a rollout of 12k trajectories is never held whole)."""
    if kind in ("propose", "validate"):
        meta = record.get("meta") or {}
        v = record.get("validation")
        out: dict[str, Any] = {"id": record["id"], "env": record["env"], "line": lineno,
                               "status": meta.get("status"), "episode_reason": meta.get("reason"),
                               "model": meta.get("model")}
        if v is None:
            out.update(stage=0, valid=False, reason=None, check=None, has_validation=False)
        else:
            out.update(stage=funnel_stage(v), valid=v["valid"], reason=None if v["valid"] else v["reason"],
                       check=None if v["valid"] else _failed_check(v), has_validation=True)
        return out
    if kind in ("rollout", "eval"):
        infra = record.get("infra_error")
        models = record.get("models") or {}
        executor = models.get("executor") if isinstance(models, dict) else None
        return {"task_id": record["task_id"], "trial": record["trial"], "reward": record["reward"],
                "env": record["env"], "termination": record.get("termination") or "unknown",
                "infra_kind": (infra.get("kind") or "unknown") if isinstance(infra, dict) else None,
                "split": record.get("split"), "scorer": record.get("scorer"),
                "benchmark_task_id": record.get("benchmark_task_id"),
                "model": executor.get("model") if isinstance(executor, dict) else None}
    return dict(record)


def _failed_check(v: dict[str, Any]) -> str | None:
    if isinstance(v.get("failed_check"), str) and v["failed_check"]:
        return v["failed_check"]
    for c in v.get("checks") or ():
        if isinstance(c, dict) and c.get("ok") is False and isinstance(c.get("check"), str):
            return c["check"]
    return CHECK_OF_REASON.get(v.get("reason"))


def funnel_stage(validation: dict[str, Any] | None) -> int:
    """The furthest funnel stage (an index into :data:`FUNNEL_STAGES`) a validation object shows.

    None (a propose episode that never answered) is 0, "proposed"; a valid task is 3. For a
    rejected one the failed check decides (see the module docstring and :data:`FUNNEL_RULES`).
    Raises :class:`~sca.records.RecordError` when the failed check is unknown or cannot be told.
    """
    if validation is None:
        return 0
    if validation.get("valid") is True:
        return 3
    check = _failed_check(validation)
    reason = validation.get("reason")
    if check is None:
        raise RecordError("validation.failed_check", f"missing, and no failed check or reason tells which check "
                                                     f"rejected the task (reason {reason!r})")
    if check in ("compile", "failure_case_count", "noop_run"):
        return 0
    if check == "solution_run":
        return 1 if reason == "solution_fails" else 0
    if check == "answer_round_trip":
        return 1
    if check == "failure_case_runs":
        return 2
    raise RecordError("validation.failed_check", f"unknown check {check!r} (sca validate's checks: {', '.join(CHECKS)})")


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not valid JSON: {getattr(e, 'msg', e)}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def _sidecar(path: Path) -> tuple[dict[str, Any] | None, str | None, str]:
    """(meta, kind, how) from X.jsonl.meta.json, or from train_summary.json beside a train log."""
    meta_path = Path(str(path) + ".meta.json")
    if meta_path.exists():
        meta = _read_json_object(meta_path)
        stage = meta.get("stage")
        if stage not in KINDS:
            raise InputError(f"{meta_path}: unknown stage {stage!r} (sca report reads the outputs of "
                             f"{', '.join(KINDS)})")
        return meta, stage, "meta"
    summary = path.parent / "train_summary.json"
    if path.name == "train_log.jsonl" and summary.exists():
        meta = _read_json_object(summary)
        if meta.get("stage", "train") != "train":
            raise InputError(f"{summary}: stage {meta.get('stage')!r}, expected train")
        return meta, "train", "train_summary.json"
    return None, None, ""


def _kind_of_record(record: Any) -> str | None:
    """The kind a record's fields say (None: CaT tasks without validation); raises RecordError if unknown."""
    if isinstance(record, dict):
        if {"task_id", "trial", "messages"} <= record.keys():
            return "eval" if {"split", "scorer", "scorer_detail"} & record.keys() else "rollout"
        if "step" in record and ("loss" in record or "eval_loss" in record):
            return "train"
        if {"evaluation_function", "solution", "failure_cases"} <= record.keys():
            meta = record.get("meta")
            if isinstance(meta, dict) and (meta.get("source") == "sca propose" or "status" in meta):
                return "propose"
            return "validate" if "validation" in record else None
    raise RecordError("", "cannot tell what this is: no meta sidecar, and the record is not a CaT task, a "
                          "trajectory, an eval result or a train log line")


def read_source(path: Path, *, explicit: bool = True, kind: str | None = None,
                meta: dict[str, Any] | None = None, detected_by: str = "") -> Source:
    """Read one input file, telling its kind (unless given) and checking every record."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a JSONL file")
    if kind is None:
        meta, kind, detected_by = _sidecar(path)
    src = Source(path=path, kind=kind, detected_by=detected_by, meta=meta, records=[])
    seen: dict[Any, int] = {}
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise InputError(f"{where}: not UTF-8 text (byte {e.start})") from None
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: not valid JSON: {e.msg} (column {e.colno})") from None
            try:
                if src.kind is None:
                    src.kind = _kind_of_record(record)
                    src.detected_by = "fields"
                    if src.kind is None:
                        src.note = "CaT tasks without a validation object: nothing to report (run sca validate)"
                        if explicit:
                            raise InputError(f"{where}: {src.note}")
                        return src
                _SCHEMAS[src.kind](record)
                if src.kind != "train":
                    rid = record["id"]
                    if rid in seen:
                        raise RecordError("id", f"duplicate id {rid!r} (first on line {seen[rid]})")
                    seen[rid] = lineno
            except RecordError as e:
                raise InputError(f"{where}: {e}") from None
            src.records.append(_slim(src.kind, record, lineno))
    if src.kind is None:
        src.note = "empty, and no meta sidecar tells what it is"
    return src


def _locate(output: str, beside: Path) -> Path | None:
    """An output path as a run's meta wrote it: beside the primary output, else as written."""
    p = Path(output)
    for cand in (beside.parent / p.name, p):
        if cand.is_file():
            return cand
    return None


def _files_of(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.glob("*.jsonl") if p.is_file())
    files += sorted(p for p in directory.rglob("train_log.jsonl") if p.is_file() and p.parent != directory)
    return files


def collect(paths: Iterable[str | Path]) -> tuple[list[Source], list[str]]:
    """Every input file (directories expanded), read and checked, with the runs' outputs linked;
    and the notes on what was skipped or missing."""
    notes: list[str] = []
    entries: list[tuple[Path, bool]] = []
    for given in paths:
        p = Path(given)
        if not p.exists():
            raise InputError(f"{given}: no such file or directory")
        if p.is_dir():
            found = _files_of(p)
            if not found:
                notes.append(f"{given}: no *.jsonl file in it")
            entries += [(f, False) for f in found]
        else:
            entries.append((p, True))
    sources: dict[Path, Source] = {}
    for path, explicit in entries:
        key = path.resolve()
        if key not in sources:
            sources[key] = read_source(path, explicit=explicit)
    # a run's other outputs (the rejected tasks of propose and validate) go with it
    for src in list(sources.values()):
        src.group = src.group or str(src.path.resolve())
        if src.detected_by != "meta" or not isinstance(src.meta, dict):
            continue
        outputs = src.meta.get("outputs") or {}
        if not isinstance(outputs, dict):
            continue
        for role, out in outputs.items():
            if not isinstance(out, str) or out == "-":
                continue
            found = _locate(out, src.path)
            if found is not None and found.resolve() == src.path.resolve():
                continue
            if found is None:
                if src.kind in ("propose", "validate"):
                    n = (src.meta.get("counts") or {}).get(role)
                    notes.append(f"{src.path}: the run's {role} output {out} was not found"
                                 + (f" ({n} records)" if n else "") + "; the funnel counts only what was read")
                continue
            key = found.resolve()
            other = sources.get(key)
            if other is None or (other.detected_by != "meta" and other.kind != src.kind):
                other = read_source(found, explicit=True, kind=src.kind, meta=None, detected_by="linked")
                sources[key] = other
            elif other.detected_by == "meta":
                continue  # a file with its own sidecar is its own run
            other.note = ""
            other.linked_from = (role, src)
            other.group = str(src.path.resolve())
        if src.kind in ("propose", "validate") and not outputs.get("rejected"):
            n = (src.meta.get("counts") or {}).get("rejected")
            if n:
                notes.append(f"{src.path}: the run rejected {n} records but kept none (no --rejected); "
                             "the funnel counts only what was read")
    out = list(sources.values())
    base = Path(os.path.commonpath([str(s.path.resolve().parent) for s in out])) if out else None
    for src in out:
        src.base = base
        if src.kind is None:
            notes.append(f"{src.path}: skipped: {src.note}")
        src.model = _model_of(src)
    _name_runs([s for s in out if s.kind in ("rollout", "eval")])
    return out, notes


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _model_of(src: Source) -> str | None:
    """The model a run names: in its meta's settings, else in its records."""
    candidates: list[Any] = []
    m = src.meta or {}
    s = m.get("settings") if isinstance(m.get("settings"), dict) else {}
    if src.kind == "train":
        candidates += [_get(m, "summary", "model"), s.get("model"), s.get("model_name_or_path")]
    candidates += [_get(s, "models", "executor", "model"), _get(s, "executor", "model"), _get(s, "model_info", "model"),
                   _get(s, "model", "model"), s.get("model")]
    candidates += [r.get("model") for r in src.records[:1]]
    for c in candidates:
        if isinstance(c, str) and c:
            return c
    return None


def _short(name: str) -> str:
    """A model path shortened to its last two parts; hub names (org/model) stay whole."""
    if name.startswith(("/", "./", "../", "~")):
        parts = [p for p in Path(name).parts if p not in ("/", ".", "..", "~")]
        return "/".join(parts[-2:]) or name
    return name


def _name_runs(sources: list[Source]) -> None:
    for s in sources:
        s.name = _short(s.model) if s.model else s.path.stem
    counts = Counter(s.name for s in sources)
    for s in sources:
        if counts[s.name] > 1:
            s.name = f"{s.name} ({s.path.stem})"
    counts = Counter(s.name for s in sources)
    for s in sources:
        if counts[s.name] > 1:
            s.name = f"{s.name} [{s.label}]"


def is_paper_model(model: str | None) -> bool:
    """Whether a run is Llama-3.1-8B-Instruct itself (zero-shot): its name, or the last part of its
    path, is Llama-3.1-8B-Instruct (case, separators and a Meta- prefix aside)."""
    row = zero_shot_row(model)
    return row is not None and row[0] == PAPER_MODEL


# =========================================================================== the sections


@dataclass
class Table:
    """A table of the report: shown on the terminal and as Markdown."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""
    terminal: bool = True  # also shown on the terminal (the README shows every table)


@dataclass
class Plot:
    path: Path
    caption: str


@dataclass
class ReasonCount:
    reason: str
    count: int = 0
    checks: Counter = field(default_factory=Counter)
    stage: int = 0
    meaning: str = ""


@dataclass
class Funnel:
    """The validation funnel of one propose or validate run."""

    label: str
    kind: str
    files: list[str]
    model: str | None
    envs: list[str]
    counts: tuple[int, int, int, int]  # proposed, code runs, solution passes, valid (cumulative)
    no_answer: int = 0
    duplicates: int = 0
    reasons: list[ReasonCount] = field(default_factory=list)

    def percent(self, i: int) -> float:
        return 100.0 * self.counts[i] / self.counts[0] if self.counts[0] else 0.0


def _reason_meaning(reason: str) -> str:
    from sca.cat import REASONS

    if reason in REASONS:
        return REASONS[reason]
    if reason == "duplicate":
        return ("valid, but its instruction repeats an earlier task or a benchmark test task: dropped by "
                "sca propose (counted as valid in the funnel)")
    if reason.startswith("no answer"):
        why = reason[len("no answer ("):-1] if reason.endswith(")") else ""
        return _NO_ANSWER.get(why, "the episode ended without an ANSWER") + " (proposed, no code)"
    return ""


def build_funnel(sources: list[Source]) -> Funnel:
    """The funnel of one run's sources (its accepted and rejected outputs)."""
    records = [r for s in sources for r in s.records]
    stages = [0, 0, 0, 0]
    reasons: dict[str, ReasonCount] = {}
    no_answer = duplicates = 0
    for r in records:
        for i in range(r["stage"] + 1):
            stages[i] += 1
        if r["valid"]:
            if r["status"] == "duplicate":
                duplicates += 1
                rc = reasons.setdefault("duplicate", ReasonCount("duplicate", stage=3))
                rc.count += 1
            continue
        if not r["has_validation"]:
            no_answer += 1
            key = f"no answer ({r['episode_reason'] or 'unknown'})"
            rc = reasons.setdefault(key, ReasonCount(key, stage=0))
            rc.count += 1
            rc.checks["-"] += 1
            continue
        rc = reasons.setdefault(r["reason"], ReasonCount(r["reason"]))
        rc.count += 1
        rc.checks[r["check"]] += 1
        rc.stage = max(rc.stage, r["stage"])
    for rc in reasons.values():
        rc.meaning = _reason_meaning(rc.reason)
    primary = sources[0]
    models = sorted({r["model"] for r in records if r.get("model")})
    model = (primary.model if primary.kind == "propose" else None) or (", ".join(models) if models else None)
    return Funnel(
        label=f"{primary.kind} {primary.label}", kind=primary.kind or "", files=[s.label for s in sources],
        model=model, envs=sorted({r["env"] for r in records}), counts=tuple(stages),  # type: ignore[arg-type]
        no_answer=no_answer, duplicates=duplicates,
        reasons=sorted(reasons.values(), key=lambda rc: (-rc.count, rc.reason)),
    )


@dataclass
class RewardStats:
    """The per-task rewards of one rollout (or eval) file."""

    name: str
    file: str
    envs: list[str]
    k: int
    tasks: int  # tasks with at least one valid trial
    trials: int  # valid trials (reward 0 or 1)
    rewarded: int
    excluded: int  # infrastructure failures (reward null)
    infra: dict[str, int]
    empty_tasks: int  # tasks whose every trial was an infrastructure failure
    none: int
    some: int
    all: int
    rates: list[float]  # c/n per task
    ns: list[int]
    terminations: dict[str, int]
    summary: metrics.Summary | None

    @property
    def mean_reward(self) -> float:
        return self.rewarded / self.trials if self.trials else 0.0


def _k_of(src: Source, override: int | None) -> int:
    if override:
        return override
    for key in ("k", "trials"):  # sca rollout's k; sca eval's k, which defaults to its trials
        k = _get(src.meta, "settings", key)
        if isinstance(k, int) and not isinstance(k, bool) and k >= 1:
            return k
    per_task = Counter(r["task_id"] for r in src.records)
    return max(per_task.values(), default=1)


def build_rewards(src: Source, k: int, *, n_boot: int, seed: int) -> RewardStats:
    scored = metrics.task_scores(src.records, k)
    summary = metrics.summarize(src.records, k, n_boot=n_boot, seed=seed) if scored.scores else None
    s = scored.scores
    infra = Counter(r["infra_kind"] or "unknown" for r in src.records if r["reward"] is None)
    return RewardStats(
        name=src.name, file=src.label, envs=sorted({r["env"] for r in src.records}), k=k,
        tasks=len(s), trials=sum(t.n for t in s), rewarded=sum(t.c for t in s), excluded=scored.excluded,
        infra=dict(sorted(infra.items())), empty_tasks=len(scored.empty_tasks),
        none=sum(1 for t in s if t.c == 0), some=sum(1 for t in s if 0 < t.c < t.n),
        all=sum(1 for t in s if t.c == t.n), rates=[t.pass1 for t in s], ns=[t.n for t in s],
        terminations=dict(Counter(r["termination"] for r in src.records).most_common()), summary=summary,
    )


@dataclass
class PassRow:
    """Pass@1 / Pass@k / pass^k of one eval run on one environment (and split)."""

    run: str
    file: str
    model: str | None
    env: str
    split: str | None
    k: int
    summary: metrics.Summary
    paper: tuple[float, float] | None  # the paper's Table 1 (Pass@1, Pass@4) in %, for Llama-3.1-8B-Instruct
    not_comparable: str | None = None  # a run of that model on another benchmark than the paper's: why


def _env_key(env: str) -> tuple[int, str]:
    return (_ENV_ORDER.index(env) if env in _ENV_ORDER else len(_ENV_ORDER), env)


def _by_env(records: list[dict[str, Any]]) -> dict[tuple[str, str | None], list[dict[str, Any]]]:
    out: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault((r["env"], r.get("split")), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: (_env_key(kv[0][0]), kv[0][1] or "")))


def build_pass_rows(src: Source, k: int, *, n_boot: int, seed: int) -> tuple[list[PassRow], list[str]]:
    rows, notes = [], []
    paper = is_paper_model(src.model)
    for (env, split), recs in _by_env(src.records).items():
        try:
            summary = metrics.summarize(recs, k, n_boot=n_boot, seed=seed)
        except ValueError as e:
            notes.append(f"{src.name}, {env}: {e}")
            continue
        why = _not_the_papers_benchmark(src, env, split, recs) if paper else None
        rows.append(PassRow(run=src.name, file=src.label, model=src.model, env=env, split=split, k=k,
                            summary=summary, paper=PAPER_TABLE1.get(env) if paper and why is None else None,
                            not_comparable=why))
        if why:
            notes.append(f"{src.name}, {env}: no paper figure beside it: {why}")
    return rows, notes


def _not_the_papers_benchmark(src: Source, env: str, split: str | None, recs: list[dict[str, Any]]) -> str | None:
    """Why an eval run's results on `env` are not the benchmark of the paper's Table 1 (None if they
    are): from its records (scorer, benchmark ids, trials per task) and its meta's settings."""
    from sca.paper import M3_ENVS, TAU_ENVS, not_comparable

    settings = (src.meta or {}).get("settings") or {}
    if env in TAU_ENVS and any(r.get("scorer") != "tau2" for r in recs):
        return "not scored by tau2's evaluator"
    ids = [r.get("benchmark_task_id") for r in recs]
    official = all(isinstance(i, str) and i.startswith("m3/") for i in ids) and env in M3_ENVS
    per_task = Counter(r["task_id"] for r in recs)
    trials = settings.get("trials") if isinstance(settings.get("trials"), int) else max(per_task.values())
    return not_comparable(env, split=split, official_m3=official,
                          drop_noop_solvable=bool(settings.get("drop_noop_solvable")),
                          limit=settings.get("limit") if isinstance(settings.get("limit"), int) else None,
                          trials=trials)


@dataclass
class TrainCurve:
    name: str
    file: str
    model: str | None
    lines: list[dict[str, Any]]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pts = [(ln["step"], ln[key]) for ln in self.lines if isinstance(ln.get(key), (int, float))]
        pts.sort(key=lambda p: p[0])
        return [p[0] for p in pts], [float(p[1]) for p in pts]


@dataclass
class CompareRow:
    env: str
    split: str | None
    metric: str
    comparison: metrics.Comparison | None
    note: str = ""


# =========================================================================== formatting


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(ci: Sequence[float]) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _n_pct(n: int, total: int) -> str:
    return f"{n} ({100 * n / total:.1f}%)" if total else str(n)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_markdown(t: Table) -> str:
    lines = [f"**{t.title}**", "", "| " + " | ".join(_md_cell(c) for c in t.columns) + " |",
             "|" + "|".join("---" for _ in t.columns) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    if t.note:
        lines += ["", t.note]
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "run"


# =========================================================================== plots


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png")


def _legend_name(name: str, width: int = 40) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def plot_funnel(funnels: list[Funnel], path: Path) -> None:
    fig, axes = _figure(8, 4.5)
    ax = axes[0][0]
    x = list(range(len(FUNNEL_STAGES)))
    width = 0.8 / max(1, len(funnels))
    for i, f in enumerate(funnels):
        xs = [xi - 0.4 + width * (i + 0.5) for xi in x]
        ys = [f.percent(j) for j in x]
        bars = ax.bar(xs, ys, width, label=_legend_name(f"{f.label} (n={f.counts[0]})", 60))
        for b, n in zip(bars, f.counts):
            ax.annotate(str(n), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                        fontsize=8)
    label, paper = PAPER_FUNNEL
    ax.plot(x, paper, "k--o", label=label)
    ax.set_xticks(x, [s.replace(" (valid)", "\n(valid)") for s in FUNNEL_STAGES])
    ax.set_ylabel("% of proposed tasks")
    ax.set_ylim(0, 110)
    ax.set_title("Validation funnel")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_rewards(stats: RewardStats, path: Path) -> None:
    fig, axes = _figure(7, 4)
    ax = axes[0][0]
    some = Counter(round(r, 6) for r in stats.rates if 0 < r < 1)
    xs = sorted(some)
    width = min(0.8 * min((b - a for a, b in zip([0.0] + xs, xs + [1.0]))), 0.05)
    if len(some) <= 19:  # one bar per success rate (every task has the same few trials)
        ax.bar(xs, [some[v] for v in xs], width=width, color="tab:blue")
    else:
        width = 0.05
        ax.hist([r for r in stats.rates if 0 < r < 1], bins=18, range=(0.05, 0.95), color="tab:blue")
    ax.bar([0.0], [stats.none], width=width, color="tab:red")
    ax.bar([1.0], [stats.all], width=width, color="tab:green")
    ax.set_xlim(-0.06, 1.06)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("success rate of a task over its trials (c / n)")
    ax.set_ylabel("tasks")
    s = stats.summary
    head = f"{_legend_name(stats.name)}: Pass@1 {_pct(s.pass1)}, Pass@{stats.k} {_pct(s.pass_k)}" if s else stats.name
    ax.set_title(f"{head}\nsolved by none {stats.none} (red), some {stats.some} (blue), all {stats.all} (green)",
                 fontsize=10)
    _save(fig, path)


def plot_pass(rows: list[PassRow], path: Path) -> None:
    runs = list(dict.fromkeys(r.run for r in rows))
    groups = list(dict.fromkeys(r.env + (f" ({r.split})" if r.split else "") for r in rows))
    ks = sorted({r.k for r in rows})
    k_label = f"k={ks[0]}" if len(ks) == 1 else "k per run"
    panels = (("pass1", "Pass@1"), ("pass_k", f"Pass@k ({k_label})"), ("pass_hat_k", f"pass^k ({k_label})"))
    fig, axes = _figure(5 * len(panels), 4.5, ncols=len(panels))
    width = 0.8 / max(1, len(runs))
    by = {(r.run, r.env + (f" ({r.split})" if r.split else "")): r for r in rows}
    paper_drawn = False
    for p, (metric, title) in enumerate(panels):
        ax = axes[0][p]
        for i, run in enumerate(runs):
            xs, ys, lo, hi = [], [], [], []
            for g, group in enumerate(groups):
                row = by.get((run, group))
                if row is None:
                    continue
                mean = getattr(row.summary, metric)
                ci = getattr(row.summary, f"{metric}_ci")
                xs.append(g - 0.4 + width * (i + 0.5))
                ys.append(100 * mean)
                lo.append(max(0.0, 100 * (mean - ci[0])))
                hi.append(max(0.0, 100 * (ci[1] - mean)))
                if row.paper and (metric == "pass1" or metric == "pass_k" and row.k == 4):
                    ref = row.paper[0] if metric == "pass1" else row.paper[1]
                    ax.plot([xs[-1]], [ref], "kD", markersize=6, markerfacecolor="none",
                            label=None if paper_drawn else "paper Table 1 (Pass@1, Pass@4)")
                    paper_drawn = True
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=_legend_name(run) if p == 0 else None)
        ax.set_xticks(range(len(groups)), groups, rotation=15)
        ax.set_ylim(0, 105)
        ax.set_ylabel("%")
        ax.set_title(title)
    handles, labels = [], []
    for ax in axes[0]:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    axes[0][0].legend(handles, labels, fontsize=8)
    _save(fig, path)


def plot_training(curves: list[TrainCurve], path: Path) -> None:
    fig, axes = _figure(11, 7, ncols=2, nrows=2)
    panels = ((axes[0][0], ("loss", "eval_loss"), "loss"), (axes[0][1], ("learning_rate",), "learning rate"),
              (axes[1][0], ("grad_norm",), "grad norm"), (axes[1][1], ("tokens_per_s",), "tokens/s"))
    for ax, keys, title in panels:
        for c in curves:
            for key in keys:
                xs, ys = c.series(key)
                if xs:
                    style = "--o" if key == "eval_loss" else "-"
                    ax.plot(xs, ys, style, markersize=3,
                            label=_legend_name(c.name) + (" (eval)" if key == "eval_loss" else ""))
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    _save(fig, path)


# =========================================================================== the report


@dataclass
class Report:
    """What :func:`report` found and wrote: the numbers, the tables, the plots, the page."""

    out_dir: Path
    readme: Path
    sources: list[Source]
    funnels: list[Funnel] = field(default_factory=list)
    rewards: list[RewardStats] = field(default_factory=list)
    pass_rows: list[PassRow] = field(default_factory=list)
    curves: list[TrainCurve] = field(default_factory=list)
    comparisons: list[CompareRow] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: list[tuple[str, list[Any]]] = field(default_factory=list)  # (heading, [Table | Plot | str])

    @property
    def verdicts(self) -> list[str]:
        return [c.comparison.verdict for c in self.comparisons if c.comparison is not None]


def _funnel_tables(funnels: list[Funnel]) -> list[Table]:
    label, paper = PAPER_FUNNEL
    rows = []
    for f in funnels:
        rows.append([f.label, f.model or "-", ", ".join(f.envs) or "-"]
                    + [_n_pct(f.counts[i], f.counts[0]) for i in range(len(FUNNEL_STAGES))])
    rows.append([label, "Llama-3.1-8B-Instruct", "retail"] + [f"{p:.1f}%" for p in paper])
    tables = [Table("Validation funnel", ["run", "model", "env"] + list(FUNNEL_STAGES), rows,
                    note="Counts, and in brackets % of proposed; each stage is a subset of the one before.")]
    for f in funnels:
        reason_rows = [[rc.reason, str(rc.count), _pct(rc.count / f.counts[0]) if f.counts[0] else "-",
                        ", ".join(f"{c} {n}" for c, n in rc.checks.most_common()) or "-",
                        FUNNEL_STAGES[rc.stage], rc.meaning] for rc in f.reasons]
        if not reason_rows:
            reason_rows = [["(none)", "0", "-", "-", "-", "every task is valid"]]
        tables.append(Table(f"Rejection reasons: {f.label}",
                            ["reason", "count", "% of proposed", "failed check", "furthest stage", "meaning"],
                            reason_rows))
    return tables


def _rules_table() -> Table:
    return Table("Funnel stage of a validation record", ["failed check", "reasons", "furthest stage reached"],
                 [[check, reasons or "-", FUNNEL_STAGES[stage]] for check, reasons, stage in FUNNEL_RULES],
                 terminal=False)


FUNNEL_TEXT = (
    "Every record of a propose or validate run is one proposed task (for sca propose, one challenger episode, "
    "placed by the validation of its last answer). A record reaches **code runs** when every code string "
    "compiled and the solution, and the evaluate() after it, ran without error; **solution passes** when "
    "evaluate() also returned True for the solution, and for its answer as an executor would type it; "
    "**failure cases fail** when the task is valid. The failed check is `validation.failed_check` (else the "
    "first `checks` entry with `ok` false, else the check of its `reason`); a task rejected before its "
    "solution ran has not shown that its code runs. A propose episode without any `validation` never gave an "
    "ANSWER: it is proposed but has no code. Tasks sca propose dropped as duplicates passed every check: valid."
)


def _reward_table(stats: list[RewardStats]) -> Table:
    rows = []
    for s in stats:
        sm = s.summary
        rows.append([
            s.name, s.file, ", ".join(s.envs), str(s.k), str(s.tasks), str(s.trials),
            f"{s.excluded}" + (f" ({', '.join(f'{k} {n}' for k, n in s.infra.items())})" if s.infra else ""),
            f"{s.mean_reward:.3f}",
            f"{_pct(sm.pass1)} {_ci(sm.pass1_ci)}" if sm else "-",
            f"{_pct(sm.pass_k)} {_ci(sm.pass_k_ci)}" if sm else "-",
            f"{_pct(sm.pass_hat_k)} {_ci(sm.pass_hat_k_ci)}" if sm else "-",
            _n_pct(s.none, s.tasks), _n_pct(s.some, s.tasks), _n_pct(s.all, s.tasks),
            ", ".join(f"{t} {n}" for t, n in s.terminations.items()),
        ])
    return Table("Rewards per task", ["run", "file", "env", "k", "tasks", "valid trials", "infra failures (excluded)",
                                      "mean reward", "Pass@1 [95% CI]", "Pass@k [95% CI]", "pass^k [95% CI]",
                                      "solved by none", "some", "all", "terminations"], rows,
                 note="Tasks solved by some but not all trials are the ones that can teach something. Trials with "
                      "reward null (infrastructure failures) are excluded from every figure; tasks with no valid "
                      "trial are not scored. Intervals: 95% percentile bootstrap over tasks (sca.metrics.summarize).")


def _pass_table(rows: list[PassRow]) -> Table:
    out = []
    for r in rows:
        s = r.summary
        out.append([r.run, r.env, r.split or "-", str(r.k), str(s.tasks), str(s.trials), str(s.excluded),
                    f"{_pct(s.pass1)} {_ci(s.pass1_ci)}", f"{_pct(s.pass_k)} {_ci(s.pass_k_ci)}",
                    f"{_pct(s.pass_hat_k)} {_ci(s.pass_hat_k_ci)}",
                    f"{r.paper[0]:.1f}% / {r.paper[1]:.1f}%" if r.paper else "-"])
    return Table("Pass@k per environment", ["run", "env", "split", "k", "tasks", "valid trials", "excluded",
                                            "Pass@1 [95% CI]", "Pass@k [95% CI]", "pass^k [95% CI]",
                                            "paper Pass@1 / Pass@4"], out,
                 note="Means over tasks, 95% percentile bootstrap intervals over tasks (sca.metrics.summarize); "
                      "infrastructure failures excluded. The paper's Table 1 (Llama-3.1-8B-Instruct zero-shot) is "
                      "shown beside runs of that model itself.")


def _train_table(curves: list[TrainCurve]) -> Table:
    rows = []
    for c in curves:
        _, loss = c.series("loss")
        _, ev = c.series("eval_loss")
        _, lr = c.series("learning_rate")
        _, gn = c.series("grad_norm")
        _, tps = c.series("tokens_per_s")
        steps = [ln["step"] for ln in c.lines]
        elapsed = [ln["elapsed_s"] for ln in c.lines if isinstance(ln.get("elapsed_s"), (int, float))]

        def num(v: float | None, fmt: str = ".4g") -> str:
            return "-" if v is None else format(v, fmt)

        rows.append([c.name, c.model or "-", str(max(steps, default=0)), num(loss[0] if loss else None),
                     num(loss[-1] if loss else None), num(min(loss) if loss else None),
                     num(ev[-1] if ev else None), num(lr[-1] if lr else None),
                     num(sum(gn) / len(gn) if gn else None), num(sum(tps) / len(tps) if tps else None, ".1f"),
                     num(max(elapsed) if elapsed else None, ".1f")])
    return Table("Training", ["checkpoint", "model", "steps", "first loss", "final loss", "min loss",
                              "final eval loss", "final learning rate", "mean grad norm", "mean tokens/s",
                              "elapsed s"], rows)


def _compare_table(rows: list[CompareRow], name_a: str, name_b: str) -> Table:
    out = []
    for r in rows:
        c = r.comparison
        env = r.env + (f" ({r.split})" if r.split else "")
        if c is None:
            out.append([env, r.metric, "-", "-", "-", "-", "-", "-", r.note])
            continue
        label = "Pass@1" if c.metric == "pass1" else f"Pass@{c.k}"
        out.append([env, label, str(c.tasks), _pct(c.score_a), _pct(c.score_b), f"{100 * c.mean_diff:+.1f}",
                    f"[{100 * c.ci[0]:+.1f}, {100 * c.ci[1]:+.1f}]",
                    f"{c.p_value:.3g}" + ("" if c.p_exact else " (MC)"), _short_verdict(c)])
    return Table(f"Comparison: B = {name_b} against A = {name_a}",
                 ["env", "metric", "paired tasks", "A", "B", "B - A (points)", "95% CI", "p", "verdict"], out,
                 note="Paired by task (sca.metrics.compare): tasks scored in only one run are left out; the interval "
                      "is a paired bootstrap over tasks, p a two-sided paired sign-flip permutation test.")


def _short_verdict(c: metrics.Comparison) -> str:
    if c.significant:
        return "larger than the noise"
    return "within the noise" if c.p_value >= 1 - c.confidence else "borderline"


def _verdict_line(r: CompareRow) -> str:
    env = r.env + (f" ({r.split})" if r.split else "")
    return f"{env}: {r.comparison.verdict}" if r.comparison is not None else f"{env}, {r.metric}: {r.note}"


def _compare(a: Source, b: Source, k: int, *, n_boot: int, seed: int) -> list[CompareRow]:
    ea, eb = _by_env(a.records), _by_env(b.records)
    rows: list[CompareRow] = []
    for key in sorted(ea.keys() | eb.keys(), key=lambda kv: (_env_key(kv[0]), kv[1] or "")):
        env, split = key
        for metric in ("pass1", "pass_k") if k > 1 else ("pass1",):  # with k = 1, Pass@k is Pass@1
            if key not in ea or key not in eb:
                rows.append(CompareRow(env, split, metric, None, f"only in {a.name if key in ea else b.name}"))
                continue
            try:
                c = metrics.compare(ea[key], eb[key], k, metric, n_boot=n_boot, seed=seed, name_a=a.name,
                                    name_b=b.name)
            except ValueError as e:
                rows.append(CompareRow(env, split, metric, None, str(e)))
                continue
            rows.append(CompareRow(env, split, metric, c))
    return rows


def report(
    paths: Sequence[str | Path],
    out_dir: str | Path = "report",
    *,
    compare: tuple[str | Path, str | Path] | None = None,
    k: int | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    plots: bool = True,
) -> Report:
    """Read the inputs, compute every section, write ``out_dir/README.md`` and its PNG plots.

    `paths`: files and directories (see the module docstring for how each file's kind is told).
    `compare`: two eval (or rollout) files, B compared against A, paired by task, per environment.
    `k`: the k of Pass@k and pass^k (default: the run's meta ``settings.k``, else its
    ``settings.trials``, else the most trials any task has). `n_boot`, `seed`: the bootstrap of every interval. Raises
    :class:`~sca.records.io.InputError` (one line) for missing, unknown or malformed input.
    """
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise InputError(f"k must be a positive integer, got {k!r}")
    inputs = list(paths) + ([p for p in compare if p not in paths] if compare else [])
    if not inputs:
        raise InputError("no input: give files or directories of sca outputs")
    if compare:
        for p in compare:
            if Path(p).is_dir():
                raise InputError(f"{p}: --compare takes two results files, not a directory")
    sources, notes = collect(inputs)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot make the report directory: {e.strerror}") from None
    rep = Report(out_dir=out, readme=out / "README.md", sources=sources, notes=notes)
    draw = plots
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            draw = False
            rep.notes.append("matplotlib is not installed: no plots written (pip install matplotlib)")
    used_names: set[str] = set()

    def plot_path(stem: str) -> Path:
        name, i = stem, 2
        while name in used_names:
            name, i = f"{stem}_{i}", i + 1
        used_names.add(name)
        return out / f"{name}.png"

    def add_plot(section: list[Any], stem: str, caption: str, fn: Callable[[Path], None]) -> None:
        if not draw:
            return
        path = plot_path(stem)
        fn(path)
        p = Plot(path, caption)
        rep.plots.append(p)
        section.append(p)

    def add_table(section: list[Any], t: Table) -> None:
        rep.tables.append(t)
        section.append(t)

    # -- inputs
    section: list[Any] = []
    add_table(section, Table("Inputs", ["file", "kind", "told by", "records", "model / run"],
                             [[s.label, s.kind or "skipped", s.told_by, str(len(s.records)),
                               s.name or s.model or "-"] for s in sources]))
    rep.sections.append(("Inputs", section))

    # -- the funnel: one per run of propose / validate
    groups: dict[str, list[Source]] = {}
    for s in sources:
        if s.kind in ("propose", "validate"):
            groups.setdefault(s.group, []).append(s)
    for members in groups.values():
        members.sort(key=lambda s: (s.detected_by != "meta", s.label))
        rep.funnels.append(build_funnel(members))
    if rep.funnels:
        section = [FUNNEL_TEXT]
        add_table(section, _rules_table())
        for t in _funnel_tables(rep.funnels):
            add_table(section, t)
        add_plot(section, "funnel", "Validation funnel: % of proposed tasks reaching each stage (count on each bar); "
                 "dashed: the paper's Llama-3.1-8B retail figures (47.7% / 9.5% / 5.2%).",
                 lambda p: plot_funnel(rep.funnels, p))
        rep.sections.append(("Validation funnel", section))

    # -- rewards per task of rollouts
    rollouts = [s for s in sources if s.kind == "rollout"]
    if rollouts:
        section = []
        for s in rollouts:
            rep.rewards.append(build_rewards(s, _k_of(s, k), n_boot=n_boot, seed=seed))
        add_table(section, _reward_table(rep.rewards))
        for s, stats in zip(rollouts, rep.rewards):
            if stats.tasks:
                add_plot(section, f"rewards_{_slug(s.path.stem)}",
                         f"Per-task success rates of {stats.name} ({stats.file}): {stats.tasks} tasks, "
                         f"{stats.trials} valid trials; red none, blue some, green all trials solved.",
                         lambda p, st=stats: plot_rewards(st, p))
            else:
                rep.notes.append(f"{stats.file}: no task has a valid trial: no reward plot")
        rep.sections.append(("Rewards per task", section))

    # -- Pass@k across eval runs
    evals = [s for s in sources if s.kind == "eval"]
    if evals:
        section = []
        for s in evals:
            rows, more = build_pass_rows(s, _k_of(s, k), n_boot=n_boot, seed=seed)
            rep.pass_rows += rows
            rep.notes += more
        add_table(section, _pass_table(rep.pass_rows))
        if rep.pass_rows:
            add_plot(section, "pass_at_k", "Pass@1, Pass@k and pass^k per environment and run, with 95% bootstrap "
                     "intervals; diamonds: the paper's Table 1 for Llama-3.1-8B-Instruct zero-shot.",
                     lambda p: plot_pass(rep.pass_rows, p))
        rep.sections.append(("Pass@k per environment", section))

    # -- training curves
    logs = [s for s in sources if s.kind == "train"]
    if logs:
        section = []
        for s in logs:
            rep.curves.append(TrainCurve(name=s.path.parent.name or s.path.stem, file=s.label, model=s.model,
                                         lines=s.records))
        add_table(section, _train_table(rep.curves))
        add_plot(section, "training", "Training curves against the step: loss (dashed: eval loss), learning rate, "
                 "grad norm, tokens/s.", lambda p: plot_training(rep.curves, p))
        rep.sections.append(("Training", section))

    # -- paired comparison
    if compare:
        by_path = {s.path.resolve(): s for s in sources}
        pair = [by_path.get(Path(p).resolve()) for p in compare]
        for given, s in zip(compare, pair):
            if s is None or s.kind not in ("eval", "rollout"):
                what = s.kind if s is not None and s.kind else "not a results file"
                raise InputError(f"{given}: --compare takes two eval (or rollout) results files, this is {what}")
        a, b = pair
        kk = k or min(_k_of(a, None), _k_of(b, None))
        rep.comparisons = _compare(a, b, kk, n_boot=n_boot, seed=seed)
        section = []
        add_table(section, _compare_table(rep.comparisons, a.name, b.name))
        section += [f"* {_verdict_line(r)}" for r in rep.comparisons]
        rep.sections.append(("Comparison", section))

    if rep.notes:
        rep.sections.append(("Notes", [f"* {n}" for n in rep.notes]))
    _write_readme(rep, inputs)
    return rep


def _write_readme(rep: Report, inputs: Sequence[Any]) -> None:
    sources = ", ".join(f"`{i}`" for i in inputs)
    parts = ["# sca report", "",
             f"Made by `sca report` from {sources}: {len(rep.tables)} tables, {len(rep.plots)} plots.", ""]
    for heading, items in rep.sections:
        parts += [f"## {heading}", ""]
        for item in items:
            if isinstance(item, Table):
                parts += [table_markdown(item), ""]
            elif isinstance(item, Plot):
                name = item.path.name
                parts += [f"![{item.caption}]({name})", "", f"*{item.caption}*", ""]
            else:
                parts += [str(item), ""]
    rep.readme.write_text("\n".join(parts).rstrip() + "\n", encoding="utf-8")
