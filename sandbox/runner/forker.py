"""The forker: a fresh interpreter that forks one child per run, and the zygote's handle on it.

The zygote never forks a run's child itself: its memory holds every job, frame and reply it
served (freed memory included), and a child starts as a copy of its forking parent's memory,
which it can read (``/proc/self/mem``). So the zygote starts a new interpreter,
``python -I -S -B <runner folder> --forker`` (``posix_spawn``, an ``exec``, which replaces every
page), that receives nothing but tool descriptions and pipe ends, never a job, and forks the
children from there (see sandbox/README.md, "Nothing of an earlier run in memory"). A run that
kills its forker gets a new one the same way, never a fork of the zygote. Forking from it is also
faster: the forker writes a few pages while a child lives, the zygote hundreds (each one copied).
Standard library only.
"""

from __future__ import annotations

import _socket
import gc
import json
import os
import resource
import select
import signal
import struct
import sys

from .child import (
    _call_tool,
    _child_main,
    _install_site_builtins,
    _install_streams,
    _setlimit,
    _snapshot_runtime,
    _warm_up,
    make_tool_functions,
)
from .seccomp import _PR_SET_DUMPABLE, _PR_SET_PDEATHSIG, _prctl, install_seccomp
from .wire import MAX_FILE, RUNNER_DIR

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


def main(argv: list[str]) -> int:
    """``<runner folder> --forker``: the forker's own interpreter, started by the zygote (see :class:`_Forker`)
    with /dev/null on fds 0-2 and its socket to the zygote on fd :data:`_FORKER_FD`."""
    _prctl(_PR_SET_DUMPABLE, 0)  # the runs (same uid) cannot ptrace it nor write its /proc files
    _install_streams()
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

    The forker is a new interpreter (``<runner folder> --forker``, started with ``posix_spawn``), never a
    fork of the zygote: the zygote's memory holds the jobs, frames and replies of every run it
    served (freed objects included), and whatever the forker holds, every child it forks can read
    in its own memory (``/proc/self/mem``). A run that kills its forker gets a new one, from an
    interpreter that never held anything of a run either.
    """

    def __init__(self, pdeathsig: bool, seccomp: bool) -> None:
        mine, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-I", "-S", "-B", RUNNER_DIR, "--forker"]
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



def _close(fds: list) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)
