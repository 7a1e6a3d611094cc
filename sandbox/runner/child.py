"""The run's side: the process forked for one run sets itself up, runs the code and reports.

Everything here runs in a child of the forker (see ``forker``): the tools as Python functions
that send their calls over the child's private pipes (:func:`make_tool_functions`,
:class:`_ChildChannel`), the limits of the job, the code's execution in a fresh namespace and its
report (:func:`_execute`, :func:`_report`, :func:`_jsonable`), and what the forker prepares once
so that no child pays for it (:func:`_warm_up`, the module snapshot a broken report restores).
Standard library only; the parent never imports it (the tests do, for :func:`make_tool_functions`).
"""

from __future__ import annotations

import _thread
import builtins
import io
import json
import keyword
import linecache
import marshal
import os
import resource
import signal
import sys
import traceback

from .seccomp import _PR_SET_DUMPABLE, _PR_SET_PDEATHSIG, _prctl
from .wire import (
    MAX_ANSWER,
    MAX_ERROR_TEXT,
    MAX_ITEMS,
    RUNNER_DIR,
    FrameBuffer,
    _read_trusted,
    _utf8_size,
    _write_all,
    encode_frame,
    encode_trusted,
    json_depth,
    json_items,
    json_measure,
)

CODE_FILENAME = "<code>"
TOOLS_FILENAME = "<sca-tools>"


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
        self.max_depth = self.bytes_left = 0  # no call leaves before the job's budget is known

    def budget(self, job: dict) -> None:
        self.max_depth = int(job["max_depth"])
        self.bytes_left = int(job["max_tool_bytes"])

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
#: sys.stdout and sys.stderr of every run, made once in the forker over fds 1 and 2 (unbuffered below the
#: text layer, so nothing written in the forker can be pending in them)
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



def _set_limits(job: dict) -> None:
    """The limits that depend on the job (see also :func:`_set_fixed_limits`)."""
    _setlimit(resource.RLIMIT_AS, int(job["memory_mb"]) << 20)
    cpu = int(float(job["timeout"])) + 1
    _setlimit(resource.RLIMIT_CPU, cpu, cpu + 2)
    if job["nproc_rlimit"]:
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


def _jsonable(value, max_depth: int) -> tuple:
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
    while frames and (frames[-1].filename == TOOLS_FILENAME or os.path.dirname(frames[-1].filename) == RUNNER_DIR):
        frames.pop()  # a tool's generated function, or the runner's own modules
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
    code, mode = job["code"], job["mode"]
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
            value = fn(job["answer"]) if _arity(fn) else fn()
    except BaseException as e:  # noqa: BLE001 - everything the code raises is reported
        raised = e
    return ns, value, raised


def _report(job: dict, ns: dict, value: object, raised: BaseException | None) -> dict:
    """The report fields of a finished run."""
    mode = job["mode"]
    depth = int(job["max_depth"])
    report: dict = {"status": "ok"}
    if raised is not None:
        report.update(status="sandbox_error" if isinstance(raised, MemoryError) else "error",
                      error_type=_exception_name(raised), error=_cut(_safe_str(raised)),
                      traceback=_cut(_format_exception(raised)))
        if isinstance(raised, MemoryError) and not report["error"]:
            report["error"] = f"out of memory (the limit is {job['memory_mb']} MiB)"
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
        streams = _STREAMS  # made in the forker (fds 1 and 2 are the pipes now); flushed after the code
        sys.stdout, sys.stderr = streams
        _CHANNEL = _ChildChannel(req_w, resp_r)
        job = _read_trusted(resp_r)
        if job is None:  # discarded unused
            os._exit(0)
        _CHANNEL.budget(job)
        _set_limits(job)
        ns, value, raised = _execute(job, tool_sets[job["tools_key"]])
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


#: modules the child's report path uses, as they were in the forker: a run that monkeypatched
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


# --------------------------------------------------------------------------- prepared once, in the forker
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
    """Do once in the forker what every run does, so that forked children find the lazy
    initialisations (the compiler's, the traceback machinery's, io's) done: a fresh child that
    compiles for the first time pays milliseconds of them, on every run."""
    ns = {"__name__": "__main__", "__builtins__": builtins}
    source = "answer = [1, 'x', {'k': None}]\ntry:\n    1 / 0\nexcept ZeroDivisionError as e:\n    err = e\n"
    linecache.cache[CODE_FILENAME] = (len(source), None, source.splitlines(True), CODE_FILENAME)
    exec(compile(source, CODE_FILENAME, "exec"), ns)
    _jsonable(ns["answer"], 8)  # any depth past the sample's: the whole path runs
    _jsonable({1, 2}, 8)
    _format_exception(ns["err"])
    del linecache.cache[CODE_FILENAME]
    FrameBuffer().feed(encode_frame({"op": "warm", "args": {"a": [1.5, None, True]}}))
    make_tool_functions([{"name": "warm", "parameters": {"properties": {"a": {}, "b": {"default": 1}},
                                                         "required": ["a"]}}], _call_tool)
    marshal.loads(encode_trusted({"op": "warm", "value": [1.5, None, True, "x"]})[4:])
    for stream in _STREAMS:  # fds 1 and 2 are /dev/null in the forker; this sets up their encoders
        stream.write("warm\n")
        stream.flush()
    for which in (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_FSIZE, resource.RLIMIT_NPROC):
        resource.getrlimit(which)


def _make_streams() -> tuple:
    """sys.stdout and sys.stderr of every run, over fds 1 and 2 (unbuffered below the text layer, so
    nothing written before a fork can be pending in them)."""
    return tuple(io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True) for fd in (1, 2))


def _install_streams() -> None:
    """Make :data:`_STREAMS` and put them in ``sys`` (the zygote and the forker do it at start;
    the forker's are every child's)."""
    global _STREAMS
    _STREAMS = _make_streams()
    sys.stdout, sys.stderr = _STREAMS
