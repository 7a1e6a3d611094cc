#!/usr/bin/env python3
"""The sandbox worker: a zygote that runs model-written code, one freshly forked child per run.

Standard library only: this file runs as a script inside the sandbox (a
bubblewrap namespace, a Docker container or a plain process), where nothing
else of the project exists. The parent imports it too, for the framing
helpers and :func:`make_tool_functions`.

Channel: the runner's stdin (parent -> runner) and stdout (runner -> parent)
carry frames, each a 4-byte big-endian length followed by one UTF-8 JSON
object. Right at start the runner moves the channel to private descriptors and
points fds 0-2 at /dev/null, so nothing the code prints can reach it.

Parent -> runner::

    {"op": "run", "run": id, "code": str, "mode": "exec"|"evaluate", "answer": json,
     "tools_key": str, "tools": [tool specs] (only when the worker lacks that key),
     "timeout": s, "memory_mb": n, "max_procs": n, "nproc_rlimit": bool, "output_limit": n}
    {"op": "reply", "run": id, "id": n, "ok": true, "value": json}
    {"op": "reply", "run": id, "id": n, "ok": false, "error_type": "ToolError"|"WriteForbiddenError", "message": str}
    {"op": "exit"}

Runner -> parent::

    {"op": "ready", "pid": n, "pid_namespace": bool, "python": str, "protocol": n, "runner": digest}
    {"op": "started", "run": id}           (the run's child has its job: what follows is the run's)
    {"op": "call", "run": id, "id": n, "name": str, "args": {...}}
    {"op": "done", "run": id, "status": ..., "answer": ..., "stdout": ..., ...}
    {"op": "clean", "run": id, "ok": bool} (after the report: the clean-up, checked)
    {"op": "fatal", "error": str}          (the runner itself failed; it exits)

Per run a forked child applies the resource limits, runs the code in a fresh
namespace and reports. The children are forked by the zygote's *forker*, a new
interpreter (``runner.py --forker``) that does nothing but fork and never holds
anything of a run: a child starts as a copy of its forking parent's memory, which
it can read, and the zygote's memory holds every job and frame it served. (A
forked parent's pages are also copied as it writes them while the child lives,
and the zygote writes hundreds per run.) The forker passes on the four pipe ends the zygote
sends it (SCM_RIGHTS), then says the child's pid and, once it is reaped, its
wait status. The child is forked ahead, right after the previous run's
clean-up, and waits for its job on its reply pipe, so its fork and set-up
overlap with the parent's own work. The zygote relays the child's tool calls
(so the child never touches the parent's channel; zygote -> child frames are
marshal, child -> zygote frames JSON), captures its stdout and stderr through
pipes, enforces the wall-clock timeout, and afterwards kills every process the
run left behind and empties the writable places. Inside a private PID namespace,
where the zygote is PID 1 (which the code cannot kill or stop), a run that left
nothing but its child is done at once; otherwise ``kill(-1, SIGSTOP)`` freezes
everyone else, everything but the forker is killed and the forker continued.
Elsewhere (the unisolated ``subprocess`` backend) the zygote walks its own
descendants. The code can stop or kill its forker: the clean-up continues it,
or the zygote starts another.
"""

from __future__ import annotations

import _socket
import _thread
import builtins
import gc
import io
import json
import keyword
import linecache
import marshal
import os
import resource
import select
import signal
import struct
import sys
import time
import traceback

PROTOCOL_VERSION = 4
#: largest frame either side accepts (a bigger one breaks the protocol)
MAX_FRAME = 64 << 20
#: largest JSON encoding of an answer or value a run may report (bytes, as :func:`json_size` counts them)
MAX_ANSWER = 4 << 20
#: largest report a run's process may send (its answer or value and its error texts); the report
#: the zygote sends on adds the captured output (see :func:`report_limit`)
MAX_REPORT = MAX_ANSWER + (256 << 10)
#: deepest nesting of lists and objects in a tool call's arguments, an answer or a value (the
#: default of a job's ``max_depth``): decoding and re-encoding deeper values recurses in C and
#: in Python, and a trusted process must never have to
MAX_DEPTH = 64
#: default per-run budgets (a job's ``max_tool_calls`` and ``max_tool_bytes``): tool calls, and bytes
#: of their JSON arguments and results together
MAX_TOOL_CALLS = 2000
MAX_TOOL_BYTES = 8 << 20
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
CODE_FILENAME = "<code>"
TOOLS_FILENAME = "<sca-tools>"
_HEADER = struct.Struct(">I")


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


def runner_digest(path: str = __file__) -> str:
    """A digest of this file, so the parent can tell a stale copy (an old Docker image) from this one."""
    try:  # the built-in module: hashlib would load OpenSSL into the zygote, and every fork would copy its tables
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256
    try:
        with open(path, "rb") as f:
            return sha256(f.read()).hexdigest()[:16]
    except OSError:
        return ""


# --------------------------------------------------------------------------- tool functions
class ToolError(Exception):
    """A tool refused the call; the message is the environment's own."""


class WriteForbiddenError(ToolError):
    """A write tool was called where only read tools are allowed (in ``evaluate``)."""


class BudgetExceeded(Exception):
    """The run used up one of its budgets: tool calls, or bytes of tool arguments and results.

    Not a :class:`ToolError`: a tool did not refuse, the code asked for too much.
    """


#: what a refusal's ``error_type`` raises in the code
_REFUSALS = {"ToolError": ToolError, "WriteForbiddenError": WriteForbiddenError, "BudgetExceeded": BudgetExceeded}

for _cls in (ToolError, WriteForbiddenError, BudgetExceeded):
    _cls.__module__ = "builtins"  # tracebacks say "ToolError: ...", as for a built-in exception


class _Default:
    """Marks an optional tool parameter the caller left out (it is then not sent)."""

    __slots__ = ("_text",)

    def __init__(self, schema: dict) -> None:
        self._text = repr(schema["default"]) if isinstance(schema, dict) and "default" in schema else "..."

    def __repr__(self) -> str:
        return self._text


def _pack(tool: str, params: dict, extra_names: frozenset) -> dict:
    """The JSON arguments of one call: given parameters only, odd names via ``**kwargs``."""
    extra = params.pop("_sca_kw", None) or {}
    args = {k: v for k, v in params.items() if not isinstance(v, _Default)}
    for k, v in extra.items():
        if k not in extra_names:
            raise TypeError(f"{tool}() got an unexpected keyword argument {k!r}")
        args[k] = v
    return args


def make_tool_functions(tools: list[dict], call) -> dict:
    """Python functions for tools given as ``{"name", "description", "parameters"}`` dicts.

    Each function has the tool's own name and a real signature built from its
    JSON schema (required parameters first, then optional ones), so wrong
    arguments raise ``TypeError`` as for any Python function. Calling it runs
    ``call(name, args)`` with the arguments actually given. Parameter names
    that are not Python identifiers can still be passed as keywords; tools
    whose names are not identifiers are left out (they cannot be globals).
    """
    out = {}
    for spec in tools:
        name = spec.get("name")
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            continue
        schema = spec.get("parameters") if isinstance(spec.get("parameters"), dict) else {}
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        required = set(p for p in schema.get("required") or [] if isinstance(p, str))
        plain = [p for p in props if p.isidentifier() and not keyword.iskeyword(p) and not p.startswith("_sca_")]
        odd = frozenset(p for p in props if p not in plain)
        defaults = [_Default(props[p]) for p in plain if p not in required]
        params = [p for p in plain if p in required]
        params += [f"{p}=_sca_defaults[{i}]" for i, p in enumerate(p for p in plain if p not in required)]
        if odd:
            params.append("**_sca_kw")
        source = (f"def {name}({', '.join(params)}):\n"
                  f"    return _sca_call({name!r}, _sca_pack({name!r}, locals(), _sca_odd))\n")
        scope = {"_sca_call": call, "_sca_pack": _pack, "_sca_odd": odd, "_sca_defaults": defaults,
                 "__name__": "tools"}
        exec(compile(source, TOOLS_FILENAME, "exec"), scope)
        fn = scope[name]
        fn.__doc__ = spec.get("description") or None
        out[name] = fn
    return out


# --------------------------------------------------------------------------- the child: one run
class _ChildChannel:
    """The run's side of its private pipes to the zygote."""

    def __init__(self, req_w: int, resp_r: int) -> None:
        self.req_w, self.resp_r = req_w, resp_r
        self.lock = _thread.allocate_lock()  # the code may call tools from several threads: one call at a time
        self.max_depth, self.bytes_left = MAX_DEPTH, MAX_TOOL_BYTES

    def budget(self, job: dict) -> None:
        self.max_depth = int(job.get("max_depth", MAX_DEPTH))
        self.bytes_left = int(job.get("max_tool_bytes", MAX_TOOL_BYTES))

    def call(self, name: str, args: dict):
        # The checks here give honest code a clear error where it made the call; the zygote
        # enforces the same limits whatever this process sends.
        if json_depth(args, self.max_depth) > self.max_depth:
            raise TypeError(f"{name}(): arguments nested deeper than {self.max_depth} levels")
        try:
            size, items = json_measure(args)  # the measures the zygote and the parent use: never a surprise there
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name}(): arguments must be JSON values ({e})") from None
        if size > self.bytes_left:
            raise BudgetExceeded(f"{name}(): arguments of {size:,} bytes exceed what is left of the "
                                 f"run's budget for tool data ({max(0, self.bytes_left):,} bytes)")
        if items > MAX_ITEMS:
            raise BudgetExceeded(f"{name}(): arguments of up to {items:,} JSON items (counted as commas, colons "
                                 f"and opening brackets) exceed the {MAX_ITEMS:,} a call may send")
        try:
            frame = encode_frame({"op": "call", "name": name, "args": args})
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name}(): arguments must be JSON values ({e})") from None
        with self.lock:
            _write_all(self.req_w, frame)
            reply = _read_trusted(self.resp_r)
        if reply is None:
            raise RuntimeError("the sandbox closed the tool channel")
        self.bytes_left = reply.get("bytes_left", self.bytes_left)
        if reply.get("ok"):
            return reply.get("value")
        raise _REFUSALS.get(reply.get("error_type"), ToolError)(reply.get("message", ""))

    def send(self, msg: dict) -> None:
        _write_all(self.req_w, encode_frame(msg))


_CHANNEL: _ChildChannel | None = None
#: sys.stdout and sys.stderr of every run, made once in the zygote over fds 1 and 2 (unbuffered below the
#: text layer, so nothing written in the zygote can be pending in them)
_STREAMS: tuple = ()


def _call_tool(name: str, args: dict):
    return _CHANNEL.call(name, args)


def _setlimit(which: int, soft: int, hard: int | None = None) -> None:
    """Lower a resource limit to (soft, hard), never above the hard limit in force."""
    hard = soft if hard is None else hard
    _, cur_hard = resource.getrlimit(which)
    if cur_hard != resource.RLIM_INFINITY:
        hard = min(hard, cur_hard)
        soft = min(soft, hard)
    try:
        resource.setrlimit(which, (soft, hard))
    except (ValueError, OSError):
        pass


def _set_fixed_limits() -> None:
    """The limits and settings every run has, set once in the forker (its children inherit them)."""
    _setlimit(resource.RLIMIT_CORE, 0)
    _setlimit(resource.RLIMIT_FSIZE, MAX_FILE)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with EFBIG instead
    # A run is the first victim of any out-of-memory kill (the forker second), never the zygote.
    # The zygote is not dumpable, so its copy's /proc files belong to root: for the write, this
    # process (which no run's code has touched yet) is dumpable for a moment.
    _prctl(_PR_SET_DUMPABLE, 1)
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        try:
            os.write(fd, b"1000")
        finally:
            os.close(fd)
    except OSError:
        pass
    finally:
        _prctl(_PR_SET_DUMPABLE, 0)


def _set_limits(job: dict) -> None:
    """The limits that depend on the job (see also :func:`_set_fixed_limits`)."""
    if job.get("memory_mb"):
        _setlimit(resource.RLIMIT_AS, int(job["memory_mb"]) << 20)
    cpu = int(float(job.get("timeout", 10))) + 1
    _setlimit(resource.RLIMIT_CPU, cpu, cpu + 2)
    if job.get("nproc_rlimit") and job.get("max_procs"):
        _setlimit(resource.RLIMIT_NPROC, int(job["max_procs"]))


_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement (or type()), not by C
_STATIC_TYPE_NAMES = frozenset({"NoneType", "ellipsis", "NotImplementedType", "function", "method", "module",
                                "builtin_function_or_method", "generator", "coroutine", "code", "frame",
                                "ToolError", "WriteForbiddenError", "BudgetExceeded"})


def _type_name(value) -> str:
    """The type's name, qualified with its module when a user class takes the name of a built-in
    one: a class named ``bool`` is ``__main__.bool``, never ``bool``."""
    cls = type(value)
    name = type.__dict__["__qualname__"].__get__(cls)  # not a property the class could override
    if not type.__dict__["__flags__"].__get__(cls) & _HEAPTYPE or getattr(builtins, name, cls) is cls \
            and name not in _STATIC_TYPE_NAMES:
        return name
    module = type.__dict__["__module__"].__get__(cls)
    return f"{module if isinstance(module, str) else '?'}.{name}"


def _jsonable(value, max_depth: int = MAX_DEPTH) -> tuple:
    """(JSON value or repr string, type name, error) for an answer or a returned value."""
    type_name = _type_name(value)
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        try:
            text = json.dumps(repr(value)[:MAX_ANSWER], ensure_ascii=False)
        except Exception as e:  # a __repr__ that raises
            text = json.dumps(f"<{type_name} object; repr failed: {type(e).__name__}>")
    size = _utf8_size(text)  # as json_size counts
    if size > MAX_ANSWER:
        return None, type_name, (f"the {type_name} is too large to report "
                                 f"({size} bytes of JSON; limit {MAX_ANSWER})")
    items = json_items(text)
    if items > MAX_ITEMS:
        return None, type_name, (f"the {type_name} holds too many JSON items to report "
                                 f"(up to {items:,}; limit {MAX_ITEMS:,})")
    try:
        decoded = json.loads(text)
    except RecursionError:
        decoded = None
    if decoded is None and text != "null" or json_depth(decoded, max_depth) > max_depth:
        return None, type_name, f"the {type_name} is nested deeper than {max_depth} levels"
    return decoded, type_name, None


def _user_frames(stack: traceback.StackSummary) -> traceback.StackSummary:
    """Frames from the first frame of the user's code on, without the tool plumbing at the end."""
    frames = list(stack)
    start = next((i for i, f in enumerate(frames) if f.filename == CODE_FILENAME), len(frames))
    frames = frames[start:]
    ours = (TOOLS_FILENAME, __file__)
    while frames and frames[-1].filename in ours:
        frames.pop()
    return traceback.StackSummary.from_list(frames)


def _format_exception(exc: BaseException) -> str:
    te = traceback.TracebackException.from_exception(exc)
    seen = set()
    todo = [te]
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        t.stack = _user_frames(t.stack)
        todo += [c for c in (t.__cause__, t.__context__) if c is not None]
    return "".join(te.format())


def _arity(fn) -> int:
    """How many positional arguments `fn` takes (a ``*args`` counts as one); keyword-only
    parameters and ``**kwargs`` are not positional and do not count."""
    code = getattr(fn, "__code__", None)
    if code is not None and not hasattr(fn, "__wrapped__") and not hasattr(fn, "__self__"):
        return code.co_argcount + bool(code.co_flags & 0x04)
    import inspect

    try:
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                 inspect.Parameter.VAR_POSITIONAL)
        return sum(p.kind in kinds for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return 1


def _execute(job: dict, tools: dict) -> tuple[dict, object, BaseException | None]:
    """Run the job's code in a fresh namespace: (namespace, evaluate's value, what it raised)."""
    code, mode = job["code"], job.get("mode", "exec")
    linecache.cache[CODE_FILENAME] = (len(code), None, code.splitlines(True), CODE_FILENAME)
    ns = {"__name__": "__main__", "__builtins__": builtins,
          "ToolError": ToolError, "WriteForbiddenError": WriteForbiddenError, "BudgetExceeded": BudgetExceeded,
          **tools}
    value = raised = None
    try:
        compiled = compile(code, CODE_FILENAME, "exec")
        try:
            exec(compiled, ns)
        except SystemExit as e:  # sys.exit() / exit() with success ends the code normally
            if e.code not in (None, 0):
                raise
        if mode == "evaluate":
            fn = ns.get("evaluate")
            if not callable(fn):
                raise NameError("the code does not define a function evaluate()")
            value = fn(job.get("answer")) if _arity(fn) else fn()
    except BaseException as e:  # noqa: BLE001 - everything the code raises is reported
        raised = e
    return ns, value, raised


def _report(job: dict, ns: dict, value: object, raised: BaseException | None) -> dict:
    """The report fields of a finished run."""
    mode = job.get("mode", "exec")
    depth = int(job.get("max_depth", MAX_DEPTH))
    report: dict = {"status": "ok"}
    if raised is not None:
        report.update(status="sandbox_error" if isinstance(raised, MemoryError) else "error",
                      error_type=_exception_name(raised), error=_cut(_safe_str(raised)),
                      traceback=_cut(_format_exception(raised)))
        if isinstance(raised, MemoryError) and not report["error"]:
            report["error"] = f"out of memory (the limit is {job.get('memory_mb')} MiB)"
    elif mode == "evaluate":
        report["value"], report["value_type"], err = _jsonable(value, depth)
        if err:
            report.update(status="sandbox_error", error_type="SandboxError", error=err)
    if mode == "exec":
        report["answer"], report["answer_type"], err = _jsonable(ns.get("answer"), depth)
        if err and report["status"] == "ok":
            report.update(status="sandbox_error", error_type="SandboxError", error=err)
    return report


def _exception_name(e: BaseException) -> str:
    """The exception's type name: plain for built-in exceptions and the sandbox's own (ToolError...),
    qualified for any other class, so code cannot pass its own class off as a ToolError."""
    cls = type(e)
    if cls in _REFUSALS.values():
        return cls.__name__
    return _type_name(e)


def _cut(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} more characters cut]"


def _safe_str(e: BaseException) -> str:
    try:
        text = str(e)
        return text if isinstance(text, str) else "<str() returned no string>"
    except Exception:  # an exception whose __str__ raises
        return f"<{type(e).__name__}; str() failed>"


def _child_main(tool_sets: dict, req_w: int, resp_r: int, out_w: int, err_w: int, pdeathsig: bool) -> None:
    """Body of a forked child: set up, wait for the job, run it, report. Never returns.

    The child is forked ahead of its run (see :meth:`Zygote.run`): what does not depend on
    the job happens before the job arrives, as the first frame on its reply pipe. `pdeathsig`:
    die with the forker (where no PID namespace ends everything with the zygote).
    """
    global _CHANNEL
    status = 0
    main_pid = os.getpid()
    try:
        os.setsid()
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        keep = sorted({req_w, resp_r})
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, 1 << 16)
        _prctl(_PR_SET_DUMPABLE, 1)
        if pdeathsig:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        streams = _STREAMS  # made in the zygote (fds 1 and 2 are the pipes now); flushed after the code
        sys.stdout, sys.stderr = streams
        _CHANNEL = _ChildChannel(req_w, resp_r)
        job = _read_trusted(resp_r)
        if job is None:  # discarded unused
            os._exit(0)
        _CHANNEL.budget(job)
        _set_limits(job)
        ns, value, raised = _execute(job, tool_sets[job.get("tools_key", "")])
        if os.getpid() != main_pid:  # a process the code forked ran to the end: only the run reports
            os._exit(0)
        _reset_interpreter()
        for stream in streams:
            try:
                stream.flush()
            except Exception:  # a closed or replaced stream: its output is lost, the report is not
                pass
        try:
            _CHANNEL.send({"op": "done", **_report(job, ns, value, raised)})
        except BaseException:  # noqa: BLE001 - the code broke what the report needs (json.dumps = None)
            _restore_modules()
            _CHANNEL.send({"op": "done", **_report(job, ns, value, raised)})
    except BaseException as e:  # noqa: BLE001
        try:
            _CHANNEL.send({"op": "done", "status": "sandbox_error", "error_type": "SandboxError",
                           "error": f"the run could not be reported ({type(e).__name__}): "
                                    "the code broke the runner inside its own process"})
        except BaseException:  # noqa: BLE001
            status = 70
    os._exit(status)


#: modules the child's report path uses, as they were in the zygote: a run that monkeypatched
#: them (``json.dumps = None``) so that its report fails gets them back and is reported. Restoring
#: is done only then: touching every object of these modules in a fresh fork costs ~1 ms of
#: copy-on-write faults.
_PROTECTED_MODULES = ("builtins", "json", "json.encoder", "json.decoder", "json.scanner", "traceback",
                      "linecache", "os", "posix", "io", "sys", "struct", "signal", "inspect", "collections",
                      "itertools", "reprlib", "textwrap", "contextlib", "functools", "keyword", "types")
_SNAPSHOT: dict = {}
_RECURSION_LIMIT = sys.getrecursionlimit()


def _snapshot_runtime() -> None:
    for name in _PROTECTED_MODULES:
        module = sys.modules.get(name)
        if module is not None:
            _SNAPSHOT[name] = (module, dict(module.__dict__))


def _restore_modules() -> None:
    for module, saved in _SNAPSHOT.values():
        module.__dict__.update(saved)


def _reset_interpreter() -> None:
    """Undo the interpreter-wide settings the code may have changed (cheap: no objects touched)."""
    sys.settrace(None)
    sys.setprofile(None)
    sys.setrecursionlimit(_RECURSION_LIMIT)
    signal.setitimer(signal.ITIMER_REAL, 0)


# --------------------------------------------------------------------------- the zygote
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2


_LIBC = []


def _prctl_libc() -> bool:
    """Load libc through ctypes once; False where that is not possible."""
    try:
        if not _LIBC:
            import ctypes

            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        return True
    except Exception:
        return False


def _prctl(option: int, value: int) -> bool:
    """prctl(2); False where it cannot be called (it is hardening only)."""
    return _prctl_libc() and _LIBC[0].prctl(option, value, 0, 0, 0) == 0


# --------------------------------------------------------------------------- seccomp
# A run shares its uid with the zygote and the forker, so the kernel would let it change their
# resource limits (prlimit), priority (setpriority), CPU affinity and scheduling, and I/O
# priority: a later honest run in the same worker would then fail for reasons of an earlier run.
# The forker installs this filter before it forks any child: those calls are refused unless they
# name the calling process itself. Kernel keyrings (a store that outlives processes, shared by
# every process of a uid) are refused entirely, as in Docker's default profile. (The zygote and
# the forker are not dumpable, so their /proc files belong to root and ptrace-like access to them
# is refused by the kernel itself.)

#: architecture -> (AUDIT_ARCH value, syscall numbers)
_SECCOMP_ARCHES = {
    "x86_64": (0xC000003E, {"add_key": 248, "request_key": 249, "keyctl": 250, "prlimit64": 302,
                            "setpriority": 141, "sched_setparam": 142, "sched_setscheduler": 144,
                            "sched_setaffinity": 203, "sched_setattr": 314, "ioprio_set": 251}),
    "aarch64": (0xC00000B7, {"add_key": 217, "request_key": 218, "keyctl": 219, "prlimit64": 261,
                             "setpriority": 140, "sched_setparam": 118, "sched_setscheduler": 119,
                             "sched_setaffinity": 122, "sched_setattr": 274, "ioprio_set": 30}),
}
_BPF_LD_ABS, _BPF_JEQ, _BPF_JGE, _BPF_RET = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW, _RET_KILL_PROCESS = 0x7FFF0000, 0x80000000
_RET_EPERM, _RET_ENOSYS = 0x00050000 | 1, 0x00050000 | 38
_X32_SYSCALL_BIT = 0x40000000
_SECCOMP_FILTER: list = []  # the program for this machine, built once


def _arg_low(i: int) -> int:
    """Offset of the low 32 bits of syscall argument `i` in struct seccomp_data (little-endian)."""
    return 16 + 8 * i


def seccomp_program(machine: str) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions; KeyError for an architecture without one."""
    audit_arch, nr = _SECCOMP_ARCHES[machine]
    prog: list = []
    fixups: list = []  # (instruction index, "jt"|"jf", label)

    def emit(code, k, jt=None, jf=None):
        for which, label in (("jt", jt), ("jf", jf)):
            if label is not None:
                fixups.append((len(prog), which, label))
        prog.append([code, 0, 0, k])

    labels: dict = {}
    emit(_BPF_LD_ABS, 4)  # arch
    emit(_BPF_JEQ, audit_arch, jf="kill")
    emit(_BPF_LD_ABS, 0)  # syscall number
    if machine == "x86_64":
        emit(_BPF_JGE, _X32_SYSCALL_BIT, jt="enosys")
    for name in ("add_key", "request_key", "keyctl"):
        emit(_BPF_JEQ, nr[name], jt="eperm")
    for name in ("prlimit64", "sched_setaffinity", "sched_setparam", "sched_setscheduler", "sched_setattr"):
        emit(_BPF_JEQ, nr[name], jt="self_only")
    emit(_BPF_JEQ, nr["setpriority"], jt="setpriority")
    emit(_BPF_JEQ, nr["ioprio_set"], jt="ioprio_set")
    emit(_BPF_RET, _RET_ALLOW)
    labels["self_only"] = len(prog)  # the pid argument must be 0: the caller
    emit(_BPF_LD_ABS, _arg_low(0))
    emit(_BPF_JEQ, 0, jt="allow", jf="eperm")
    labels["setpriority"] = len(prog)  # (PRIO_PROCESS, 0, prio) only
    emit(_BPF_LD_ABS, _arg_low(0))
    emit(_BPF_JEQ, 0, jf="eperm")
    emit(_BPF_LD_ABS, _arg_low(1))
    emit(_BPF_JEQ, 0, jt="allow", jf="eperm")
    labels["ioprio_set"] = len(prog)  # (IOPRIO_WHO_PROCESS, 0, prio) only
    emit(_BPF_LD_ABS, _arg_low(0))
    emit(_BPF_JEQ, 1, jf="eperm")
    emit(_BPF_LD_ABS, _arg_low(1))
    emit(_BPF_JEQ, 0, jt="allow", jf="eperm")
    for label, ret in (("allow", _RET_ALLOW), ("eperm", _RET_EPERM), ("enosys", _RET_ENOSYS),
                       ("kill", _RET_KILL_PROCESS)):
        labels[label] = len(prog)
        emit(_BPF_RET, ret)
    for index, which, label in fixups:
        offset = labels[label] - index - 1
        if not 0 <= offset <= 255:
            raise ValueError("seccomp program jump out of range")
        prog[index][1 if which == "jt" else 2] = offset
    return [tuple(i) for i in prog]


def install_seccomp() -> None:
    """Install the filter in this process (inherited by every process it forks); OSError if it cannot."""
    import ctypes

    if not _SECCOMP_FILTER:
        try:
            _SECCOMP_FILTER.extend(seccomp_program(os.uname().machine))
        except KeyError:
            raise OSError(f"no seccomp filter for the {os.uname().machine} architecture") from None

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    program = (SockFilter * len(_SECCOMP_FILTER))(*(SockFilter(*i) for i in _SECCOMP_FILTER))
    fprog = SockFprog(len(_SECCOMP_FILTER), program)
    if not _prctl_libc():
        raise OSError("libc cannot be loaded to install the seccomp filter")
    libc = _LIBC[0]
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def _probe_seccomp() -> str:
    """"ok" if the filter installs and refuses prlimit on another process; else why not.

    Checked once per worker, in a throwaway child: the forker installs the same filter and
    exits if it cannot (a worker never runs code without it where it was found to work).
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            install_seccomp()
            try:
                resource.prlimit(os.getppid(), resource.RLIMIT_CORE)
                verdict = b"the filter did not refuse prlimit on another process"
            except PermissionError:
                verdict = b"ok"
        except BaseException as e:  # noqa: BLE001
            verdict = f"{type(e).__name__}: {e}".encode()[:500]
        os.write(w, verdict)
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 1024)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return data.decode("utf-8", "replace") or "the probe died"


class _Capture:
    """Keeps the first `limit` characters of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, int(limit))
        self.keep = self.limit * 4 + 4
        self.buf = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.keep - len(self.buf)
        if room > 0:
            self.buf += data[:room]

    def text(self) -> str:
        raw = bytes(self.buf).decode("utf-8", "surrogateescape")
        if len(raw) <= self.limit and self.total == len(self.buf):
            return raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        kept = raw[:self.limit].encode("utf-8", "surrogateescape")
        cut = self.total - len(kept)
        return kept.decode("utf-8", "replace") + f"\n[... output truncated: {cut} more bytes]"


#: forker -> zygote messages: kind (b"P": forked, b"S": the child ended), the child's pid, its wait status
_FORKER_MSG = struct.Struct("=cii")
_FDS = struct.Struct("=4i")
#: how long the zygote waits for its forker to fork or to report a child's end before it replaces it
FORKER_TIMEOUT = 5.0
#: the forker's socket to the zygote, in the forker
_FORKER_FD = 3
#: bytes of a tool set's description per message to the forker (a SOCK_SEQPACKET message must fit
#: the socket's buffer)
_TOOLS_CHUNK = 32 << 10


def _forker_main(sock, pdeathsig: bool, seccomp: bool) -> None:
    """Body of the forker: learn tool sets, and for each request fork a child on the four pipe ends
    it carries, report the child's pid, wait for the child and report its wait status. Never returns.

    The forker is a fresh interpreter (see :class:`_Forker`) that never holds anything of a run: it
    receives tool descriptions and pipe ends, never a job, so the memory every child starts from
    holds nothing an earlier run sent or received. Forking from it rather than from the zygote also
    saves copy-on-write faults: a forked child shares its parent's memory, and every page either of
    them writes while the child lives is copied. The forker writes a few between forks; the zygote,
    which relays, captures and cleans up while a run goes on, would write hundreds, on every run.
    It exits when the zygote closes the socket.

    Messages from the zygote: ``b"t" + bytes`` (part of a tool set's JSON), ``b"T"`` (the tool set
    is complete: build its functions), ``b"F"`` with four descriptors (fork a child on them).
    """
    tool_sets: dict = {}
    try:
        if pdeathsig:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the runs get Python's KeyboardInterrupt
        _set_fixed_limits()
        if seccomp:
            install_seccomp()  # or exit: the zygote then has no forker and the run fails loudly
        gc.freeze()
        space = _socket.CMSG_SPACE(_FDS.size)
        pending = bytearray()
        while True:
            data, ancillary, flags, _ = sock.recvmsg(_TOOLS_CHUNK + 1, space)
            if not data or flags & (_socket.MSG_CTRUNC | _socket.MSG_TRUNC):
                break
            kind = data[:1]
            if kind == b"t":
                pending += data[1:]
                continue
            if kind == b"T":
                spec = json.loads(bytes(pending))
                pending.clear()
                tool_sets[spec["key"]] = make_tool_functions(spec["tools"], _call_tool)
                continue
            fds = [_FDS.unpack(raw) for level, kind_, raw in ancillary
                   if level == _socket.SOL_SOCKET and kind_ == _socket.SCM_RIGHTS and len(raw) == _FDS.size]
            if kind != b"F" or len(fds) != 1:
                break
            _reap_strays()
            pid = os.fork()
            if pid == 0:
                _child_main(tool_sets, *fds[0], pdeathsig)
                os._exit(70)
            _close(fds[0])
            sock.send(_FORKER_MSG.pack(b"P", pid, 0))
            # Say how the child ended before reaping it: if the code kills us in between, the zygote
            # (to which the unreaped child then passes) still learns it. Any other child that ends
            # meanwhile is a process the run attached to us (clone(CLONE_PARENT) makes its caller's
            # sibling): reaped as it ends, so that no zombie holds a pid of the worker's budget.
            while True:
                ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
                if ended.si_pid == pid:
                    break
                _reap_strays(ended.si_pid)
            sock.send(_FORKER_MSG.pack(b"S", pid, _wait_status(ended)))
            os.waitpid(pid, 0)
            _reap_strays()
    except BaseException:  # noqa: BLE001 - the zygote went, or a run's code signalled us: it starts another
        os._exit(1)
    os._exit(0)


def _forker_process(argv: list[str]) -> int:
    """``runner.py --forker``: the forker's own interpreter, started by the zygote (see :class:`_Forker`)
    with /dev/null on fds 0-2 and its socket to the zygote on fd :data:`_FORKER_FD`."""
    global _STREAMS
    _prctl(_PR_SET_DUMPABLE, 0)  # the runs (same uid) cannot ptrace it nor write its /proc files
    _STREAMS = _make_streams()
    sys.stdout, sys.stderr = _STREAMS
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _install_site_builtins()
    sock = _socket.socket(fileno=_FORKER_FD)
    _snapshot_runtime()
    _warm_up()
    gc.collect()
    _forker_main(sock, "--pdeathsig" in argv, "--seccomp" in argv)
    return 1


def _reap_strays(pid: int = -1) -> None:
    """Reap child `pid` (it has ended), or every ended child (-1) without waiting for the others."""
    while True:
        try:
            wpid, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if not wpid or pid != -1:
            return


def _wait_status(info) -> int:
    """A ``waitid()`` result as the status word ``waitpid()`` gives."""
    if info.si_code == os.CLD_EXITED:
        return (info.si_status & 0xFF) << 8
    return info.si_status | (0x80 if info.si_code == os.CLD_DUMPED else 0)


class _Forker:
    """The zygote's side of its forker process (see :func:`_forker_main`).

    The forker is a new interpreter (``runner.py --forker``, started with ``posix_spawn``), never a
    fork of the zygote: the zygote's memory holds the jobs, frames and replies of every run it
    served (freed objects included), and whatever the forker holds, every child it forks can read
    in its own memory (``/proc/self/mem``). A run that kills its forker gets a new one, from an
    interpreter that never held anything of a run either.
    """

    def __init__(self, pdeathsig: bool, seccomp: bool) -> None:
        mine, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), "--forker"]
        argv += ["--pdeathsig"] * pdeathsig + ["--seccomp"] * seccomp
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0), (os.POSIX_SPAWN_DUP2, 0, 1),
                   (os.POSIX_SPAWN_DUP2, 0, 2), (os.POSIX_SPAWN_DUP2, theirs.fileno(), _FORKER_FD)]
        try:
            # every other descriptor of the zygote (its channel, the runs' pipes) is close-on-exec
            pid = os.posix_spawn(sys.executable, argv, dict(os.environ), file_actions=actions)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self.tool_keys: set[str] = set()
        self.pid, self.sock, self.fd = pid, mine, mine.fileno()
        mine.settimeout(FORKER_TIMEOUT)  # sends; receive() polls first
        self._poll = select.poll()
        self._poll.register(self.fd, select.POLLIN)

    def teach(self, key: str, tools: list) -> bool:
        """Send tool set `key` (its JSON descriptions), for the children forked from now on."""
        data = json.dumps({"key": key, "tools": tools}, separators=(",", ":")).encode("utf-8", "replace")
        try:
            for i in range(0, len(data), _TOOLS_CHUNK):
                self.sock.send(b"t" + data[i:i + _TOOLS_CHUNK])
            self.sock.send(b"T")
        except OSError:
            return False
        self.tool_keys.add(key)
        return True

    def request(self, fds: list[int]) -> bool:
        """Ask for a child on `fds` (request pipe's write end, reply pipe's read end, stdout, stderr)."""
        try:
            self.sock.sendmsg([b"F"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _FDS.pack(*fds))])
            return True
        except OSError:
            return False

    def receive(self, timeout: float) -> tuple | None:
        """The next message within `timeout` seconds, None if the forker is gone or said nothing."""
        if not self._poll.poll(max(0, int(timeout * 1000))):
            return None
        try:
            data = self.sock.recv(64)
        except OSError:
            return None
        return _FORKER_MSG.unpack(data) if len(data) == _FORKER_MSG.size else None

    def stop(self) -> None:
        """Kill the forker and reap it (it may be reaped already)."""
        _kill(self.pid)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        self.sock.close()


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class _Child:
    """A child (asked of `forker`; its pid once the forker said it) and the zygote's ends of its pipes."""

    def __init__(self, forker: _Forker, req_r: int, resp_w: int, out_r: int, err_r: int) -> None:
        self.forker, self.pid = forker, None
        self.tool_keys = frozenset(forker.tool_keys)  # the tool sets it can run (known when it was forked)
        self.req_r, self.resp_w, self.out_r, self.err_r = req_r, resp_w, out_r, err_r


class Zygote:
    """Serves runs, one forked child each, and relays the children's tool calls.

    The children are forked by the zygote's forker (see :class:`_Forker`), never by the zygote
    itself: the zygote's memory holds what earlier runs sent and received, and a fork shares it
    with the child copy-on-write (which the zygote, writing hundreds of pages while its child
    runs, would also make slow).
    """

    def __init__(self, chan_in: int, chan_out: int, pid_namespace: bool, scrub: list[str] = (),
                 seccomp: str = "not probed") -> None:
        self.chan_in, self.chan_out = chan_in, chan_out
        self.seccomp = seccomp  # "ok" when every run gets the seccomp filter, else why not
        self.pid_namespace = pid_namespace
        self.scrub = [d for d in scrub if os.path.isdir(d)]
        # mode, times and extended attributes to put back (and check) after each run
        self.scrub_stats = {d: (os.stat(d), frozenset(_xattrs(d))) for d in self.scrub}
        self.inbuf, self.backlog = FrameBuffer(), []
        self.tool_specs: dict[str, list] = {}  # tools_key -> the tools' descriptions, as the parent sent them
        self.spare: _Child | None = None  # forked ahead, waiting for the next job
        self.forker: _Forker | None = None
        self.leftovers: list[int] | None = None  # what the last clean-up killed (None: everyone, kill(-1))

    def send(self, msg: dict) -> None:
        _write_all(self.chan_out, encode_frame(msg))

    def serve(self) -> None:
        self.send({"op": "ready", "pid": os.getpid(), "pid_namespace": self.pid_namespace,
                   "python": sys.version.split()[0], "protocol": PROTOCOL_VERSION, "runner": runner_digest(),
                   "seccomp": self.seccomp, "uid": os.getuid()})
        try:
            self._new_forker()  # it starts up while the parent prepares the first job
            while True:
                msg = _read_frame(self.chan_in, self.inbuf, self.backlog)
                if msg is None or msg.get("op") == "exit":
                    return
                if msg.get("op") == "run":
                    if not self.run(msg):  # the parent went away mid-run
                        return
                elif msg.get("op") != "reply":  # a reply to a call of a run that already ended is dropped
                    raise ProtocolError(f"unexpected message {msg.get('op')!r} from the parent")
        finally:
            if self.spare is not None:
                self._discard(self.spare)
            self._drop_forker()

    def _learn_tools(self, job: dict) -> None:
        key = job.get("tools_key", "")
        if key not in self.tool_specs:
            if not isinstance(job.get("tools"), list):
                raise ProtocolError(f"run names unknown tool set {key!r} without sending it")
            self.tool_specs[key] = job["tools"]

    # -- the forker ------------------------------------------------------------------------------
    def _new_forker(self) -> _Forker:
        self.forker = _Forker(pdeathsig=not self.pid_namespace, seccomp=self.seccomp == "ok")
        return self.forker

    def _forker_for(self, key: str) -> _Forker:
        """The forker, knowing tool set `key`: a new one if there is none (a run killed it), taught the
        set if it does not know it yet."""
        forker = self.forker if self.forker is not None else self._new_forker()
        if key not in forker.tool_keys and not forker.teach(key, self.tool_specs.get(key, [])):
            self._drop_forker()
            forker = self._new_forker()
            if not forker.teach(key, self.tool_specs.get(key, [])):
                raise RuntimeError("the forker does not learn tool sets")
        return forker

    def _drop_forker(self) -> None:
        forker, self.forker = self.forker, None
        if forker is not None:
            forker.stop()

    def _forker_message(self, timeout: float) -> tuple | None:
        """The forker's next message within `timeout`; None (and the forker dropped) if it is gone or stuck."""
        msg = self.forker.receive(timeout) if self.forker is not None else None
        if msg is None:
            self._drop_forker()
        return msg

    def _spawn(self, key: str) -> _Child:
        """Ask the forker for a child that sets itself up and waits for a job.

        The pid comes later (see :meth:`_forked`): the fork goes on while this process waits
        for the next job.
        """
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ours, theirs = [req_r, resp_w, out_r, err_r], [req_w, resp_r, out_w, err_w]
        try:
            forker = self._forker_for(key)
            if not forker.request(theirs):  # gone: start another, once
                self._drop_forker()
                forker = self._forker_for(key)
                if not forker.request(theirs):
                    raise RuntimeError("the forker does not take requests")
        except BaseException:
            _close(ours)
            raise
        finally:
            _close(theirs)
        for fd in ours:
            os.set_blocking(fd, False)
        return _Child(forker, req_r, resp_w, out_r, err_r)

    def _forked(self, child: _Child) -> bool:
        """Whether `child` was forked (its pid known from its forker, which still runs)."""
        if child.pid is None and child.forker is self.forker is not None:
            msg = self._forker_message(FORKER_TIMEOUT)
            if msg is not None and msg[0] == b"P":
                child.pid = msg[1]
            else:
                self._drop_forker()
        return child.pid is not None and child.forker is self.forker

    def _reap_child(self, pid: int) -> int | None:
        """Wait for child `pid` (killed or dying) to end; its wait status if known."""
        while self.forker is not None:
            msg = self._forker_message(FORKER_TIMEOUT)
            if msg is not None and msg[0] == b"S" and msg[1] == pid:
                return msg[2]
        try:  # the forker is gone: its child came to us
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return None

    def _take_child(self, job: dict) -> _Child:
        """The spare child if it can run `job` (it knows the tools and still lives), else a new one."""
        key = job.get("tools_key", "")
        spare, self.spare = self.spare, None
        if spare is not None:
            if key in spare.tool_keys and self._forked(spare) and not _readable(self.forker.fd):
                return spare  # a forker that said nothing since the fork: the spare lives
            self._discard(spare)
        for _ in range(2):
            child = self._spawn(key)
            if self._forked(child):
                return child
            self._discard(child)
        raise RuntimeError("the forker does not fork")

    def _discard(self, child: _Child) -> None:
        """Kill an unused child (it cannot run the job at hand), reap it, close its pipes.

        A child whose forker went before it said the pid reads the end of its pipes and exits.
        """
        if self._forked(child):
            _kill(child.pid)
            self._reap_child(child.pid)
        _close([child.req_r, child.resp_w, child.out_r, child.err_r])

    # -- one run -------------------------------------------------------------------------------
    def run(self, job: dict) -> bool:
        """One run: relay, capture, time out, report, clean up. False if the parent is gone.

        When the code reports normally, the report goes out first and the clean-up (the child's
        exit, leftovers killed, writable places scrubbed) follows, before the next run is read.
        """
        run_id = job.get("run")
        timeout = float(job.get("timeout", 10))
        started = time.monotonic()
        deadline = started + timeout
        self._learn_tools(job)
        limit = int(job.get("output_limit", 10_000))
        child = self._take_child(job)
        # From here on, whatever happens is the run's: the parent retries a job (on another worker)
        # only when this never came, and nothing of the run's code can have happened then.
        self.send({"op": "started", "run": run_id})
        pid, req_r, resp_w, out_r, err_r = child.pid, child.req_r, child.resp_w, child.out_r, child.err_r
        fds = [req_r, resp_w, out_r, err_r]
        captures = {out_r: _Capture(limit), err_r: _Capture(limit)}
        open_fds = {req_r, out_r, err_r}
        to_child = bytearray(encode_trusted({k: v for k, v in job.items() if k not in ("op", "tools")}))
        pending = None  # id of the tool call the parent is answering
        calls = refused = 0
        max_calls = int(job.get("max_tool_calls", MAX_TOOL_CALLS))
        max_depth = int(job.get("max_depth", MAX_DEPTH))
        budget = int(job.get("max_tool_bytes", MAX_TOOL_BYTES))
        bytes_left = budget
        # A frame from the run's process is a call (within what is left of the budget) or its report:
        # anything larger, or holding more items, is refused before it is decoded.
        reqbuf = FrameBuffer(child_frame_limit(bytes_left), CHILD_FRAME_ITEMS)
        done, done_size = None, 0
        verdict = problem = None  # why the run ended early: "timeout", "protocol", "parent_gone"
        exited, exit_status = False, None
        poller = select.poll()
        for fd in (self.chan_in, req_r, out_r, err_r):
            poller.register(fd, select.POLLIN)
        poller.register(resp_w, select.POLLOUT)  # the job, first
        forker_fd = self.forker.fd  # it reports the child's exit; if it goes, the child is ours to wait for
        poller.register(forker_fd, select.POLLIN)

        def read_stream(fd: int) -> list[tuple[dict, int]]:
            """Read what `fd` has: output to its capture, messages decoded (with their sizes). EOF closes it."""
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return []
            if not data:
                poller.unregister(fd)
                open_fds.discard(fd)
                return []
            if fd in captures:
                captures[fd].feed(data)
                return []
            try:
                return reqbuf.feed_sized(data)
            except ProtocolError as e:
                raise _Violation(str(e)) from None

        def to_code(reply: dict) -> None:
            """Queue a reply for the child's pending call."""
            if not to_child:
                poller.register(resp_w, select.POLLOUT)
            to_child.extend(encode_trusted(reply))

        def refuse(message: str) -> None:
            nonlocal refused
            refused += 1
            to_code({"ok": False, "error_type": "BudgetExceeded", "message": message, "bytes_left": bytes_left})

        try:
            while not exited:
                left = deadline - time.monotonic()
                if left <= 0:
                    verdict = "timeout"
                    break
                wait = left if forker_fd is not None else min(left, 0.01)
                for fd, _ in poller.poll(int(wait * 1000) + 1):
                    if fd == forker_fd:
                        msg = self._forker_message(0)
                        if msg is None:
                            poller.unregister(forker_fd)
                            forker_fd = None
                        elif msg[0] == b"S" and msg[1] == pid:
                            exited, exit_status = True, msg[2]
                    elif fd == resp_w:
                        try:
                            del to_child[:os.write(resp_w, to_child)]
                        except BlockingIOError:
                            pass
                        except OSError:  # the child closed its end: it will not read the reply
                            to_child.clear()
                        if not to_child:
                            poller.unregister(resp_w)
                    elif fd == self.chan_in:
                        data = os.read(self.chan_in, 1 << 16)
                        if not data:
                            verdict = "parent_gone"
                            break
                        for msg, size in self.inbuf.feed_sized(data):
                            if msg.get("op") != "reply":
                                raise ProtocolError(f"unexpected message {msg.get('op')!r} during a run")
                            if msg.get("run") != run_id or pending is None or msg.get("id") != pending:
                                continue  # the answer to a call of an earlier run
                            pending = None
                            bytes_left -= size  # results count against the budget too (the parent checks it)
                            reqbuf.max_frame = child_frame_limit(bytes_left)
                            reply = {k: msg[k] for k in ("ok", "value", "error_type", "message") if k in msg}
                            to_code({**reply, "bytes_left": bytes_left})
                    else:
                        for msg, size in read_stream(fd):
                            op = msg.get("op")
                            if op == "call" and pending is None and done is None:
                                name, args = msg.get("name"), msg.get("args")
                                if not isinstance(name, str) or not isinstance(args, dict) or len(name) > 200:
                                    raise _Violation("malformed tool call")
                                if json_depth(args, max_depth) > max_depth:
                                    raise _Violation(f"tool call arguments nested deeper than {max_depth} levels")
                                size, items = json_measure(args)  # what the run's process measured
                                if calls >= max_calls:
                                    refuse(f"{name}(): the run has made {calls:,} tool calls, its budget "
                                           f"(max_tool_calls {max_calls:,})")
                                elif size > bytes_left:
                                    refuse(f"{name}(): arguments of {size:,} bytes exceed what is left of the run's "
                                           f"budget for tool data ({max(0, bytes_left):,} of {budget:,} bytes)")
                                elif items > MAX_ITEMS:
                                    refuse(f"{name}(): arguments of up to {items:,} JSON items exceed the "
                                           f"{MAX_ITEMS:,} a call may send")
                                else:
                                    try:
                                        frame = encode_frame({"op": "call", "run": run_id, "id": calls + 1, "name": name,
                                                              "args": args, "bytes_left": bytes_left - size})
                                    except (TypeError, ValueError, RecursionError) as e:
                                        raise _Violation(f"a tool call that cannot be passed on ({e})") from None
                                    calls += 1
                                    bytes_left -= size
                                    reqbuf.max_frame = child_frame_limit(bytes_left)
                                    pending = calls
                                    _write_all(self.chan_out, frame)
                            elif op == "done" and done is None:
                                if size > MAX_REPORT:
                                    raise _Violation(f"a report of {size:,} bytes (the limit is {MAX_REPORT:,})")
                                done = msg
                                done_size = size
                                verdict = "done"
                            else:
                                raise _Violation(f"unexpected {op!r} message")
                        if reqbuf.broken is not None and verdict is None:  # bytes after its last good frame
                            raise _Violation(str(reqbuf.broken))
                if verdict:
                    break
                if not open_fds:  # the child closed its pipes or is gone: it cannot report any more
                    break
                if forker_fd is None and not exited:
                    try:
                        wpid, status = os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:  # reaped by the forker before it went
                        wpid, status = pid, None
                    if wpid:
                        exited, exit_status = True, status
        except _Violation as v:
            verdict, problem = "protocol", str(v)
        except BaseException:
            self._stop_processes(pid, exited, exit_status)
            _close(fds)
            raise

        def report() -> dict:
            out = {"op": "done", "run": run_id, "stdout": captures[out_r].text(),
                   "stderr": captures[err_r].text(), "duration_s": time.monotonic() - started,
                   "tool_calls": calls, "tool_bytes": budget - bytes_left, "refused_calls": refused}
            if verdict == "timeout":
                out.update(status="timeout", error_type="Timeout",
                           error=f"the code ran past the {timeout:g} s time limit")
            elif verdict == "protocol":
                out.update(status="sandbox_error", error_type="SandboxError",
                           error=f"the code broke the sandbox protocol: {problem}")
            elif done is not None:
                out.update(_checked_report(done, done_size, job.get("mode", "exec"), max_depth))
            else:
                out.update(status="sandbox_error", error_type="SandboxError", error=_death(exit_status, job))
            return out

        if verdict == "done":
            # The child flushed its output before reporting: all of it is in the pipes already.
            for fd in (out_r, err_r):
                while fd in open_fds and _readable(fd):
                    read_stream(fd)
            self._send_report(report())
            exit_status, failure = self._stop_processes(pid, exited, exit_status)
            _close(fds)
            return self._finish(run_id, job.get("tools_key", ""), failure)
        exit_status, failure = self._stop_processes(pid, exited, exit_status)
        # Every writer is gone now: read what is left in the pipes (bounded, to be safe).
        stop = time.monotonic() + 1.0
        while verdict in (None, "timeout") and open_fds and time.monotonic() < stop:
            for fd in list(open_fds):
                try:
                    for msg, size in read_stream(fd):
                        if msg.get("op") == "done" and done is None and verdict is None:
                            done, done_size = msg, size
                except _Violation:
                    open_fds.discard(fd)
            if open_fds:
                poller.poll(10)
        _close(fds)
        if verdict == "parent_gone":
            return False
        self._send_report(report())
        return self._finish(run_id, job.get("tools_key", ""), failure)

    def _send_report(self, out: dict) -> None:
        """Send a run's report; one that cannot be encoded is the run's protocol violation."""
        try:
            frame = encode_frame(out)
        except (TypeError, ValueError, RecursionError) as e:
            keep = {k: out[k] for k in ("op", "run", "stdout", "stderr", "duration_s", "tool_calls", "tool_bytes",
                                        "refused_calls") if k in out}
            frame = encode_frame({**keep, "status": "sandbox_error", "error_type": "SandboxError",
                                  "error": f"the code broke the sandbox protocol: its report cannot be sent ({e})"})
        _write_all(self.chan_out, frame)

    # -- clean-up --------------------------------------------------------------------------------
    def _finish(self, run_id, key: str, failure: str | None) -> bool:
        """After the report: empty the writable places and tell the parent whether this worker is
        as clean as it started (``{"op": "clean", "ok": ...}``, which the parent awaits before it
        sends the next job). A clean-up that failed in any way retires the worker: False (it
        serves no more runs, and the parent starts another), so that no failure falls on the next run."""
        if failure is None:
            failure = self._scrub()
        msg = {"op": "clean", "run": run_id, "ok": failure is None}
        if failure is not None:
            msg["error"] = failure[:2000]
        self.send(msg)
        if failure is not None:
            return False
        self.spare = self._spawn(key)  # its fork and set-up overlap with the parent's work
        return True

    def _stop_processes(self, pid: int, exited: bool, exit_status: int | None) -> tuple[int | None, str | None]:
        """Kill the run's child and everything it left, and reap them: (the child's exit status,
        None, or why not every process of the run is gone)."""
        try:
            if not exited:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._kill_leftovers(pid)
            if not exited:
                exit_status = self._reap_child(pid)
            if not self._reap_leftovers():
                return exit_status, "processes of the run were still alive after the clean-up"
        except Exception as e:  # noqa: BLE001 - whatever it was, this worker is not known to be clean
            return exit_status, f"the clean-up failed ({type(e).__name__}: {e})"
        return exit_status, None

    def _kill_leftovers(self, child: int) -> None:
        """Kill every process the run left behind but the forker (they are reaped after), and make
        sure the forker runs (a run's code may have stopped it)."""
        forker = self.forker.pid if self.forker is not None else None
        self.leftovers = None
        if self.pid_namespace:
            try:  # most runs leave nothing: the child, killed before we look, can fork no more
                if {int(p) for p in os.listdir("/proc") if p.isdigit()} <= {1, forker, child}:
                    self.leftovers = []
            except OSError:
                pass
            if self.leftovers is None:  # stop everyone else first, so that nothing forks while we look
                try:
                    os.kill(-1, signal.SIGSTOP)  # we are PID 1 of our own namespace: not us
                    self.leftovers = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, forker)]
                except (OSError, ValueError):  # no /proc to look in: kill everyone, the forker too
                    self._drop_forker()
                    _kill(-1)
                    return
                for p in self.leftovers:
                    _kill(p)
        else:
            try:
                os.killpg(child, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            for p in _descendants(os.getpid()):  # what left the process group (we are its subreaper)
                if p != forker:
                    _kill(p)
        if forker is not None:
            _kill(forker, signal.SIGCONT)  # it reaps the child and forks the next

    def _reap_leftovers(self) -> bool:
        """Reap the killed leftovers: True when none is left alive, False if some still are after 2 s.

        A zombie counts as gone: it holds nothing but its pid. Ours are reaped here; those of the
        forker (a run can attach processes to it with ``clone(CLONE_PARENT)``) the forker reaps.
        """
        stop = time.monotonic() + 2.0
        while True:
            try:
                wpid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True  # no children left (not even the forker)
            if wpid:
                if self.forker is not None and wpid == self.forker.pid:  # a run's code killed it
                    self._drop_forker()
                continue
            if not self._leftovers_remain():
                return True
            if time.monotonic() > stop:
                return False
            if not self.pid_namespace:  # new orphans may have come to us since the first sweep
                forker = self.forker.pid if self.forker is not None else None
                for p in _descendants(os.getpid()):
                    if p != forker:
                        _kill(p)
            time.sleep(0.0002)

    def _leftovers_remain(self) -> bool:
        forker = self.forker.pid if self.forker is not None else None
        if not self.pid_namespace:
            return any(p != forker and _alive(p) for p in _descendants(os.getpid()))
        if self.leftovers is None:  # killed with kill(-1): wait until we have no child left at all
            return True
        # stopped when listed, so nothing new can have appeared since
        return any(_alive(p) for p in self.leftovers)

    def _scrub(self) -> str | None:
        """Erase what the run left where the next run could find it: the entries of the writable
        places (/tmp, /dev/shm, /dev/mqueue: files, POSIX shared memory and message queues) and what
        it set on those directories themselves (mode, extended attributes, times), and SysV IPC
        objects. Then check: every place empty, its mode and extended attributes as they were at
        start, no SysV IPC object left. None if so, else why not (the worker is then retired)."""
        deadline = time.monotonic() + SCRUB_SECONDS
        try:
            for d in self.scrub:
                initial, xattrs = self.scrub_stats[d]
                _reset_directory(d, initial)  # first: the run may have made it unreadable
                _empty_directory(d, deadline)
                _reset_directory(d, initial)
                left = os.listdir(d)
                if left:
                    return f"{d} is not empty after the clean-up ({len(left)} entries, as {left[0][:100]!r})"
                mode = os.stat(d).st_mode
                if mode != initial.st_mode:
                    return f"{d} has mode {mode:o}, not {initial.st_mode:o}, after the clean-up"
                extra = set(_xattrs(d)) - xattrs
                if extra:
                    return f"{d} has extended attributes after the clean-up ({min(extra)[:100]!r})"
            if self.pid_namespace:  # a private IPC namespace: every object in it is the run's
                _remove_sysv_ipc()
        except Exception as e:  # noqa: BLE001 - whatever it was (RecursionError, MemoryError too)
            return f"the clean-up of the writable places failed ({type(e).__name__}: {str(e)[:300]})"
        return None


#: longest the clean-up of the writable places may take before the worker is retired instead
SCRUB_SECONDS = 3.0
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _empty_directory(path: str, deadline: float) -> None:
    """Delete everything inside the directory `path` (which stays).

    Iterative and relative to directory descriptors (``openat``, ``unlinkat``): neither the depth
    of a tree nor the length of its paths matters (a run can nest directories thousands deep, or
    leave a file at the end of a path far longer than PATH_MAX, which any call taking a whole path
    refuses), and one directory is open at a time: going back up opens ``..`` and checks that it is
    the directory it came from. Directories the run locked (mode 0) are made accessible first.
    Raises OSError if anything cannot be removed, TimeoutError past `deadline`. Only ever called
    once every process of the run is gone: nothing changes the tree meanwhile.
    """
    cur = os.open(path, _DIR_FLAGS)
    above: list = []  # per directory entered: (its name in its parent, the parent's (st_dev, st_ino))
    todo: list = [None]  # per directory entered: the subdirectories still to empty (None: not listed yet)
    try:
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} took longer than {SCRUB_SECONDS:g} s to empty")
            if todo[-1] is None:
                with os.scandir(cur) as it:
                    entries = list(it)
                subdirs = []
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.name)
                    else:
                        os.unlink(entry.name, dir_fd=cur)
                todo[-1] = subdirs
                del entries
            if todo[-1]:
                name = todo[-1].pop()
                st = os.stat(name, dir_fd=cur, follow_symlinks=False)
                if st.st_mode & 0o700 != 0o700:
                    os.chmod(name, 0o700, dir_fd=cur)  # a directory (lstat said so), not a link
                here = os.fstat(cur)
                sub = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=cur)
                os.close(cur)
                cur = sub
                above.append((name, (here.st_dev, here.st_ino)))
                todo.append(None)
            elif above:
                name, ident = above.pop()
                todo.pop()
                parent = os.open("..", _DIR_FLAGS, dir_fd=cur)
                os.close(cur)
                cur = parent
                st = os.fstat(cur)
                if (st.st_dev, st.st_ino) != ident:
                    raise OSError(f"a directory under {path} is not where it was")
                os.rmdir(name, dir_fd=cur)
            else:
                return
    finally:
        os.close(cur)


def _xattrs(path: str) -> list[str]:
    try:
        return os.listxattr(path)
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (a zombie is gone but for its pid)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:  # no /proc to read: ask the kernel (a zombie then counts as alive)
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    try:
        data = os.read(fd, 1024)
    except OSError:  # it went while we read
        return False
    finally:
        os.close(fd)
    end = data.rfind(b")")  # the state follows the command name, which may hold anything
    return end < 0 or data[end + 2:end + 3] not in (b"Z", b"X", b"")


def _reset_directory(path: str, initial: os.stat_result) -> None:
    """Put a scrubbed directory back as it was: a run that owns it can change its mode, its
    times (a 64-bit message in atime) and its extended attributes, which outlive the files."""
    try:
        os.chmod(path, initial.st_mode & 0o7777)
    except OSError:
        pass  # not ours (docker's /tmp belongs to root): then the run could not change it either
    try:
        for name in os.listxattr(path):
            try:
                os.removexattr(path, name)
            except OSError:
                pass
    except OSError:
        pass
    try:
        os.utime(path, ns=(initial.st_atime_ns, initial.st_mtime_ns))
    except OSError:
        pass


def _remove_sysv_ipc() -> None:
    """Remove SysV shared memory, semaphores and message queues (they outlive processes); OSError
    if any is left after."""
    found = _sysv_ipc_objects()
    if not found:
        return
    if not _prctl_libc():
        raise OSError("libc cannot be loaded to remove SysV IPC objects")
    libc = _LIBC[0]
    for kind, ident in found:
        if kind == "shm":
            libc.shmctl(ident, 0, None)  # IPC_RMID
        elif kind == "sem":
            libc.semctl(ident, 0, 0)
        else:
            libc.msgctl(ident, 0, None)
    left = _sysv_ipc_objects()
    if left:
        raise OSError(f"{len(left)} SysV IPC objects could not be removed (one is {left[0][0]} {left[0][1]})")


def _sysv_ipc_objects() -> list[tuple[str, int]]:
    """(kind, id) of every SysV IPC object of this IPC namespace (none known where /proc says nothing)."""
    found = []
    for kind in ("shm", "sem", "msg"):
        try:
            fd = os.open(f"/proc/sysvipc/{kind}", os.O_RDONLY)
            try:
                text = os.read(fd, 1 << 16)
                while text.count(b"\n") > 1:  # a header line, then one per object: read them all
                    more = os.read(fd, 1 << 16)
                    if not more:
                        break
                    text += more
            finally:
                os.close(fd)
            ids = [int(line.split()[1]) for line in text.splitlines()[1:] if line.split()]
        except (OSError, ValueError, IndexError):
            continue
        found += [(kind, i) for i in ids]
    return found


#: the fields of a child's report, with the types they must have
_REPORT_TEXT = {"answer_type": 200, "value_type": 200, "error_type": 200, "error": MAX_ERROR_TEXT + 100,
                "traceback": MAX_ERROR_TEXT + 100}


def _checked_report(done: dict, size: int, mode: str, max_depth: int) -> dict:
    """The fields of a child's report (a frame of `size` bytes), checked: the code runs in that
    process and may have written the report itself. Anything out of shape becomes the run's
    sandbox error; only the field of the run's mode (``answer`` for exec, ``value`` for evaluate)
    is passed on, within :data:`MAX_ANSWER`."""
    out = {}
    status = done.get("status")
    if status not in ("ok", "error", "sandbox_error"):
        return {"status": "sandbox_error", "error_type": "SandboxError", "error": "malformed report: bad status"}
    out["status"] = status
    for key, longest in _REPORT_TEXT.items():
        value = done.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > longest:
            return {"status": "sandbox_error", "error_type": "SandboxError", "error": f"malformed report: {key}"}
        out[key] = value
    problem = report_value_problem(done, size, mode, max_depth)
    if problem:
        return {"status": "sandbox_error", "error_type": "SandboxError", "error": problem}
    key = "value" if mode == "evaluate" else "answer"
    if key in done:
        out[key] = done[key]
    return out


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


def _close(fds: list) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


class _Violation(Exception):
    """The code's process broke the zygote-child protocol."""


def _children(pid: int) -> list[int]:
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return out


def _descendants(pid: int) -> list[int]:
    out, todo = [], _children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def _death(status: int | None, job: dict) -> str:
    if status is None:
        return "the code's process vanished without a report"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = {signal.SIGKILL: f" (out of memory, over the {job.get('memory_mb')} MiB limit, or killed)",
                signal.SIGXCPU: " (CPU time limit)", signal.SIGSEGV: " (crashed)"}.get(sig, "")
        return f"the code's process was killed by {name}{hint} before it reported"
    return f"the code's process exited with status {os.WEXITSTATUS(status)} before it reported"


def _install_site_builtins() -> None:
    """``help``, ``exit`` and ``quit``, which ``site`` would add (the runner starts with -S)."""
    try:
        import _sitebuiltins
    except ImportError:
        return
    for name, eof in (("exit", "Ctrl-D (i.e. EOF)"), ("quit", "Ctrl-D (i.e. EOF)")):
        if not hasattr(builtins, name):
            setattr(builtins, name, _sitebuiltins.Quitter(name, eof))
    if not hasattr(builtins, "help"):
        builtins.help = _sitebuiltins._Helper()


def _warm_up() -> None:
    """Do once in the zygote what every run does, so that forked children find the lazy
    initialisations (the compiler's, the traceback machinery's, io's) done: a fresh child that
    compiles for the first time pays milliseconds of them, on every run."""
    ns = {"__name__": "__main__", "__builtins__": builtins}
    source = "answer = [1, 'x', {'k': None}]\ntry:\n    1 / 0\nexcept ZeroDivisionError as e:\n    err = e\n"
    linecache.cache[CODE_FILENAME] = (len(source), None, source.splitlines(True), CODE_FILENAME)
    exec(compile(source, CODE_FILENAME, "exec"), ns)
    _jsonable(ns["answer"])
    _jsonable({1, 2})
    _format_exception(ns["err"])
    del linecache.cache[CODE_FILENAME]
    FrameBuffer().feed(encode_frame({"op": "warm", "args": {"a": [1.5, None, True]}}))
    make_tool_functions([{"name": "warm", "parameters": {"properties": {"a": {}, "b": {"default": 1}},
                                                         "required": ["a"]}}], _call_tool)
    marshal.loads(encode_trusted({"op": "warm", "value": [1.5, None, True, "x"]})[4:])
    for stream in _STREAMS:  # fds 1 and 2 are /dev/null in the zygote; this sets up their encoders
        stream.write("warm\n")
        stream.flush()
    for which in (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_FSIZE, resource.RLIMIT_NPROC):
        resource.getrlimit(which)


def _make_streams() -> tuple:
    """sys.stdout and sys.stderr of every run, over fds 1 and 2 (unbuffered below the text layer, so
    nothing written before a fork can be pending in them)."""
    return tuple(io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True) for fd in (1, 2))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--forker" in argv:
        return _forker_process(argv)
    chan_in, chan_out = os.dup(0), os.dup(1)
    for fd in (chan_in, chan_out):
        os.set_inheritable(fd, False)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    global _STREAMS
    _STREAMS = _make_streams()
    sys.stdout, sys.stderr = _STREAMS
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 ignores it then; the forker gives the runs Python's
    # Kill everything else with kill(-1) only where that is confined to our own PID namespace.
    pid_namespace = "--pid-namespace" in argv and os.getpid() == 1
    if not pid_namespace:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # orphans of a run come to us, to be killed and reaped
    _prctl(_PR_SET_DUMPABLE, 0)  # the runs (same uid) cannot ptrace the zygote
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _install_site_builtins()
    scrub = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--scrub"]
    # The runs' children are forked by the forker, a new interpreter that does its own warm-up.
    zygote = Zygote(chan_in, chan_out, pid_namespace, scrub, seccomp=_probe_seccomp())
    try:
        zygote.serve()
    except BaseException as e:  # noqa: BLE001 - tell the parent why, then die
        try:
            zygote.send({"op": "fatal", "error": "".join(traceback.format_exception(e))[-4000:]})
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
