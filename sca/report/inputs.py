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
``status``, validate output when it has ``validation``; ``kind: "failed_episode"`` a failed
propose episode (propose output too: sca propose's ``--rejected`` file holds them beside its
duplicates; before issue 18 they were task records with empty parts, which still read). Every
record is then checked against its kind's schema (:mod:`sca.records.schema`: ``CAT_TASK`` with
its validation, ``FAILED_EPISODE``, ``TRAJECTORY``
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
(:func:`failed_check`): the funnel places the task by it. That holds for CaT tasks; a task of
another format (its ``format``: "eval-only", "instruction-only"; absent means "cat") has only
the fields of its format and the checks that fit it, so its rejection is not placed in the CaT
funnel (only proposed and valid are counted for it).

The verifier audit. The output of ``sca audit TASKS -o OUT`` (sidecar stage ``audit``, else
task records with an ``audit`` object) is kind ``audit``: each task's ``audit`` is checked
(``mutants``, ``accepted``, ``lax``: true, false, or null for a task without a solution). The
hand-label rates of ``sca audit --labels`` (a JSON object with ``by_format``) are kind
``labels``: read when named, and in a directory (or its ``<format>/`` subdirectories) as
``rates.json`` or ``*.rates.json``.
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
from sca.records.schema import (
    FAILED_EPISODE,
    FAILED_EPISODE_KIND,
    TRAIN_LOG_LINE,
    check_reward_present,
    check_validation,
)
from sca.task_formats import TASK_FORMATS, task_format

#: the kinds of input a report reads ("labels": the hand-label rates of sca audit --labels, a JSON file)
KINDS = ("propose", "validate", "rollout", "eval", "train", "audit", "labels")

#: the metrics of a format's hand-label rates, each [estimate, low, high] (or null: no case to count)
LABEL_RATES = ("false_positive_rate", "false_negative_rate", "precision", "recall")
LABEL_COUNTS = ("n", "tp", "fp", "tn", "fn")


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
    training: Training | None = None  # eval results: what the evaluated model was trained on (trained_on)
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


@dataclass
class Training:
    """What an evaluated model was trained on, as far as the files tell (:func:`trained_on`)."""

    format: str | None  # a task format, "zero-shot" (not trained by sca), or None (cannot tell)
    told_by: str  # how the format was told
    checkpoint: Path | None = None  # the checkpoint directory evaluated, with its train_summary.json
    base_model: str | None = None  # the model training started from (its train_summary.json)
    algo: str | None = None


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
    CaT task: that it names the check that failed (another format's checks are its own)."""
    check_validation(record)
    v = record.get("validation")
    if v is not None and not v["valid"] and task_format(record) == "cat":
        failed_check(v)  # raises when the funnel could not place the record


def check_audit(record: dict[str, Any]) -> None:
    """The ``audit`` object sca audit adds: the mutants run, the accepted ones in words, and lax
    (null for a task without a solution, which has no mutant)."""
    a = record["audit"]
    n = a.get("mutants")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise RecordError("audit.mutants", f"expected a count (an integer >= 0), got {json.dumps(n)}")
    accepted = a.get("accepted")
    if not isinstance(accepted, list) or not all(isinstance(x, str) for x in accepted):
        raise RecordError("audit.accepted", "expected a list of strings (each accepted mutant's change)")
    if "lax" not in a or a["lax"] not in (True, False, None):
        raise RecordError("audit.lax", f"expected true, false or null, got {json.dumps(a.get('lax'))}")
    if len(accepted) > n:
        raise RecordError("audit.accepted", f"{len(accepted)} accepted of {n} mutants")


def _task_schema(kind: str) -> RecordSchema:
    # CAT_TASK's fields (the parts of each record's format), not its check that the environment is
    # installed: a report reads the records of any run, also of an environment this machine lacks
    fields = CAT_TASK.fields + (Field("validation", dict, required=kind == "validate"),)
    checks: tuple[Callable[[dict[str, Any]], None], ...] = (_check_validation,)
    if kind == "audit":
        fields += (Field("audit", dict),)
        checks += (check_audit,)
    return RecordSchema(name=CAT_TASK.name, fields=fields, extra_checks=checks)


def is_failed_episode(record: Any) -> bool:
    """A failed propose episode's own record (``kind`` failed_episode), not a task."""
    return isinstance(record, dict) and record.get("kind") == FAILED_EPISODE_KIND


def _check_propose(record: Any) -> None:
    """sca propose's records: tasks (valid, or dropped as duplicates), and failed episodes, each of its
    own kind; before issue 18 a failed episode was a task record with empty parts, and still reads as one."""
    if is_failed_episode(record):
        FAILED_EPISODE.check(record)
        _check_validation(record)
    else:
        _PROPOSE_TASK.check(record)


_PROPOSE_TASK = _task_schema("propose")

#: the check of each kind's records; a results file's trajectories must say their reward (a report
#: cannot tell an unscored trial from a failed one). Train log lines are checked one by one: a step
#: may repeat (TRAIN_LOG_LINE), so their ids are not checked below
_SCHEMAS: dict[str, Callable[[Any], None]] = {
    "propose": _check_propose,
    "validate": _task_schema("validate").check,
    "audit": _task_schema("audit").check,
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
        if is_failed_episode(record):  # its status and reason are its own, not its meta's
            meta = {**meta, "status": "failed", "reason": record["reason"]}
        v = record.get("validation")
        fmt = task_format(record)
        checked = v.get("check_set") if isinstance(v, dict) else None
        out: dict[str, Any] = {"id": record["id"], "env": record["env"], "line": lineno, "format": fmt,
                               # Figure 4's "verification only": cat tasks held to no failure case check
                               "verification_only": fmt == "cat" and isinstance(checked, list)
                               and "failure_case_runs" not in checked,
                               "status": meta.get("status"), "episode_reason": meta.get("reason"),
                               "model": meta.get("model")}
        if v is None:
            out.update(valid=False, reason=None, check=None, has_validation=False)
        else:
            rejected_by = None if v["valid"] else failed_check(v) if fmt == "cat" else _told_check(v)
            out.update(valid=v["valid"], reason=None if v["valid"] else v["reason"], check=rejected_by,
                       has_validation=True)
        return out
    if kind == "audit":
        a = record["audit"]
        return {"id": record["id"], "env": record["env"], "line": lineno, "format": task_format(record),
                "mutants": a["mutants"], "accepted": len(a["accepted"]), "lax": a["lax"],
                "skipped": a.get("skipped")}
    if kind in ("rollout", "eval"):
        infra = record.get("infra_error")
        models = record.get("models") or {}
        executor = models.get("executor") if isinstance(models, dict) else None
        return {"task_id": record["task_id"], "trial": record["trial"], "reward": record["reward"],
                "env": record["env"], "termination": record.get("termination") or "unknown",
                "infra_kind": (infra.get("kind") or "unknown") if isinstance(infra, dict) else None,
                "split": record.get("split"), "scorer": record.get("scorer"),
                "benchmark_task_id": record.get("benchmark_task_id"),
                "model": executor.get("model") if isinstance(executor, dict) else None,
                "format": task_format(record), "reward_source": record.get("reward_source") or "evaluate"}
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
        if is_failed_episode(record):
            return "propose"
        if {"task_id", "trial", "messages"} <= record.keys():
            # a rollout scored by a judge has a scorer_detail too (the judge's replies); only a
            # benchmark's results have a split or a scorer
            told = {"split", "scorer"} & record.keys() or (
                "scorer_detail" in record and record.get("reward_source") != "judge")
            return "eval" if told else "rollout"
        if "step" in record and ("loss" in record or "eval_loss" in record):
            return "train"
        fmt = record.get("format")
        if {"evaluation_function", "solution", "failure_cases"} <= record.keys() or (
                fmt in TASK_FORMATS and {"id", "env", "instruction"} <= record.keys()):
            if isinstance(record.get("audit"), dict):
                return "audit"
            meta = record.get("meta")
            if isinstance(meta, dict) and (meta.get("source") == "sca propose" or "status" in meta):
                return "propose"
            return "validate" if "validation" in record else None
    raise RecordError("", "cannot tell what this is: no meta sidecar, and the record is not a task, a "
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


def _rate(value: Any, where: str) -> list[float] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1 for x in value)):
        raise RecordError(where, f"expected [estimate, low, high] in [0, 1] or null, got {json.dumps(value)}")
    return [float(x) for x in value]


def read_labels(path: Path) -> Source:
    """The hand-label rates ``sca audit --labels`` writes: one record per format, its counts and
    its rates (each [estimate, low, high], or null where nothing could be counted)."""
    data = _read_json_object(path)
    by_format = data.get("by_format")
    if not isinstance(by_format, dict):
        raise InputError(f"{path}: by_format: expected an object (the rates of sca audit --labels, by task format)")
    records = []
    for fmt, row in by_format.items():
        where = f"by_format.{fmt}"
        if not isinstance(row, dict):
            raise InputError(f"{path}: {where}: expected an object")
        out: dict[str, Any] = {"format": fmt}
        try:
            for key in LABEL_COUNTS:
                v = row.get(key)
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise RecordError(f"{where}.{key}", f"expected a count (an integer >= 0), got {json.dumps(v)}")
                out[key] = v
            if out["tp"] + out["fp"] + out["tn"] + out["fn"] != out["n"]:
                raise RecordError(f"{where}.n", f"{out['n']} is not tp + fp + tn + fn")
            for key in LABEL_RATES:
                out[key] = _rate(row.get(key), f"{where}.{key}")
        except RecordError as e:
            raise InputError(f"{path}: {e}") from None
        records.append(out)
    meta = {"settings": {"n_boot": data.get("n_boot"), "seed": data.get("seed")}}
    return Source(path=path, kind="labels", detected_by="by_format", meta=meta, records=records)


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
    """A directory's outputs: its *.jsonl, the train logs below it, its hand-label rates, and the
    *.jsonl and rates of its subdirectories named after a task format (the layout of
    examples/ablations.sh)."""
    files = sorted(p for p in directory.glob("*.jsonl") if p.is_file())
    files += sorted(p for fmt in TASK_FORMATS for p in (directory / fmt).glob("*.jsonl") if p.is_file())
    files += sorted(p for p in directory.rglob("train_log.jsonl") if p.is_file() and p.parent != directory)
    for place in (directory, *(directory / fmt for fmt in TASK_FORMATS)):
        files += sorted(p for p in (*place.glob("rates.json"), *place.glob("*.rates.json")) if p.is_file())
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
            sources[key] = read_labels(path) if path.suffix == ".json" else read_source(path, explicit=explicit)
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
    for src in out:
        if src.kind == "eval":
            src.training = trained_on(src)
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


def _beside_or_as_written(written: str, beside: Path) -> list[Path]:
    p = Path(written)
    return [beside / p.name, p] if p.name else [p]


def _checkpoint_of(src: Source) -> Path | None:
    """The sca checkpoint an eval run evaluated: its model's directory, with a train_summary.json
    (looked for beside the results by its last name, then as written)."""
    s = src.setting("models")
    executor = s.get("executor") if isinstance(s, dict) else None
    written = [executor.get(k) for k in ("path", "model")] if isinstance(executor, dict) else []
    for w in [*written, src.model]:
        if isinstance(w, str) and w:
            for cand in _beside_or_as_written(w, src.path.parent):
                if (cand / "train_summary.json").is_file():
                    return cand
    return None


def _formats_in(path: Path) -> set[str]:
    """The task formats of a JSONL file's records (only their ``format`` field is read)."""
    found: set[str] = set()
    with open(path, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            found.add(task_format(record) if isinstance(record, dict) else "?")
    return found


def trained_on(src: Source) -> Training:
    """The task format an eval run's model was trained on. In order: the results file's directory,
    when it is named after a format (``runs/ablations/cat/eval.jsonl``, as examples/ablations.sh
    lays a run out); else the ``format`` of the trajectories its checkpoint was trained on (the
    checkpoint's train_summary.json names them); "zero-shot" for a model that is no sca checkpoint
    (a hub name, or a directory without train_summary.json); else None. The checkpoint's summary
    also gives the base model and the algorithm, which decide whether the paper's row is
    comparable."""
    ckpt = _checkpoint_of(src)
    summary = _read_json_object(ckpt / "train_summary.json") if ckpt else {}
    base = _get(summary, "summary", "model") or _get(summary, "settings", "model")
    algo = _get(summary, "summary", "algo") or _get(summary, "settings", "algo")
    training = Training(None, "", ckpt, base if isinstance(base, str) else None, algo if isinstance(algo, str) else None)
    here = src.path.parent.name
    if here in TASK_FORMATS:
        training.format, training.told_by = here, f"its directory ({here}/)"
        return training
    if ckpt is not None:
        inputs = summary.get("inputs") if isinstance(summary.get("inputs"), list) else []
        written = [i.get("path") for i in inputs if isinstance(i, dict) and isinstance(i.get("path"), str)]
        for w in written:
            for cand in _beside_or_as_written(w, ckpt.parent):
                if cand.is_file():
                    formats = _formats_in(cand)
                    if len(formats) == 1 and "?" not in formats:
                        training.format = formats.pop()
                        training.told_by = f"the format of {cand.name}, the checkpoint's training data"
                    else:
                        training.told_by = f"{cand.name}, the checkpoint's training data, mixes formats"
                    return training
        training.told_by = "the checkpoint's training data was not found"
        return training
    model = src.model or ""
    local = model.startswith(("/", "./", "../", "~"))
    if model and (not local or Path(model).expanduser().is_dir()):
        training.format, training.told_by = "zero-shot", "not an sca checkpoint (no train_summary.json)"
    else:
        training.told_by = "its model is not here: cannot tell what it was trained on"
    return training


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
