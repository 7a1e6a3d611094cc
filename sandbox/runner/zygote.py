"""The zygote: a worker's long-lived process, which serves runs one after the other.

The runner folder runs inside the sandbox (a bubblewrap namespace, a Docker container or a
plain process) as ``python -I -S -B <runner folder>``, standard library only; :func:`main` is its
entry (see ``__main__``). Its channel to the parent and the messages on it are in ``wire``.

Per run a forked child applies the resource limits, runs the code in a fresh
namespace and reports (``child``). The children are forked by the zygote's *forker*, a new
interpreter (``<runner folder> --forker``, see ``forker``) that does nothing but fork and never
holds anything of a run: a child starts as a copy of its forking parent's memory, which
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
run left behind and empties the writable places (``scrub``). Inside a private PID namespace,
where the zygote is PID 1 (which the code cannot kill or stop), a run that left
nothing but its child is done at once; otherwise ``kill(-1, SIGSTOP)`` freezes
everyone else, everything but the forker is killed and the forker continued.
Elsewhere (the unisolated ``subprocess`` backend) the zygote walks its own
descendants. The code can stop or kill its forker: the clean-up continues it,
or the zygote starts another.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
import traceback

from .child import _install_site_builtins, _install_streams
from .forker import FORKER_TIMEOUT, _close, _Forker, _kill
from .scrub import _alive, _descendants, record_places, scrub_places
from .seccomp import _PR_SET_CHILD_SUBREAPER, _PR_SET_DUMPABLE, _prctl, _probe_seccomp
from .wire import (
    CHILD_FRAME_ITEMS,
    MAX_ERROR_TEXT,
    MAX_ITEMS,
    MAX_REPORT,
    PROTOCOL_VERSION,
    FrameBuffer,
    ProtocolError,
    _read_frame,
    _write_all,
    child_frame_limit,
    encode_frame,
    encode_trusted,
    json_depth,
    json_measure,
    report_value_problem,
    runner_digest,
)


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
        # the writable places, with the mode, times and extended attributes to put back (and check) after each run
        self.places = record_places(scrub)
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
        key = job["tools_key"]
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
        key = job["tools_key"]
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
        run_id = job["run"]
        timeout = float(job["timeout"])
        started = time.monotonic()
        deadline = started + timeout
        self._learn_tools(job)
        limit = int(job["output_limit"])
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
        max_calls = int(job["max_tool_calls"])
        max_depth = int(job["max_depth"])
        budget = int(job["max_tool_bytes"])
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
                out.update(_checked_report(done, done_size, job["mode"], max_depth))
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
            return self._finish(run_id, job["tools_key"], failure)
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
        return self._finish(run_id, job["tools_key"], failure)

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
        """Empty the writable places and put them back as they were, and remove SysV IPC objects where
        the IPC namespace is the worker's own (see :func:`scrub_places`): None, or why not."""
        return scrub_places(self.places, sysv_ipc=self.pid_namespace)


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


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


class _Violation(Exception):
    """The code's process broke the zygote-child protocol."""


def _death(status: int | None, job: dict) -> str:
    if status is None:
        return "the code's process vanished without a report"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = {signal.SIGKILL: f" (out of memory, over the {job['memory_mb']} MiB limit, or killed)",
                signal.SIGXCPU: " (CPU time limit)", signal.SIGSEGV: " (crashed)"}.get(sig, "")
        return f"the code's process was killed by {name}{hint} before it reported"
    return f"the code's process exited with status {os.WEXITSTATUS(status)} before it reported"


def main(argv: list[str]) -> int:
    """The zygote's process: ``<runner folder> [--pid-namespace] [--scrub DIR]...`` (see ``__main__``)."""
    chan_in, chan_out = os.dup(0), os.dup(1)
    for fd in (chan_in, chan_out):
        os.set_inheritable(fd, False)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    _install_streams()
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
