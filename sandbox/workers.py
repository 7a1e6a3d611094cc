"""Worker processes as the parent sees them: a framed JSON channel to one runner.

A :class:`PipeWorker` is a local process (bubblewrap or plain) whose stdin and
stdout are the channel; a :class:`DockerWorker` is a long-lived container
whose attach stream is. Both offer ``send(msg, deadline)`` (or ``send_frame``) and
``recv(deadline)``, which never block past the deadline, and ``kill()``.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import tempfile
import time
from typing import Any

from sandbox import cgroups
from sandbox.result import SandboxUnavailable
from sandbox.runner.wire import FrameBuffer, ProtocolError, encode_frame

#: frame limits between runs (the greeting, a clean-up's confirmation, a runner's last words): small
IDLE_FRAME, IDLE_ITEMS = 1 << 20, 100_000


class WorkerLost(Exception):
    """The worker died, closed its channel or sent garbage: it must be replaced."""


class WorkerProtocolError(WorkerLost):
    """The worker sent bytes that are not a valid frame (not UTF-8 JSON, NaN or Infinity in it,
    nested too deeply, too large): only the code of the run in it can have caused that."""


class WorkerTimeout(Exception):
    """The worker did not answer before the deadline: it must be killed."""


class Worker:
    """One runner process and its channel."""

    backend = ""

    def __init__(self) -> None:
        self._frames = FrameBuffer(IDLE_FRAME, IDLE_ITEMS)
        self._backlog: list[tuple[dict, int]] = []
        self.known_tools: set[str] = set()  # tool sets the runner has already built
        self.info: dict[str, Any] = {}  # the runner's "ready" message
        self.limits: dict[str, str] = {}
        self.nproc_rlimit = False  # no cgroup: ask the runner for RLIMIT_NPROC instead
        self.runs = 0
        #: the run whose clean-up the runner has yet to confirm (``{"op": "clean"}``) before the worker
        #: may take another job; None when there is none
        self.cleaning: int | None = None

    # -- transport, per kind -------------------------------------------------
    def _read_some(self, timeout: float) -> bytes | None:
        """Channel bytes within `timeout` seconds: b"" if none came yet, None at end of stream."""
        raise NotImplementedError

    def _write_some(self, data: memoryview, timeout: float) -> int:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def diagnostics(self) -> str:
        """What the worker said outside the channel (its stderr), for error messages."""
        return ""

    # -- framed messages ----------------------------------------------------
    def limit_frames(self, max_frame: int = IDLE_FRAME, max_items: int = IDLE_ITEMS) -> None:
        """Bound the frames decoded from now on, in bytes and in JSON items (see FrameBuffer): a run's
        frames by what that run may still send; between runs, the small defaults."""
        self._frames.max_frame, self._frames.max_items = max_frame, max_items

    def send(self, msg: dict, deadline: float) -> None:
        self.send_frame(encode_frame(msg), deadline)

    def send_frame(self, frame: bytes, deadline: float) -> None:
        """Send an already encoded frame (see :func:`encode_frame`)."""
        view = memoryview(frame)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerTimeout("the worker stopped reading its channel")
            view = view[self._write_some(view, left):]

    def recv(self, deadline: float) -> dict:
        return self.recv_sized(deadline)[0]

    def recv_sized(self, deadline: float) -> tuple[dict, int]:
        """The next message and its size in bytes; WorkerTimeout past the deadline, WorkerLost if
        the channel ends or carries anything but frames of JSON objects."""
        while not self._backlog:
            if self._frames.broken is not None:  # the bytes after the last good frame
                raise WorkerProtocolError(f"garbage on the worker's channel: {self._frames.broken}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerTimeout("no answer from the worker in time")
            data = self._read_some(left)
            if data is None:
                raise WorkerLost(self._death_note())
            try:
                self._backlog.extend(self._frames.feed_sized(data))
            except ProtocolError as e:
                raise WorkerProtocolError(f"garbage on the worker's channel: {e}") from None
        return self._backlog.pop(0)

    def _death_note(self) -> str:
        note = "the worker closed its channel (it crashed or was killed)"
        diag = self.diagnostics().strip()
        return f"{note}: {diag[-500:]}" if diag else note

    def start(self, timeout: float) -> None:
        """Wait for the runner's greeting; raise SandboxUnavailable if it does not come."""
        try:
            msg = self.recv(time.monotonic() + timeout)
        except (WorkerLost, WorkerTimeout) as e:
            self.kill()
            raise SandboxUnavailable(f"{self.backend} worker did not start: {e}") from None
        if msg.get("op") != "ready":
            self.kill()
            raise SandboxUnavailable(f"{self.backend} worker did not start: {str(msg)[:500]}")
        self.info = msg

    def close(self) -> None:
        """Ask the runner to exit, then make sure it is gone."""
        try:
            self.send({"op": "exit"}, time.monotonic() + 0.5)
        except (WorkerLost, WorkerTimeout, OSError):
            pass
        self.kill()


class PipeWorker(Worker):
    """A local runner process (inside bwrap or not), its channel on stdin/stdout."""

    def __init__(self, backend: str, argv: list[str], *, cgroup: cgroups.WorkerCgroup | None = None,
                 env: dict[str, str] | None = None, cwd: str | None = None, cleanup: list[str] = (),
                 join: bool = True) -> None:
        super().__init__()
        self.backend = backend
        self.cgroup = cgroup
        self._cleanup = list(cleanup)
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cgroups.wrap_command(argv, cgroup) if join else argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, close_fds=True, start_new_session=True, env=env, cwd=cwd)
        self.pid = self.proc.pid
        self._in, self._out = self.proc.stdout.fileno(), self.proc.stdin.fileno()
        os.set_blocking(self._out, False)
        self._poll_in = select.poll()
        self._poll_in.register(self._in, select.POLLIN)
        self._poll_out = select.poll()
        self._poll_out.register(self._out, select.POLLOUT)

    def _read_some(self, timeout: float) -> bytes | None:
        if not self._poll_in.poll(max(0, int(timeout * 1000)) + 1):
            return b""
        data = os.read(self._in, 1 << 16)
        return data if data else None

    def _write_some(self, data: memoryview, timeout: float) -> int:
        if not self._poll_out.poll(max(0, int(timeout * 1000)) + 1):
            return 0
        try:
            return os.write(self._out, data)
        except BlockingIOError:
            return 0
        except (BrokenPipeError, ConnectionResetError):
            raise WorkerLost(self._death_note()) from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def diagnostics(self) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read(4000).decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout, self._stderr):
            try:
                f.close()
            except (OSError, ValueError):
                pass
        if self.cgroup is not None:
            self.cgroup.destroy()  # anything that escaped the process group
            self.cgroup = None
        for path in self._cleanup:
            _remove_tree(path)
        self._cleanup = []


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


_DOCKER_HEADER = struct.Struct(">BxxxI")


class DockerWorker(Worker):
    """A long-lived container running the runner; the channel is its attach stream."""

    backend = "docker"

    def __init__(self, client: Any, image: str, *, command: list[str], container_memory_mb: int, max_procs: int,
                 cpus: float = 1.0, tmpfs_mb: int = 64) -> None:
        super().__init__()
        self._client = client
        mem = f"{container_memory_mb}m"
        self.container = client.containers.create(
            image, command=list(command), stdin_open=True, tty=False,
            network_disabled=True, network_mode="none", read_only=True, user="65534:65534",
            working_dir="/tmp", tmpfs={"/tmp": f"rw,nosuid,nodev,size={tmpfs_mb}m,mode=1777"},
            mem_limit=mem, memswap_limit=mem, pids_limit=max_procs + 2, nano_cpus=int(cpus * 1e9),
            cap_drop=["ALL"], security_opt=["no-new-privileges"], ipc_mode="private", shm_size="16m",
            labels={"sca-sandbox": "worker"}, auto_remove=True,
            detach=False)  # with stdin_open: StdinOnce, so the runner sees EOF when we disconnect
        self.pid = None
        self.limits = {"processes": f"docker pids_limit={max_procs + 2} per container",
                       "memory": f"docker mem_limit {mem} per container"}
        try:
            raw = client.api.attach_socket(self.container.id, params={"stdin": 1, "stdout": 1, "stderr": 1,
                                                                      "stream": 1})
            self._sock: socket.socket = getattr(raw, "_sock", raw)
            self._raw = raw
            self.container.start()
        except Exception:
            self.kill()
            raise
        self._sock.setblocking(True)
        self._poll = select.poll()
        self._poll.register(self._sock.fileno(), select.POLLIN)
        self._mux = bytearray()  # demultiplexer input
        self._stderr = bytearray()
        self._dead = False

    def _read_some(self, timeout: float) -> bytes | None:
        while True:
            out = self._demux()
            if out:
                return out
            if self._dead:
                return None
            if not self._poll.poll(max(0, int(timeout * 1000)) + 1):
                return b""
            try:
                data = self._sock.recv(1 << 16)
            except (ConnectionResetError, OSError):
                data = b""
            if not data:
                self._dead = True
                continue
            self._mux += data
            timeout = 0

    def _demux(self) -> bytes:
        """Stdout payload from the multiplexed stream (8-byte headers: stream, size)."""
        out = bytearray()
        while len(self._mux) >= 8:
            stream, size = _DOCKER_HEADER.unpack_from(self._mux)
            if len(self._mux) < 8 + size:
                break
            payload = bytes(self._mux[8:8 + size])
            del self._mux[:8 + size]
            if stream == 1:
                out += payload
            elif len(self._stderr) < 8000:
                self._stderr += payload
        return bytes(out)

    def _write_some(self, data: memoryview, timeout: float) -> int:
        self._sock.settimeout(timeout)
        try:
            return self._sock.send(data)
        except TimeoutError:
            return 0
        except OSError:
            raise WorkerLost(self._death_note()) from None
        finally:
            self._sock.settimeout(None)

    def alive(self) -> bool:
        """Cheap check between runs: the stream is still open (the container exits with its runner)."""
        if not self._dead and self._poll.poll(0):
            try:
                data = self._sock.recv(1 << 16)
            except OSError:
                data = b""
            if data:
                self._mux += data
            else:
                self._dead = True
        return not self._dead

    def diagnostics(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    def kill(self) -> None:
        self._dead = True
        try:
            self.container.remove(force=True)
        except Exception:  # noqa: BLE001 - already removed (auto_remove) or engine gone
            pass
        for s in (getattr(self, "_sock", None), getattr(self, "_raw", None)):
            try:
                if s is not None:
                    s.close()
            except OSError:
                pass
