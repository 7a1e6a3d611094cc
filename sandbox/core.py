"""The :class:`Sandbox`: a pool of warm workers that run model-written code against an environment.

The environment stays in this (trusted) process. The code runs in a worker,
where every tool is a function that sends ``(name, args)`` back here; this
process calls ``env.call`` and sends the result or the refusal back. The code
never holds a reference to the environment or its state: they are not in its
process.
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

from envs.base import ToolError, WriteForbiddenError
from sandbox.backends import Backend, make_backend, resolve_backend
from sandbox.result import RunResult, SandboxUnavailable, ToolCallRecord
from sandbox.runner import encode_frame
from sandbox.workers import Worker, WorkerLost, WorkerTimeout

log = logging.getLogger(__name__)

MODES = ("exec", "evaluate")
#: time the parent allows beyond a run's own limit (the runner's clean-up, a slow engine) before it
#: gives the worker up for hung, kills it and starts another
WATCHDOG_GRACE = 5.0


class Sandbox:
    """Runs code strings in isolated, warm workers; thread-safe.

    >>> with Sandbox(backend="bwrap") as sb:                            # doctest: +SKIP
    ...     res = sb.run(env, "answer = get_order_details('#W1')['status']")
    ...     res.status, res.answer, [c.name for c in res.tool_calls]

    `workers` is how many runs may go at once (one worker each, started when
    first needed and reused); each run gets `timeout` seconds of wall clock,
    `memory_mb` of address space per process, at most `max_procs` processes
    and `output_limit` characters of stdout and of stderr.
    """

    def __init__(self, backend: str = "auto", workers: int = 1, timeout: float = 10.0, memory_mb: int = 1024,
                 max_procs: int = 64, output_limit: int = 10_000, image: str = "sca-sandbox:latest") -> None:
        for name, value in (("workers", workers), ("timeout", timeout), ("memory_mb", memory_mb),
                            ("max_procs", max_procs), ("output_limit", output_limit)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        self.backend_name = resolve_backend(backend)
        self.timeout = float(timeout)
        self.memory_mb = int(memory_mb)
        self.max_procs = int(max_procs)
        self.output_limit = int(output_limit)
        self.image = image
        self.workers = workers
        self._backend: Backend = make_backend(self.backend_name, self.memory_mb, self.max_procs, image)
        self._slots = threading.BoundedSemaphore(workers)
        self._lock = threading.Lock()
        self._idle: list[Worker] = []
        self._busy: set[Worker] = set()
        self._closed = False
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

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            with self._lock:
                self._busy.add(worker)
            return worker

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
            timeout: float | None = None) -> RunResult:
        """Run `code` against `env` and report; never raises for anything the code does.

        ``mode="exec"`` reports the global ``answer`` the code leaves;
        ``mode="evaluate"`` runs the code, then ``evaluate(answer)`` (or
        ``evaluate()`` if it takes no parameter), read-only, and reports what
        it returned. The environment is not reset here: that is the caller's.
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
        except (TypeError, ValueError) as e:
            raise TypeError(f"answer must be a JSON value: {e}") from None
        tools, key = _tool_specs(env)
        job = {"op": "run", "code": code, "mode": mode, "answer": answer, "tools_key": key,
               "timeout": timeout, "memory_mb": self.memory_mb, "max_procs": self.max_procs,
               "output_limit": self.output_limit}
        started = time.monotonic()
        with self._slots:
            try:
                worker = self._checkout()
            except SandboxUnavailable as e:
                return RunResult("sandbox_error", error_type="SandboxError", error=f"no worker: {e}",
                                 duration_s=time.monotonic() - started)
            healthy = False
            try:
                result, healthy = self._run_on(worker, env, job, tools, read_only, timeout)
            finally:
                self._checkin(worker, healthy)
        result.duration_s = time.monotonic() - started
        return result

    def _run_on(self, worker: Worker, env: Any, job: dict, tools: list[dict], read_only: bool,
                timeout: float) -> tuple[RunResult, bool]:
        """One run on one worker: the result, and whether the worker is still good to use."""
        job = dict(job, run=next(self._run_ids), nproc_rlimit=worker.nproc_rlimit)
        if job["tools_key"] not in worker.known_tools:
            job["tools"] = tools
        records: list[ToolCallRecord] = []
        deadline = time.monotonic() + timeout + WATCHDOG_GRACE
        try:
            worker.send(job, deadline)
            worker.known_tools.add(job["tools_key"])
            while True:
                msg = worker.recv(deadline)
                op = msg.get("op")
                if op == "call" and msg.get("run") == job["run"]:
                    reply, record = self._serve_call(env, msg, read_only)
                    records.append(record)
                    worker.send_frame(reply, deadline)
                elif op == "done" and msg.get("run") == job["run"]:
                    worker.runs += 1
                    return _result(msg, records), True
                elif op == "fatal":
                    raise WorkerLost(f"the runner failed: {msg.get('error', '')[-1000:]}")
                else:
                    raise WorkerLost(f"unexpected message from the worker: {str(msg)[:200]}")
        except WorkerTimeout:
            log.warning("sandbox worker (%s) hung past %.1f s; killing it", self.backend_name,
                        timeout + WATCHDOG_GRACE)
            return RunResult("timeout", tool_calls=records, error_type="Timeout",
                             error=f"the sandbox did not answer within {timeout + WATCHDOG_GRACE:g} s "
                                   "(the run's limit plus grace); its worker was killed and replaced"), False
        except (WorkerLost, OSError) as e:
            log.warning("sandbox worker (%s) lost: %s", self.backend_name, e)
            return RunResult("sandbox_error", tool_calls=records, error_type="SandboxError",
                             error=f"{e}; the worker was replaced"), False

    def _serve_call(self, env: Any, msg: dict, read_only: bool) -> tuple[bytes, ToolCallRecord]:
        """Run one tool call: the reply frame for the worker, and the call's record."""
        name, args = msg["name"], msg["args"]
        record = ToolCallRecord(name=name, args=args)
        reply = {"op": "reply", "run": msg["run"], "id": msg["id"]}
        try:
            if env is None:
                raise ToolError(f"unknown tool {name!r}: no environment")
            value = env.call(name, args, allow_write=not read_only)
            frame = encode_frame({**reply, "ok": True, "value": value})  # refuses what would break the channel
        except WriteForbiddenError as e:
            record.error = str(e)
            return _refusal(reply, "WriteForbiddenError", record.error), record
        except ToolError as e:
            record.error = str(e)
            return _refusal(reply, "ToolError", record.error), record
        except Exception as e:  # noqa: BLE001 - a tool that crashed refuses the call, like any refusal
            log.debug("tool %s raised %s", name, e, exc_info=True)
            record.error = f"{type(e).__name__}: {e}"
            return _refusal(reply, "ToolError", record.error), record
        record.result = value
        return frame, record


def _refusal(reply: dict, error_type: str, message: str) -> bytes:
    """The frame refusing a call; a message that is not valid Unicode (lone surrogates) is escaped."""
    try:
        return encode_frame({**reply, "ok": False, "error_type": error_type, "message": message})
    except ValueError:
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        return encode_frame({**reply, "ok": False, "error_type": error_type, "message": message})


def _result(msg: dict, records: list[ToolCallRecord]) -> RunResult:
    return RunResult(
        status=msg.get("status", "sandbox_error"), answer=msg.get("answer"), answer_type=msg.get("answer_type"),
        value=msg.get("value"), value_type=msg.get("value_type"), stdout=msg.get("stdout", ""),
        stderr=msg.get("stderr", ""), tool_calls=records, error_type=msg.get("error_type"),
        error=msg.get("error"), traceback=msg.get("traceback"))


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
