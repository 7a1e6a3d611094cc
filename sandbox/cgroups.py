"""Per-worker cgroups: a hard cap on the processes and the memory of one sandbox worker.

RLIMIT_NPROC does not bind root (and counts every process of the user, not
of the run), so where the cgroup file system is writable each bwrap or
subprocess worker gets a cgroup of its own: ``pids.max`` caps the processes a
run can start, the memory limit caps all of them together. Both cgroup v1
(``/sys/fs/cgroup/pids``, ``/sys/fs/cgroup/memory``) and v2 (a unified
``/sys/fs/cgroup`` with the controllers enabled) are handled. Where neither is
writable the caller falls back to rlimits and says so.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
GROUP = "sca-sandbox"
_counter = itertools.count()
_lock = threading.Lock()
_swept: set[Path] = set()


@dataclass
class WorkerCgroup:
    """The cgroup directories of one worker (one per v1 controller, one in v2)."""

    version: int
    dirs: list[Path]
    pids_max: int
    memory_bytes: int | None
    description: dict[str, str] = field(default_factory=dict)

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def pids(self) -> set[int]:
        out: set[int] = set()
        for f in self.procs_files:
            try:
                out.update(int(p) for p in f.read_text().split())
            except OSError:
                pass
        return out

    def destroy(self) -> None:
        """Kill whatever is left in the cgroup, then remove it."""
        _kill_and_remove(self.dirs)


def _kill_and_remove(dirs: list[Path], wait: float = 2.0) -> None:
    stop = time.monotonic() + wait
    pending = list(dirs)
    while pending:
        for d in list(pending):
            try:
                for pid in (d / "cgroup.procs").read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                d.rmdir()
                pending.remove(d)
            except FileNotFoundError:
                pending.remove(d)
            except OSError:  # EBUSY while the killed processes exit
                pass
        if pending:
            if time.monotonic() > stop:
                return
            time.sleep(0.01)


def _v1_dirs() -> tuple[Path, Path] | None:
    pids, mem = ROOT / "pids", ROOT / "memory"
    if (pids / "cgroup.procs").exists() and not (ROOT / "cgroup.controllers").exists():
        return pids, mem
    return None


def _v2_root() -> Path | None:
    try:
        controllers = (ROOT / "cgroup.controllers").read_text().split()
    except OSError:
        return None
    return ROOT if "pids" in controllers else None


def _sweep(parent: Path) -> None:
    """Remove groups left by processes that are gone (a parent that was killed)."""
    if parent in _swept:
        return
    _swept.add(parent)
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for d in entries:
        owner = d.name.split("-", 1)[0]
        if d.is_dir() and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _kill_and_remove([d], wait=0.5)


def create(max_procs: int, memory_bytes: int | None) -> WorkerCgroup | None:
    """A fresh cgroup for one worker, or None where cgroups cannot be written here."""
    name = f"{os.getpid()}-{next(_counter)}"
    with _lock:
        v1 = _v1_dirs()
        if v1 is not None:
            return _create_v1(name, v1, max_procs, memory_bytes)
        v2 = _v2_root()
        if v2 is not None:
            return _create_v2(name, v2, max_procs, memory_bytes)
    return None


def _create_v1(name: str, roots: tuple[Path, Path], max_procs: int, memory_bytes: int | None) -> WorkerCgroup | None:
    pids_root, mem_root = roots
    made: list[Path] = []
    try:
        parent = pids_root / GROUP
        parent.mkdir(exist_ok=True)
        _sweep(parent)
        d = parent / name
        d.mkdir()
        made.append(d)
        (d / "pids.max").write_text(str(max_procs))
        desc = {"processes": f"cgroup v1 pids.max={max_procs} per worker"}
    except OSError:
        _kill_and_remove(made)
        return None
    cg = WorkerCgroup(1, made, max_procs, None, desc)
    if memory_bytes and (mem_root / "cgroup.procs").exists():
        try:
            parent = mem_root / GROUP
            parent.mkdir(exist_ok=True)
            _sweep(parent)
            m = parent / name
            m.mkdir()
            made.append(m)
            (m / "memory.limit_in_bytes").write_text(str(memory_bytes))
            swap = m / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(memory_bytes))
            cg.memory_bytes = memory_bytes
            desc["memory"] = f"cgroup v1 memory limit {memory_bytes >> 20} MiB per worker"
        except OSError:
            if made[-1] != d:
                _kill_and_remove([made.pop()])
    return cg


def _create_v2(name: str, root: Path, max_procs: int, memory_bytes: int | None) -> WorkerCgroup | None:
    parent = root / GROUP
    d = parent / name
    try:
        enabled = (root / "cgroup.subtree_control").read_text().split()
        wanted = [c for c in ("pids", "memory") if c not in enabled]
        if wanted:
            (root / "cgroup.subtree_control").write_text(" ".join("+" + c for c in wanted))
        parent.mkdir(exist_ok=True)
        _sweep(parent)
        sub = (parent / "cgroup.subtree_control").read_text().split()
        wanted = [c for c in ("pids", "memory") if c not in sub]
        if wanted:
            (parent / "cgroup.subtree_control").write_text(" ".join("+" + c for c in wanted))
        d.mkdir()
        (d / "pids.max").write_text(str(max_procs))
    except OSError:
        _kill_and_remove([d])
        return None
    cg = WorkerCgroup(2, [d], max_procs, None, {"processes": f"cgroup v2 pids.max={max_procs} per worker"})
    if memory_bytes:
        try:
            (d / "memory.max").write_text(str(memory_bytes))
            if (d / "memory.swap.max").exists():
                (d / "memory.swap.max").write_text("0")
            cg.memory_bytes = memory_bytes
            cg.description["memory"] = f"cgroup v2 memory.max {memory_bytes >> 20} MiB per worker"
        except OSError:
            pass
    return cg


#: /bin/sh program that joins the cgroups given as arguments (their cgroup.procs files, up to
#: "--") and then becomes the command after "--": the worker is confined from its first instruction.
JOIN_AND_EXEC = 'while [ "$1" != "--" ]; do echo $$ > "$1" || exit 97; shift; done; shift; exec "$@"'


def wrap_command(argv: list[str], cgroup: WorkerCgroup | None) -> list[str]:
    """`argv`, started inside `cgroup` when there is one."""
    if cgroup is None:
        return argv
    return ["/bin/sh", "-c", JOIN_AND_EXEC, "sh", *map(str, cgroup.procs_files), "--", *argv]
