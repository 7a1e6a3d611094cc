"""The wire: how the parent and a worker's runner talk, and the limits both sides hold each other to.

Standard library only, like the whole runner folder, which runs inside the sandbox where nothing
else of the project exists. It is also the one module of the runner the parent imports (as
``sandbox.runner.wire``): the framing, the measures of JSON (:func:`json_size`,
:func:`json_items`, :func:`json_depth`) and the limits are the same code on both sides of the
channel, so that honest code within a limit is within it everywhere.

Channel: the runner's stdin (parent -> runner) and stdout (runner -> parent)
carry frames, each a 4-byte big-endian length followed by one UTF-8 JSON
object. Right at start the runner moves the channel to private descriptors and
points fds 0-2 at /dev/null, so nothing the code prints can reach it.

Parent -> runner::

    {"op": "run", "run": id, "code": str, "mode": "exec"|"evaluate", "answer": json,
     "tools_key": str, "tools": [tool specs] (only when the worker lacks that key),
     "timeout": s, "memory_mb": n, "max_procs": n, "nproc_rlimit": bool, "output_limit": n,
     "max_tool_calls": n, "max_tool_bytes": n, "max_depth": n}
    {"op": "reply", "run": id, "id": n, "ok": true, "value": json}
    {"op": "reply", "run": id, "id": n, "ok": false, "error_type": "ToolError"|"WriteForbiddenError", "message": str}
    {"op": "exit"}

Every field of a run's job is always sent (the budgets' defaults live in the parent's
``SandboxConfig`` only); only ``tools`` is left out when the worker already knows the set.

Runner -> parent::

    {"op": "ready", "pid": n, "pid_namespace": bool, "python": str, "protocol": n, "runner": digest}
    {"op": "started", "run": id}           (the run's child has its job: what follows is the run's)
    {"op": "call", "run": id, "id": n, "name": str, "args": {...}}
    {"op": "done", "run": id, "status": ..., "answer": ..., "stdout": ..., ...}
    {"op": "clean", "run": id, "ok": bool} (after the report: the clean-up, checked)
    {"op": "fatal", "error": str}          (the runner itself failed; it exits)

Inside the sandbox, the zygote and the run's child talk over private pipes: child -> zygote
frames are JSON like the channel's, zygote -> child frames are ``marshal``
(:func:`encode_trusted`), which only the child decodes.
"""

from __future__ import annotations

import json
import marshal
import os
import struct

PROTOCOL_VERSION = 4
#: largest frame either side accepts (a bigger one breaks the protocol)
MAX_FRAME = 64 << 20
#: largest JSON encoding of an answer or value a run may report (bytes, as :func:`json_size` counts them)
MAX_ANSWER = 4 << 20
#: largest report a run's process may send (its answer or value and its error texts); the report
#: the zygote sends on adds the captured output (see :func:`report_limit`)
MAX_REPORT = MAX_ANSWER + (256 << 10)
#: most JSON items (values and keys, as :func:`json_items` bounds them) in one tool call's arguments,
#: one answer or one value: what a trusted process decodes is bounded in objects, not only in bytes
#: (8 MiB of ``[],`` decode to 2.8 million lists, about 180 MB)
MAX_ITEMS = 100_000
#: what a frame may add to the items and bytes of the payload it carries (its other fields; a tool's
#: name of up to 200 characters, each escaped to at most 6 bytes)
FRAME_OVERHEAD = 4096
#: longest error message and traceback a run reports (characters); the rest is cut with a marker
MAX_ERROR_TEXT = 20_000
#: largest file the code may write (RLIMIT_FSIZE)
MAX_FILE = 64 << 20
_HEADER = struct.Struct(">I")
#: the runner's folder: every file in it is the runner (see :func:`runner_digest`)
RUNNER_DIR = os.path.dirname(os.path.abspath(__file__))


class ProtocolError(Exception):
    """The other side of a channel sent something that is not a valid frame."""


# --------------------------------------------------------------------------- framing
def encode_frame(msg: dict) -> bytes:
    """One frame: length prefix + compact JSON (NaN and Infinity are refused: ValueError).

    Text that is not valid Unicode (a lone surrogate, ``"\\udcff"``) is sent as U+FFFD, which
    is what the decoding side would make of it anyway; so a frame's payload is never larger than
    :func:`json_size` of the message.
    """
    text = json.dumps(msg, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # surrogates are only ever inside strings: the JSON stays valid
        data = _clean_str(text).encode("utf-8")
    if len(data) > MAX_FRAME:
        raise ValueError(f"message of {len(data)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return _HEADER.pack(len(data)) + data


def json_size(value) -> int:
    """Bytes of `value` as compact JSON in UTF-8 (a lone surrogate counts the 3 bytes of the U+FFFD
    it becomes). The one measure of tool data and answers on every side of the channel: the run's
    own process checks its calls and its answer with it before sending, the zygote and the parent
    measure what they decoded with it, and re-encoding decoded JSON never makes it larger, so
    honest code within a limit is within it everywhere. TypeError or ValueError for what is not JSON.
    """
    return json_measure(value)[0]


def json_measure(value) -> tuple[int, int]:
    """(:func:`json_size`, :func:`json_items`) of `value`, from one encoding."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return _utf8_size(text), json_items(text)


def json_items(text) -> int:
    """An upper bound of the values and keys in a JSON text (str, bytes or bytearray): one, plus one
    per comma, colon and opening bracket, those inside strings included. Every value or key but the
    first follows one of them. Counted in C, before anything is decoded: the measure of
    :data:`MAX_ITEMS` on every side, so that honest code within the limit is within it everywhere."""
    if isinstance(text, str):
        return 1 + text.count(",") + text.count(":") + text.count("[") + text.count("{")
    return 1 + text.count(b",") + text.count(b":") + text.count(b"[") + text.count(b"{")


def _utf8_size(text: str) -> int:
    """Bytes of `text` in UTF-8, a lone surrogate counting the 3 bytes of the U+FFFD it is sent as."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


#: most JSON items (see :func:`json_items`) in a frame from a run's process: a call's arguments or a
#: report's answer or value, and the text of the report's other fields (every character of which may
#: be a comma)
CHILD_FRAME_ITEMS = MAX_ITEMS + 2 * (MAX_ERROR_TEXT + 100) + 3 * 200 + FRAME_OVERHEAD


def parent_frame_items(output_limit: int) -> int:
    """Most JSON items in a frame from the zygote to the parent: a call, or a report with up to
    `output_limit` characters of stdout and of stderr (and their markers), error texts the zygote
    adds, and the counters."""
    return CHILD_FRAME_ITEMS + 2 * (int(output_limit) + 100) + 2 * 1000


#: a report frame of at most this many bytes holds an answer or value within MAX_ANSWER, however it
#: was written (re-encoding decoded JSON grows it at most 4.5 times: ``1e15`` is
#: ``1000000000000000.0``), so its size need not be measured
MEASURE_ABOVE = MAX_ANSWER // 8


def child_frame_limit(bytes_left: int) -> int:
    """Largest frame a run's process may send the zygote: a tool call within what is left of its
    budget for tool data, or its report."""
    return max(bytes_left + FRAME_OVERHEAD, MAX_REPORT)


def report_limit(output_limit: int) -> int:
    """Largest report frame the zygote may send for a run that keeps `output_limit` characters of
    stdout and of stderr (each character at most 6 bytes of JSON, as ``\\u001b``; a marker of cut
    output at most 100 characters)."""
    return MAX_REPORT + 2 * 6 * (int(output_limit) + 100)


class _NotJSON(ValueError):
    """NaN, Infinity, -Infinity, or a number no float holds (``1e999``): Python's decoder accepts
    them, JSON does not, and no trusted process may hold one (it could not send it on)."""


def _no_constant(name: str):
    raise _NotJSON(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (_INFINITY, -_INFINITY):
        raise _NotJSON(f"the number {text[:40]} (out of range)")
    return value


_INFINITY = float("inf")
#: the decoder of every JSON frame: refuses what JSON has no place for (see :class:`_NotJSON`)
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


class FrameBuffer:
    """Accumulates bytes from a stream and yields the complete frames in it.

    `max_frame` bounds a frame's bytes, `max_items` (None: unbounded) its JSON items as
    :func:`json_items` counts them in the raw bytes, before decoding: so what a frame costs to
    decode, in time and in memory, is bounded by both. Either may change between frames.
    """

    def __init__(self, max_frame: int = MAX_FRAME, max_items: int | None = None) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self.max_items = max_items
        self._broken: ProtocolError | None = None

    def feed(self, data: bytes) -> list[dict]:
        return [msg for msg, _ in self.feed_sized(data)]

    def feed_sized(self, data: bytes) -> list[tuple[dict, int]]:
        """Like :meth:`feed`, with each frame's size in bytes.

        Raises :class:`ProtocolError` for anything that is not a frame of a JSON object within
        the size limit, whatever the bytes are (nesting too deep for the decoder included). The
        good frames before a bad one come out first: the error is raised by the next call.
        """
        if self._broken is not None:
            raise self._broken
        self._buf += data
        out: list = []
        try:
            self._decode(out)
        except ProtocolError as e:
            if not out:
                raise
            self._broken = e
        return out

    def _decode(self, out: list) -> None:
        while len(self._buf) >= 4:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > self._max:
                raise ProtocolError(f"frame of {size} bytes exceeds the {self._max}-byte limit")
            if len(self._buf) < 4 + size:
                break
            if self.max_items is not None:
                items = 1 + sum(self._buf.count(c, 4, 4 + size) for c in (b",", b":", b"[", b"{"))
                if items > self.max_items:
                    raise ProtocolError(f"frame holds up to {items:,} JSON items (the limit is {self.max_items:,})")
            try:
                with memoryview(self._buf) as view:  # decode in place: no copy of a large frame's bytes
                    text = str(view[4:4 + size], "utf-8")
                del self._buf[:4 + size]
                msg = _DECODER.decode(text)
                if "\\ud" in text or "\\uD" in text:  # an escaped surrogate: maybe a lone one
                    msg = clean_text(msg)
                del text
            except _NotJSON as e:
                raise ProtocolError(f"frame holds {e}, which is not JSON") from None
            except (UnicodeDecodeError, ValueError) as e:
                raise ProtocolError(f"frame is not UTF-8 JSON: {e}") from None
            except RecursionError:
                raise ProtocolError("frame is nested too deeply to decode") from None
            except MemoryError:
                raise ProtocolError(f"frame of {size} bytes does not fit in memory when decoded") from None
            if not isinstance(msg, dict):
                raise ProtocolError(f"frame is a JSON {type(msg).__name__}, not an object")
            out.append((msg, size))

    @property
    def broken(self) -> ProtocolError | None:
        """The error after the frames the last feed returned, which the next feed raises."""
        return self._broken

    @property
    def max_frame(self) -> int:
        return self._max

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._max = int(value)

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still waiting for the rest."""
        return len(self._buf)


def _clean_str(s: str) -> str:
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:  # lone surrogates -> U+FFFD (pairs, if any, are joined)
        return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def clean_text(value):
    """`value` (decoded JSON) with every string made valid Unicode: a lone surrogate, which JSON
    can carry escaped but UTF-8 cannot encode, becomes U+FFFD. Iterative (any nesting)."""
    if isinstance(value, str):
        return _clean_str(value)
    if not isinstance(value, (list, dict)):
        return value
    root = [value]
    todo = [(root, 0)]
    while todo:
        holder, key = todo.pop()
        item = holder[key]
        if isinstance(item, str):
            holder[key] = _clean_str(item)
        elif isinstance(item, list):
            todo.extend((item, i) for i in range(len(item)))
        elif isinstance(item, dict):
            for k in list(item):
                clean = _clean_str(k)
                if clean != k:
                    item[clean] = item.pop(k)
                todo.append((item, clean))
    return root[0]


_CONTAINERS = (list, dict, tuple)


def json_depth(value, limit: int) -> int:
    """How deeply `value` (decoded JSON) nests lists and objects, counting stops past `limit`.

    Iterative, level by level, so any depth is measured without recursing, and each container is
    visited once with no bookkeeping per scalar: ``json_depth(x, limit) > limit`` says "too deep"
    without looking further.
    """
    if not isinstance(value, _CONTAINERS):
        return 0
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > limit:
            return depth
        below: list = []
        keep = below.append
        for item in level:
            for child in (item.values() if isinstance(item, dict) else item):
                if isinstance(child, _CONTAINERS):
                    keep(child)
        level = below
    return depth


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[n:]


def encode_trusted(msg: dict) -> bytes:
    """A zygote -> child frame: length prefix + marshal (only ever decoded by the child, from the zygote)."""
    data = marshal.dumps(msg)
    return _HEADER.pack(len(data)) + data


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks = []
    while size:
        data = os.read(fd, size)
        if not data:
            return None
        chunks.append(data)
        size -= len(data)
    return b"".join(chunks)


def _read_trusted(fd: int) -> dict | None:
    """Block until one :func:`encode_trusted` frame arrives on `fd`; None at end of stream."""
    head = _read_exact(fd, 4)
    data = head and _read_exact(fd, _HEADER.unpack(head)[0])
    return None if data is None else marshal.loads(data)


def _read_frame(fd: int, buf: FrameBuffer, backlog: list[dict]) -> dict | None:
    """Block until one frame arrives on `fd`; None at end of stream."""
    while not backlog:
        try:
            data = os.read(fd, 1 << 16)
        except InterruptedError:
            continue
        if not data:
            return None
        backlog.extend(buf.feed(data))
    return backlog.pop(0)


def runner_digest(folder: str = RUNNER_DIR) -> str:
    """A digest of the runner's folder, so the parent can tell a stale copy (an old Docker image) from
    this one: every file directly in it, by sorted name, each name and content (a ``__pycache__`` is a
    folder, not one of them). "" if the folder cannot be read."""
    try:  # the built-in module: hashlib would load OpenSSL into the zygote, and every fork would copy its tables
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256
    digest = sha256()
    try:
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            raw = os.fsencode(name)
            digest.update(b"%d:%s:%d:" % (len(raw), raw, len(data)))  # lengths first: no two folders alike
            digest.update(data)
    except OSError:
        return ""
    return digest.hexdigest()[:16]


def report_value_problem(report: dict, size: int, mode: str, max_depth: int) -> str | None:
    """What is wrong with the answer or value of a run's report (a frame of `size` bytes), or None:
    only the field of the run's mode (``answer`` for exec, ``value`` for evaluate), nested at most
    `max_depth` levels, within :data:`MAX_ANSWER`. The zygote and the parent both check with it."""
    key = "value" if mode == "evaluate" else "answer"
    other = "answer" if key == "value" else "value"
    if other in report:
        return f"malformed report: {other} in {mode} mode"
    if json_depth(report.get(key), max_depth) > max_depth:
        return f"the {key} is nested deeper than {max_depth} levels"
    if size > MEASURE_ABOVE:  # see MEASURE_ABOVE
        length = json_size(report.get(key))
        if length > MAX_ANSWER:
            return f"the {key} is too large to report ({length:,} bytes of JSON; limit {MAX_ANSWER:,})"
    return None
