"""Reading and writing the JSONL files between stages, and JSON files atomically: the only place.

Reading (:func:`load_records`, :class:`StreamedInput`): every line is checked against its
schema before any work starts. A bad line is reported as ``FILE:LINE: what is wrong`` (an
:class:`InputError`; the CLI prints it and exits with code 2), or with ``skip_invalid`` reported
and skipped. ``-`` is standard input. A trajectory whose system prompt names its text by hash gets
the text back from the sidecar beside its file (:class:`SystemPrompts`), so no reader sees the difference. :func:`scan_jsonl` is the tolerant pass over a file a stage
wrote itself (its resume tallies, a report): it yields the objects and passes over torn or foreign
lines, which the writer deals with.

Writing (:class:`RecordWriter`): record by record, each line written whole and flushed, so a
stage killed at any moment leaves only complete lines plus at most one torn last line, which the
next run discards. Re-running with the same output resumes: the ids already written are known
and skipped by the stage. :func:`output_path` is where a stage writes: the ``-o`` given (checked:
a directory is refused before any work starts) or, left out, a new file under ``runs/``.
:func:`write_json_atomic` writes a whole JSON file (a sidecar, a
summary) so that a reader never sees half of one; :func:`drop_lines` removes records from a
JSONL file the same way.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from sca.records.schema import PROMPT_REF, RecordError, RecordSchema, prompt_reference

STDIO = "-"


class InputError(Exception):
    """Bad input: the message is one line, ready to print (``FILE:LINE: problem``)."""


@dataclass
class Loaded:
    """The records of one input file, checked, with what was skipped."""

    path: str
    records: list[dict[str, Any]]
    sha256: str
    lines: int = 0
    skipped: list[str] = field(default_factory=list)  # one message per skipped line

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "records": len(self.records), "skipped": len(self.skipped)}


def _read_bytes(path: str) -> bytes:
    if path == STDIO:
        return sys.stdin.buffer.read()
    _read_bytes_check(path)
    p = Path(path)
    try:
        return p.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None


def load_records(
    path: str | Path,
    schema: RecordSchema,
    *,
    skip_invalid: bool = False,
    on_skip: Callable[[str], None] | None = None,
) -> Loaded:
    """Read and check every record of a JSONL file (``-`` for stdin).

    Raises :class:`InputError` at the first bad line, unless ``skip_invalid``,
    in which case each bad line is passed to ``on_skip`` (default: printed to
    stderr) and left out. Blank lines are ignored. Ids must be unique.
    """
    path = str(path)
    name = "<stdin>" if path == STDIO else path
    data = _read_bytes(path)
    loaded = Loaded(path=name, records=[], sha256=hashlib.sha256(data).hexdigest())
    report = on_skip or (lambda msg: print(f"skipped: {msg}", file=sys.stderr))
    for record in _checked(enumerate(data.split(b"\n"), start=1), name, schema, skip_invalid, report, loaded, path):
        loaded.records.append(record)
    return loaded


def sidecar_prompts(path: str) -> dict[str, str]:
    """The system prompts the sidecar of `path` (``PATH.meta.json``) holds by hash; none for ``-`` or a
    missing or unreadable sidecar."""
    if path == STDIO:
        return {}
    try:
        prompts = json.loads(Path(path + ".meta.json").read_text(encoding="utf-8")).get("system_prompts")
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in prompts.items() if isinstance(v, str)} if isinstance(prompts, dict) else {}


class SystemPrompts:
    """Puts back the system prompt of each record that names it by hash (sca rollout and sca eval write
    the text once, in the sidecar: docs/TRAJECTORY.md), from the sidecar beside `path`, read at the
    first such record: every reader then sees the conversation as it was."""

    def __init__(self, path: str):
        self.path = path
        self.prompts: dict[str, str] | None = None

    def restore(self, record: Any) -> None:
        messages = record.get("messages") if isinstance(record, dict) else None
        ref = prompt_reference(messages[0]) if isinstance(messages, list) and messages else None
        if ref is None:
            return
        if self.prompts is None:
            self.prompts = sidecar_prompts(self.path)
        text = self.prompts.get(ref)
        if text is None:
            where = "a sidecar (standard input has none)" if self.path == STDIO else f"{self.path}.meta.json"
            raise RecordError("messages[0]", f"system prompt {ref[:12]} not in {where} (write with "
                                             "--keep-system-prompt to keep it in each record)")
        # the message as written: its other keys in their places, the text back, the reference gone
        messages[0] = {k: (text if k == "content" else v) for k, v in messages[0].items() if k != PROMPT_REF}


def _checked(lines: Iterable[tuple[int, bytes]], name: str, schema: RecordSchema, skip_invalid: bool,
             report: Callable[[str], None], loaded: Loaded, path: str = STDIO) -> Iterator[dict[str, Any]]:
    """The valid records of numbered raw lines; bad lines raise or are reported into `loaded.skipped`.
    Records with a conversation get their system prompt back from the sidecar of `path`."""
    seen: set[Any] = set()
    first: dict[Any, int] = {}
    prompts = SystemPrompts(path) if any(f.name == "messages" for f in schema.fields) else None
    for lineno, raw in lines:
        if not raw.strip():
            continue
        loaded.lines += 1
        try:
            record = _parse_line(raw)
            if prompts is not None:
                prompts.restore(record)
            schema.check(record)
            rid = record.get(schema.id_field)
            if rid in seen:
                raise RecordError(schema.id_field, f"duplicate id {rid!r} (first on line {first.get(rid, '?')})")
        except (RecordError, _BadLine) as e:
            msg = f"{name}:{lineno}: {e}"
            if not skip_invalid:
                raise InputError(msg) from None
            loaded.skipped.append(msg)
            report(msg)
            continue
        seen.add(rid)
        if len(first) < 1_000_000:
            first[rid] = lineno
        yield record


class StreamedInput:
    """A JSONL input read twice without being held in memory: :meth:`scan` checks every line
    before any work starts (so bad input still stops a stage at once), then iterating yields the
    valid records one at a time. Standard input, which cannot be read twice, is held in memory.
    """

    def __init__(self, path: str | Path, schema: RecordSchema, *, skip_invalid: bool = False,
                 on_skip: Callable[[str], None] | None = None):
        self.path = str(path)
        self.name = "<stdin>" if self.path == STDIO else self.path
        self.schema, self.skip_invalid = schema, skip_invalid
        self.report = on_skip or (lambda msg: print(f"skipped: {msg}", file=sys.stderr))
        self._stdin: bytes | None = None
        self.info = Loaded(path=self.name, records=[], sha256="")
        self.count = 0

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        if self.path == STDIO:
            if self._stdin is None:
                self._stdin = sys.stdin.buffer.read()
            yield from enumerate(self._stdin.split(b"\n"), start=1)
            return
        _read_bytes_check(self.path)
        try:
            with open(self.path, "rb") as f:
                for lineno, raw in enumerate(f, start=1):
                    yield lineno, raw.rstrip(b"\n")
        except OSError as e:
            raise InputError(f"{self.path}: cannot read: {e.strerror}") from None

    def scan(self) -> StreamedInput:
        """Check every line (raising :class:`InputError` at the first bad one unless skipping); count."""
        digest = hashlib.sha256()
        info = Loaded(path=self.name, records=[], sha256="")

        def hashed() -> Iterator[tuple[int, bytes]]:
            for lineno, raw in self._lines():
                digest.update(raw + b"\n")
                yield lineno, raw

        self.count = sum(1 for _ in _checked(hashed(), self.name, self.schema, self.skip_invalid, self.report, info,
                                             self.path))
        info.sha256 = digest.hexdigest()
        self.info = info
        return self

    def __iter__(self) -> Iterator[dict[str, Any]]:
        quiet = Loaded(path=self.name, records=[], sha256="")
        return _checked(self._lines(), self.name, self.schema, True, lambda msg: None, quiet, self.path)

    def describe(self) -> dict[str, Any]:
        return {"path": self.name, "sha256": self.info.sha256, "records": self.count, "skipped": len(self.info.skipped)}


def _read_bytes_check(path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file")
    if p.is_dir():
        raise InputError(f"{path}: is a directory, expected a JSONL file")


class _BadLine(Exception):
    pass


def _parse_line(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _BadLine(f"not UTF-8 text (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _BadLine(f"not valid JSON: {e.msg} (column {e.colno})") from None


#: where a stage writes when ``-o`` is left out (relative to the working directory)
RUNS_DIR = "runs"
_DEFAULTED: set[str] = set()  # the paths output_path chose in this process: a rerun must name them


def output_path(given: str | None, stage: str, name: str, suffix: str = ".jsonl", *, directory: bool = False) -> str:
    """Where `stage` writes: `given` (``-o``), or, where it is None, ``runs/<stage>-<name>-<YYYYmmdd-HHMMSS>
    <suffix>``, `name` being what the stage works on (the environment, or the input file's name without
    its last suffix; ``-``: stdin; the run's time is local). The one rule for every stage: a new file each time, never an earlier
    run's output by accident. `directory`: the output is a directory (a checkpoint, a report), else a
    file, and a `given` path that is a directory is an :class:`InputError` (one line, before any work)."""
    if given is not None:
        if not directory and given != STDIO and Path(given).is_dir():
            raise InputError(f"{given}: is a directory; -o names the file to write (e.g. {Path(given) / (stage + suffix)})")
        return given
    stem = "stdin" if name == STDIO else Path(name).stem
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).strip("._") or stage
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(RUNS_DIR) / f"{stage}-{stem}-{stamp}"
    n = 1
    while True:  # two runs started in the same second get two files
        path = f"{base}{f'-{n}' if n > 1 else ''}{'' if directory else suffix}"
        if not Path(path).exists() and not Path(path + ".meta.json").exists():
            break
        n += 1
    _DEFAULTED.add(path)
    return path


def chosen_by_default(path: str) -> bool:
    """Whether :func:`output_path` chose `path` (no ``-o``): a rerun resumes it only when ``-o`` names it."""
    return str(path) in _DEFAULTED


def dumps_record(record: dict[str, Any]) -> str:
    """One JSONL line (with its newline). Non-ASCII is kept readable."""
    return json.dumps(record, ensure_ascii=False) + "\n"


class RecordWriter:
    """Append records to a JSONL file, one whole line at a time, resumably.

    Opening an existing file keeps its complete lines (their ids are in
    :attr:`done_ids`) and cuts a torn last line; ``overwrite`` starts afresh.
    ``-`` writes to stdout (no resume).
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False, id_field: str = "id"):
        self.path = str(path)
        self.id_field = id_field
        self.done_ids: set[str] = set()
        self.resumed = 0  # complete records found from an earlier run
        self.torn_bytes = 0  # bytes of a torn last line that were cut
        self.written = 0
        if self.path == STDIO:
            self._fd = sys.stdout.fileno()
            sys.stdout.flush()
            self._own = False
            return
        p = Path(self.path)
        if p.is_dir():
            raise InputError(f"{self.path}: is a directory; -o names the file to write")
        if p.parent and not p.parent.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists() and not overwrite:
            self._scan_existing(p)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_APPEND)
        self._fd = os.open(p, flags, 0o644)
        self._own = True

    def _scan_existing(self, p: Path) -> None:
        data = p.read_bytes()
        good_end = 0
        pos = 0
        lineno = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            lineno += 1
            if nl == -1:  # no newline: the last line was torn by a kill
                break
            raw = data[pos:nl]
            if raw.strip():
                try:
                    record = json.loads(raw.decode("utf-8"))
                    rid = record[self.id_field]
                except (ValueError, KeyError, TypeError):
                    if nl + 1 >= len(data):  # a garbled last line: treat as torn
                        break
                    raise InputError(
                        f"{self.path}:{lineno}: existing output is corrupt (not a record); "
                        "fix it or pass --overwrite to start afresh"
                    ) from None
                self.done_ids.add(str(rid))
                self.resumed += 1
            pos = nl + 1
            good_end = pos
        if good_end < len(data):
            self.torn_bytes = len(data) - good_end
            with open(p, "r+b") as f:
                f.truncate(good_end)

    def write(self, record: dict[str, Any]) -> None:
        try:
            buf = dumps_record(record).encode("utf-8")
        except UnicodeEncodeError:  # text that is not valid Unicode (a lone surrogate): escaped, never lost
            buf = (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")
        view = memoryview(buf)
        while view:  # one write call for a regular file; loop only for pipes
            n = os.write(self._fd, view)
            view = view[n:]
        self.written += 1
        rid = record.get(self.id_field)
        if rid is not None:
            self.done_ids.add(str(rid))

    def close(self) -> None:
        if self._own and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def scan_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file a stage wrote, streamed, passing over lines that are not one
    (a torn last line, a foreign line): for resume tallies and reports, never for input a stage
    must check (that is :class:`StreamedInput`). Nothing for ``-`` or a missing file."""
    if str(path) == STDIO or not Path(path).exists():
        return
    with open(path, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def drop_lines(path: str | Path, drop: Callable[[dict[str, Any]], bool]) -> int:
    """Remove from a JSONL file the records for which `drop` is true, atomically (the other lines,
    torn or foreign ones included, stay as they were); the number removed."""
    if str(path) == STDIO or not Path(path).exists():
        return 0
    kept, dropped = [], 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw)
                gone = isinstance(record, dict) and drop(record)
            except ValueError:
                gone = False
            if gone:
                dropped += 1
            else:
                kept.append(raw)
    if dropped:
        tmp = Path(f"{path}.tmp")
        with open(tmp, "wb") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON to `path` through a temporary file and a rename: a reader sees
    the old file or the new one, never half of one (values JSON has no type for become strings)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
