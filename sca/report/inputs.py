"""The inputs of a report: finding the files, telling what each one is, checking its records.

:func:`collect` reads any mix of files and directories (a directory: every ``*.jsonl`` in it,
and every ``train_log.jsonl`` below it, in checkpoint directories) into one :class:`Source`
per file, holding only the fields a report uses (a rollout of 12k trajectories is never held
whole).

What a file is. Its sidecar ``X.jsonl.meta.json`` names the stage that wrote it (``stage``:
propose, validate, rollout, eval; a sidecar ``train`` is a train log). A ``train_log.jsonl``
with ``train_summary.json`` beside it is a train log. Without either, the first record
decides: ``task_id``, ``trial`` and ``messages`` make a trajectory (eval results when it also
has ``split``, ``scorer`` or ``scorer_detail``, else rollout); ``step`` with ``loss`` or
``eval_loss`` a train log line; ``evaluation_function``, ``solution`` and ``failure_cases`` a
CaT task: ``sca propose`` output when its ``meta`` has ``source: "sca propose"`` or a
``status``, validate output when it has ``validation``. Every record is then checked against
its kind's schema (:mod:`sca.records.schema`: ``CAT_TASK`` with its validation, ``TRAJECTORY``
and ``EVAL_RESULT`` with their reward, ``TRAIN_LOG_LINE``). A line that is not JSON, a record
that breaks its schema, a sidecar that is not JSON or names an unknown stage, records of no
known kind: :class:`~sca.records.io.InputError`, one line naming the file (and the line). CaT tasks without ``validation`` (not yet validated) and empty files
whose kind cannot be told have nothing to report: named on the command line they are an
error, met in a directory they are skipped with a note.

A run's outputs belong together: ``sca propose`` and ``sca validate`` write the sidecar for
their accepted output only, listing every output under ``outputs``; the rejected output named
there (looked for beside the accepted one, then as written) is read with it, even when not
given, so that the funnel covers the whole run.

A validation object must say which check of :data:`sca.cat.CHECKS` rejected its task
(:func:`failed_check`): the funnel places the task by it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sca.cat import CHECK_OF_REASON, CHECKS
from sca.records import (
    CAT_TASK,
    EVAL_RESULT,
    TRAJECTORY,
    Field,
    RecordError,
    RecordSchema,
)
from sca.records.io import InputError
from sca.records.schema import TRAIN_LOG_LINE, check_reward_present, check_validation

#: the kinds of input a report reads
KINDS = ("propose", "validate", "rollout", "eval", "train")


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

    def setting(self, key: str) -> Any:
        """One of the run's settings, as its meta records them (None when it has none)."""
        return _get(self.meta, "settings", key)


# =========================================================================== the records' schemas


def failed_check(validation: dict[str, Any]) -> str:
    """The check of :data:`sca.cat.CHECKS` that rejected a task: its ``failed_check``, else the first
    entry of ``checks`` with ``ok`` false, else the check its ``reason`` belongs to.
    Raises :class:`~sca.records.RecordError` when none tells, or the check is not one of sca validate's.
    """
    check = _told_check(validation)
    if check is None:
        raise RecordError("validation.failed_check", f"missing, and no failed check or reason tells which check "
                                                     f"rejected the task (reason {validation.get('reason')!r})")
    if check not in CHECKS:
        raise RecordError("validation.failed_check",
                          f"unknown check {check!r} (sca validate's checks: {', '.join(CHECKS)})")
    return check


def _told_check(v: dict[str, Any]) -> str | None:
    if isinstance(v.get("failed_check"), str) and v["failed_check"]:
        return v["failed_check"]
    for c in v.get("checks") or ():
        if isinstance(c, dict) and c.get("ok") is False and isinstance(c.get("check"), str):
            return c["check"]
    return CHECK_OF_REASON.get(v.get("reason"))


def _check_validation(record: dict[str, Any]) -> None:
    """The validation object's shape (the records' own check), and that the funnel can place a rejected
    task: that it names the check that failed."""
    check_validation(record)
    v = record.get("validation")
    if v is not None and not v["valid"]:
        failed_check(v)  # raises when the funnel could not place the record


def _cat_schema(validation_required: bool) -> RecordSchema:
    # CAT_TASK's fields, not its check that the environment is installed: a report reads the
    # records of any run, also of an environment this machine lacks
    return RecordSchema(name=CAT_TASK.name,
                        fields=CAT_TASK.fields + (Field("validation", dict, required=validation_required),),
                        extra_checks=(_check_validation,))


#: the check of each kind's records; a results file's trajectories must say their reward (a report
#: cannot tell an unscored trial from a failed one). Train log lines are checked one by one: a step
#: may repeat (TRAIN_LOG_LINE), so their ids are not checked below
_SCHEMAS: dict[str, Callable[[Any], None]] = {
    "propose": _cat_schema(False).check,
    "validate": _cat_schema(True).check,
    "rollout": RecordSchema(TRAJECTORY.name, TRAJECTORY.fields, extra_checks=TRAJECTORY.extra_checks
                            + (check_reward_present,)).check,
    "eval": RecordSchema(EVAL_RESULT.name, EVAL_RESULT.fields, extra_checks=EVAL_RESULT.extra_checks
                         + (check_reward_present,)).check,
    "train": TRAIN_LOG_LINE.check,
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
            out.update(valid=False, reason=None, check=None, has_validation=False)
        else:
            out.update(valid=v["valid"], reason=None if v["valid"] else v["reason"],
                       check=None if v["valid"] else failed_check(v), has_validation=True)
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


# =========================================================================== reading one file


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


# =========================================================================== every file, and the runs


def given(paths: Sequence[str | Path], compare: tuple[str | Path, str | Path] | None) -> list[str | Path]:
    """The inputs named: `paths`, then the files of `compare` not among them."""
    inputs = list(paths) + ([p for p in compare if p not in paths] if compare else [])
    if not inputs:
        raise InputError("no input: give files or directories of sca outputs")
    if compare:
        for p in compare:
            if Path(p).is_dir():
                raise InputError(f"{p}: --compare takes two results files, not a directory")
    return inputs


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
    for name in paths:
        p = Path(name)
        if not p.exists():
            raise InputError(f"{name}: no such file or directory")
        if p.is_dir():
            found = _files_of(p)
            if not found:
                notes.append(f"{name}: no *.jsonl file in it")
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


def compared(sources: list[Source], compare: tuple[str | Path, str | Path]) -> tuple[Source, Source]:
    """The two results files of ``--compare`` (A, B) among the sources read."""
    by_path = {s.path.resolve(): s for s in sources}
    pair = [by_path.get(Path(p).resolve()) for p in compare]
    for name, s in zip(compare, pair):
        if s is None or s.kind not in ("eval", "rollout"):
            what = s.kind if s is not None and s.kind else "not a results file"
            raise InputError(f"{name}: --compare takes two eval (or rollout) results files, this is {what}")
    a, b = pair
    return a, b  # type: ignore[return-value]


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
    """Each results run named by its model (else its file), made unique by its file, then its path."""
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
