"""The :class:`Sandbox`: a pool of warm workers that run model-written code against an environment.

The environment stays in this (trusted) process. The code runs in a worker,
where every tool is a function that sends ``(name, args)`` back here; this
process calls ``env.call`` and sends the result or the refusal back. The code
never holds a reference to the environment or its state: they are not in its
process.

A sandbox is built from a :class:`~sandbox.config.SandboxConfig`, which holds every setting and
its default (``Sandbox(config)``, or ``config.build()``). This module does not import
``sandbox.config``: ``SandboxConfig.build`` imports this one, and the two must not import each
other; a config is only read here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sandbox.backends import Backend, make_backend, resolve_backend
from sandbox.errors import ToolError, WriteForbiddenError
from sandbox.result import (
    KEEP_ERROR_CHARS,
    KEEP_PAYLOAD_BYTES,
    KEEP_RUN_BYTES,
    STATUSES,
    RunResult,
    SandboxUnavailable,
    ToolCallRecord,
    payload_stub,
)
from sandbox.runner.wire import (
    FRAME_OVERHEAD,
    MAX_ERROR_TEXT,
    MAX_ITEMS,
    encode_frame,
    json_depth,
    json_measure,
    parent_frame_items,
    report_limit,
    report_value_problem,
)
from sandbox.workers import Worker, WorkerLost, WorkerProtocolError, WorkerTimeout

log = logging.getLogger(__name__)

MODES = ("exec", "evaluate")
#: time the parent allows beyond a run's own limit (the runner's clean-up, a slow engine) before it
#: gives the worker up for hung, kills it and starts another
WATCHDOG_GRACE = 5.0
#: how long a worker may take to confirm that it cleaned up after its last run (the runner gives up on
#: its own after a few seconds) before it is given up, killed and replaced: never the next run's failure
CLEANUP_WAIT = 15.0
#: workers a job is offered to before the run is given up as an infrastructure failure: a job goes to
#: another worker only when the one it was sent to never said it started it
DELIVERY_ATTEMPTS = 3


class Sandbox:
    """Runs code strings in isolated, warm workers; thread-safe.

    >>> with Sandbox(SandboxConfig(backend="bwrap", workers=1)) as sb:   # doctest: +SKIP
    ...     res = sb.run(env, "answer = get_order_details('#W1')['status']")
    ...     res.status, res.answer, [c.name for c in res.tool_calls]

    Every setting comes from `config` (see :class:`~sandbox.config.SandboxConfig`, which holds the
    defaults and checks the values): `workers` is how many runs may go at once (one worker each,
    started when first needed and reused); each run gets `timeout` seconds of wall clock (tool
    calls included), `memory_mb` of address space per process, at most `max_procs` processes,
    `output_limit` characters of stdout and of stderr, `max_tool_calls` tool calls and
    `max_tool_bytes` bytes of tool arguments and results, nested at most `max_depth` levels.
    """

    def __init__(self, config: SandboxConfig) -> None:  # noqa: F821 - not imported here: see the module's docstring
        self.config = config
        self.backend_name = resolve_backend(config.backend)
        self.timeout = float(config.timeout)
        self.memory_mb = int(config.memory_mb)
        self.max_procs = int(config.max_procs)
        self.output_limit = int(config.output_limit)
        self.max_tool_calls = int(config.max_tool_calls)
        self.max_tool_bytes = int(config.max_tool_bytes)
        self.max_depth = int(config.max_depth)
        self.image = config.image
        self.workers = config.workers
        self._backend: Backend = make_backend(self.backend_name, self.memory_mb, self.max_procs, self.image)
        self._slots = threading.BoundedSemaphore(self.workers)
        self._lock = threading.Lock()
        self._idle: list[Worker] = []
        self._busy: set[Worker] = set()
        self._closed = False
        self._aborted = False
        self._run_ids = itertools.count(1)
        # Workers are started from one long-lived thread: bwrap's --die-with-parent follows the
        # *thread* that forked it, so a worker started from a short-lived caller thread would die with it.
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-spawner")
        try:
            first = self._start_worker()  # fail here, with the reason, if the backend cannot run
        except BaseException:
            self._spawner.shutdown(wait=False)
            self._backend.close()
            raise
        self.limits: dict[str, str] = dict(first.limits)
        self._idle.append(first)
        log.info("sandbox backend %s: %s", self.backend_name, "; ".join(f"{k}: {v}" for k, v in self.limits.items()))

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if isinstance(exc_type, type) and issubclass(exc_type, KeyboardInterrupt):
            self.abort()  # an interrupted stage: no run in flight is wanted any more
        else:
            self.close()

    def abort(self) -> None:
        """Close, and kill the workers of the runs in flight, which then end at once as failures (for a
        stage interrupted by a signal: it keeps none of them, and must not wait out their timeouts)."""
        self._aborted = True
        self.close()
        with self._lock:
            busy = list(self._busy)
        for w in busy:
            w.kill()

    def close(self) -> None:
        """Stop every worker. Runs still in flight finish; their workers stop after."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
        for w in idle:
            w.close()
        self._spawner.shutdown(wait=True)
        self._backend.close()

    def _start_worker(self) -> Worker:
        return self._spawner.submit(self._backend.start_worker).result()

    def _checkout(self) -> Worker:
        while True:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the sandbox is closed")
                worker = self._idle.pop() if self._idle else None
            if worker is None:
                worker = self._start_worker()
            elif not worker.alive():
                log.warning("sandbox worker (%s) died while idle; replacing it", self.backend_name)
                worker.kill()
                continue
            elif worker.cleaning is not None and not self._cleaned(worker):
                worker.kill()  # retired: the next run gets another worker, never the failure
                continue
            with self._lock:
                self._busy.add(worker)
            return worker

    def _cleaned(self, worker: Worker) -> bool:
        """Wait for the worker to confirm the clean-up after its last run: True if it is as clean as
        it started. Its clean-up failed (it said so, or it died, hung or sent garbage): False."""
        try:
            msg = worker.recv(time.monotonic() + CLEANUP_WAIT)
        except (WorkerLost, WorkerTimeout) as e:
            log.warning("sandbox worker (%s) did not confirm its clean-up (%s); replacing it", self.backend_name, e)
            return False
        if msg.get("op") == "clean" and msg.get("run") == worker.cleaning and msg.get("ok") is True:
            worker.cleaning = None
            return True
        why = msg.get("error") if msg.get("op") == "clean" else f"it sent {str(msg)[:200]}"
        log.warning("sandbox worker (%s) retired: its clean-up failed: %s", self.backend_name, str(why)[:500])
        return False

    def _checkin(self, worker: Worker, healthy: bool) -> None:
        with self._lock:
            self._busy.discard(worker)
            keep = healthy and not self._closed
            if keep:
                self._idle.append(worker)
        if not healthy:
            worker.kill()
        elif not keep:
            worker.close()

    # -- running -------------------------------------------------------------
    def run(self, env: Any, code: str, *, mode: str = "exec", answer: Any = None, read_only: bool = False,
            timeout: float | None = None, keep_payloads: bool | int = True) -> RunResult:
        """Run `code` against `env` and report; never raises for anything the code does.

        ``mode="exec"`` reports the global ``answer`` the code leaves;
        ``mode="evaluate"`` runs the code, then ``evaluate(answer)`` (or
        ``evaluate()`` if it takes no parameter), read-only, and reports what
        it returned. The environment is not reset here: that is the caller's.
        `keep_payloads`: keep each tool call's arguments and result in
        :attr:`RunResult.tool_calls` (False: only names, sizes and refusals): each up to
        :data:`KEEP_PAYLOAD_BYTES` of JSON, and at most `keep_payloads` bytes of them in all (True:
        :data:`KEEP_RUN_BYTES`); the others as a :func:`~sandbox.result.payload_stub`. A refusal's
        message is kept up to :data:`KEEP_ERROR_CHARS`. :attr:`RunResult.kept_bytes` says how many
        bytes were kept.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        read_only = read_only or mode == "evaluate"
        timeout = self.timeout if timeout is None else float(timeout)
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        try:
            encode_frame({"answer": answer})
        except (TypeError, ValueError, RecursionError) as e:
            raise TypeError(f"answer must be a JSON value: {e}") from None
        if json_depth(answer, self.max_depth) > self.max_depth:
            raise TypeError(f"answer must be a JSON value nested at most {self.max_depth} levels")
        tools, key = _tool_specs(env)
        job = {"op": "run", "code": code, "mode": mode, "answer": answer, "tools_key": key,
               "timeout": timeout, "memory_mb": self.memory_mb, "max_procs": self.max_procs,
               "output_limit": self.output_limit, "max_tool_calls": self.max_tool_calls,
               "max_tool_bytes": self.max_tool_bytes, "max_depth": self.max_depth}
        started = time.monotonic()
        with self._slots:
            for _ in range(DELIVERY_ATTEMPTS):
                try:
                    worker = self._checkout()
                except SandboxUnavailable as e:
                    return RunResult("sandbox_error", error_type="SandboxError", error=f"no worker: {e}",
                                     duration_s=time.monotonic() - started, infra=True)
                healthy = False
                try:
                    run = _Run(self, worker, env, job, tools, read_only, keep_payloads)
                    result, healthy = run.go()
                finally:
                    self._checkin(worker, healthy)
                if run.started:
                    break
            # else: no worker started the job: the last attempt's result says why (infra)
        result.duration_s = time.monotonic() - started
        return result


class _Run:
    """The parent's side of one run on one worker: relays the tool calls, keeps the books.

    Everything that comes from the worker is treated as hostile: a frame that does not decode,
    a message out of shape or out of turn, a call beyond the budgets (which the sandbox itself
    enforces first) ends the run as a ``sandbox_error`` and the worker is replaced.

    Once the worker has said it started the job (``{"op": "started"}``), every way the run can end
    is the run's own result: the code can reach the processes of its worker, send what it likes and
    take its time, so neither a worker that dies or hangs nor a frame it sends may turn a failing
    verdict into a retry. Before that, nothing of the code has run: a worker that fails then is the
    infrastructure's failure, and the job goes to another worker (see :data:`DELIVERY_ATTEMPTS`).
    """

    def __init__(self, sandbox: Sandbox, worker: Worker, env: Any, job: dict, tools: list[dict], read_only: bool,
                 keep_payloads: bool | int) -> None:
        self.sb, self.worker, self.env = sandbox, worker, env
        self.job = dict(job, run=next(sandbox._run_ids), nproc_rlimit=worker.nproc_rlimit)
        if job["tools_key"] not in worker.known_tools:
            self.job["tools"] = tools
        self.read_only = read_only
        # payloads are kept (or stubbed) unless keep_payloads is False; this many bytes of them at most
        self.keep = keep_payloads is not False
        self.keep_left = KEEP_RUN_BYTES if keep_payloads is True else max(0, int(keep_payloads))
        self.kept = 0
        self.records: list[ToolCallRecord] = []
        self.calls = 0
        self.bytes_left = sandbox.max_tool_bytes
        self.tool_s = 0.0
        self.started = False  # the worker said it started the job: from then on, the outcome is the run's

    def _limit_frames(self) -> None:
        """What the worker may send next: a call within what is left of the budget, or the report."""
        self.worker.limit_frames(max(self.bytes_left + FRAME_OVERHEAD, report_limit(self.sb.output_limit)),
                                 parent_frame_items(self.sb.output_limit))

    def go(self) -> tuple[RunResult, bool]:
        """The result, and whether the worker is still good to use."""
        timeout = self.job["timeout"]
        started = time.monotonic()
        # The watchdog: the runner reports by the run's deadline plus a grace; time the tools take
        # here counts in the run's own limit (the runner's clock runs on while it waits for us), so a
        # slow tool ends the run as a timeout reported by the runner, not as a hung worker.
        watchdog = started + timeout + WATCHDOG_GRACE
        try:
            self._limit_frames()
            self.worker.send(self.job, watchdog)
            self.worker.known_tools.add(self.job["tools_key"])
            while True:
                msg, size = self.worker.recv_sized(watchdog)
                op = msg.get("op")
                if op == "started" and msg.get("run") == self.job["run"] and not self.started:
                    self.started = True
                elif op == "call" and msg.get("run") == self.job["run"] and self.started:
                    reply = self._serve_call(msg, size)
                    watchdog = max(watchdog, time.monotonic() + WATCHDOG_GRACE)
                    self._limit_frames()
                    self.worker.send_frame(reply, watchdog)
                elif op == "done" and msg.get("run") == self.job["run"] and self.started:
                    self.worker.runs += 1
                    result = self._result(msg, size)
                    self.worker.cleaning = self.job["run"]  # its clean-up is confirmed before the next job
                    self.worker.limit_frames()
                    return result, True
                elif op == "fatal":
                    raise WorkerLost(f"the runner failed: {str(msg.get('error', ''))[-1000:]}")
                else:
                    raise _Broken(f"unexpected message from the worker: {str(msg)[:200]}")
        except WorkerTimeout:
            log.warning("sandbox worker (%s) hung past %.1f s; killing it", self.sb.backend_name,
                        timeout + WATCHDOG_GRACE)
            return self._failed("timeout", "Timeout",
                                f"the sandbox did not answer within {timeout + WATCHDOG_GRACE:g} s (the run's limit "
                                "plus grace); its worker was killed and replaced"), False
        except WorkerProtocolError as e:  # before WorkerLost, its base: bytes only the run can have sent
            log.warning("sandbox worker (%s) broke the protocol: %s", self.sb.backend_name, e)
            return self._failed("sandbox_error", "SandboxError", f"{e}; the worker was replaced"), False
        except (WorkerLost, OSError) as e:
            if not self.sb._aborted:  # abort() killed it: no news
                log.warning("sandbox worker (%s) lost: %s", self.sb.backend_name, e)
            return self._failed("sandbox_error", "SandboxError", f"{e}; the worker was replaced"), False
        except _Broken as e:
            log.warning("sandbox worker (%s) broke the protocol: %s", self.sb.backend_name, e)
            return self._failed("sandbox_error", "SandboxError",
                                f"the sandbox sent something invalid ({e}); the worker was replaced"), False
        except Exception as e:  # noqa: BLE001 - whatever the bytes did to our bookkeeping, the run ends here
            log.warning("sandbox run failed in the parent: %r", e, exc_info=True)
            return self._failed("sandbox_error", "SandboxError",
                                f"the run's messages could not be handled ({type(e).__name__}); the worker was "
                                "replaced"), False

    def _failed(self, status: str, error_type: str, error: str) -> RunResult:
        """The run's result when its worker failed it. An infrastructure failure (``infra``: a run to
        retry, never a verdict) only when the worker never started the job, so no code of it ran.
        After that, a worker that died, hung, or sent anything it should not have is the run's own
        failure: the code can have caused each of them, and if one were a retry, code could turn
        its own failing verdict into one on purpose."""
        if not self.started:
            error = f"no worker started the job: {error}"
        return RunResult(status, tool_calls=self.records, error_type=error_type, error=error, tool_s=self.tool_s,
                         kept_bytes=self.kept,
                         infra=not self.started)

    def _serve_call(self, msg: dict, size: int) -> bytes:
        """Check one call against the budgets, run it, and return the reply frame for the worker."""
        name, args, call_id = msg.get("name"), msg.get("args"), msg.get("id")
        if not isinstance(name, str) or len(name) > 200 or not isinstance(args, dict) or not isinstance(call_id, int):
            raise _Broken("malformed tool call")
        if json_depth(args, self.sb.max_depth) > self.sb.max_depth:
            raise _Broken(f"tool call arguments nested deeper than {self.sb.max_depth} levels")
        size, items = json_measure(args)  # as the sandbox measured them (not this frame, which carries more)
        self.calls += 1
        self.bytes_left -= size
        if self.calls > self.sb.max_tool_calls or self.bytes_left < 0 or items > MAX_ITEMS or call_id != self.calls:
            raise _Broken("a tool call beyond the run's budgets reached the parent")
        record = ToolCallRecord(name=name, args=self._kept(args, size) if self.keep else None, arg_bytes=size)
        self.records.append(record)
        reply = {"op": "reply", "run": self.job["run"], "id": call_id}
        t0 = time.monotonic()
        try:
            if self.env is None:
                raise ToolError(f"unknown tool {name!r}: no environment")
            value = self.env.call(name, args, allow_write=not self.read_only)
            frame = encode_frame({**reply, "ok": True, "value": value})  # refuses what would break the channel
            if json_depth(value, self.sb.max_depth) > self.sb.max_depth:
                raise ToolError(f"the result of {name} is nested deeper than {self.sb.max_depth} levels")
        except WriteForbiddenError as e:
            frame = self._refusal(record, reply, "WriteForbiddenError", str(e))
        except ToolError as e:
            frame = self._refusal(record, reply, "ToolError", str(e))
        except Exception as e:  # noqa: BLE001 - a tool that crashed refuses the call, like any refusal
            log.debug("tool %s raised %s", name, e, exc_info=True)
            frame = self._refusal(record, reply, "ToolError", f"{type(e).__name__}: {e}")
        else:
            if len(frame) - 4 > self.bytes_left:
                frame = self._refusal(
                    record, reply, "BudgetExceeded",
                    f"{name}(): its result of {len(frame) - 4:,} bytes exceeds what is left of the run's budget for "
                    f"tool data ({max(0, self.bytes_left):,} of {self.sb.max_tool_bytes:,} bytes)")
            elif self.keep:
                record.result = self._kept(value, len(frame) - 4)
        record.seconds = time.monotonic() - t0
        self.tool_s += record.seconds
        record.result_bytes = len(frame) - 4
        self.bytes_left -= record.result_bytes
        return frame

    def _kept(self, value: Any, size: int) -> Any:
        """`value` (a payload of about `size` bytes of JSON) as its record keeps it: itself within the
        limits, else a stub."""
        if size <= KEEP_PAYLOAD_BYTES and size <= self.keep_left:
            self.keep_left -= size
            self.kept += size
            return value
        return payload_stub(value)

    @staticmethod
    def _refusal(record: ToolCallRecord, reply: dict, error_type: str, message: str) -> bytes:
        """The frame refusing a call (the message cut to a sane length, made valid Unicode); the
        record keeps the first :data:`KEEP_ERROR_CHARS` of it."""
        if len(message) > 4000:
            message = message[:4000] + f" [... {len(message) - 4000} more characters]"
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        record.error = message if len(message) <= KEEP_ERROR_CHARS else \
            message[:KEEP_ERROR_CHARS] + f" [... {len(message) - KEEP_ERROR_CHARS} more characters]"
        return encode_frame({**reply, "ok": False, "error_type": error_type, "message": message})

    def _result(self, msg: dict, size: int) -> RunResult:
        """The run's report (a frame of `size` bytes), checked field by field."""
        limit = report_limit(self.sb.output_limit)
        if size > limit:
            raise _Broken(f"a report of {size:,} bytes (the limit is {limit:,})")
        status = msg.get("status", "sandbox_error")
        if status not in STATUSES:
            raise _Broken(f"report with status {str(status)[:50]!r}")
        text = {}
        for key in ("stdout", "stderr", "answer_type", "value_type", "error_type", "error", "traceback"):
            value = msg.get(key)
            if value is not None and not isinstance(value, str):
                raise _Broken(f"report field {key} is not text")
            longest = self.sb.output_limit + 100 if key in ("stdout", "stderr") else MAX_ERROR_TEXT + 1000
            if value is not None and len(value) > longest:
                raise _Broken(f"report field {key} of {len(value):,} characters")
            text[key] = value
        problem = report_value_problem(msg, size, self.job["mode"], self.sb.max_depth)
        if problem:
            raise _Broken(problem)
        if msg.get("tool_calls", self.calls) != self.calls:
            raise _Broken("the report counts other tool calls than were served")
        refused = msg.get("refused_calls", 0)
        return RunResult(
            status=status, answer=msg.get("answer"), answer_type=text["answer_type"], value=msg.get("value"),
            value_type=text["value_type"], stdout=text["stdout"] or "", stderr=text["stderr"] or "",
            tool_calls=self.records, error_type=text["error_type"], error=text["error"],
            traceback=text["traceback"], tool_s=self.tool_s, kept_bytes=self.kept,
            refused_calls=refused if isinstance(refused, int) and not isinstance(refused, bool) else 0)


class _Broken(Exception):
    """The worker sent something it never should: the run ends, the worker is replaced."""


#: tool sets already described, by the identities of their Tool objects (which each entry holds, so
#: that an identity cannot be reused while it names an entry); at most _SPEC_CACHE_SIZE of them
_spec_cache: OrderedDict[tuple[int, ...], tuple[tuple, list[dict], str]] = OrderedDict()
_spec_lock = threading.Lock()
_SPEC_CACHE_SIZE = 64


def _tool_specs(env: Any) -> tuple[list[dict], str]:
    """The environment's tools as the runner needs them, and a key naming that set.

    Environments hand out the same (frozen) Tool objects on every ``tools()`` call, so
    the description and its digest are computed once per set of Tool objects.
    """
    if env is None:
        return [], "none"
    objects = tuple(env.tools())
    ids = tuple(map(id, objects))
    with _spec_lock:
        hit = _spec_cache.get(ids)
        if hit is not None:
            _spec_cache.move_to_end(ids)
            return hit[1], hit[2]
    tools = [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in objects]
    text = json.dumps(tools, sort_keys=True, default=str)
    key = hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
    with _spec_lock:
        _spec_cache[ids] = (objects, tools, key)
        while len(_spec_cache) > _SPEC_CACHE_SIZE:
            _spec_cache.popitem(last=False)
    return tools, key
