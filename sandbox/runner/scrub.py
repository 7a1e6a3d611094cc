"""After a run: the writable places emptied and put back as they were, and what a run left alive.

The writable places (``/tmp``, ``/dev/shm``, ``/dev/mqueue``: files, POSIX shared memory and
message queues) are emptied after every run and their own mode, times and extended attributes put
back as they were at the worker's start (:func:`record_places`, :func:`scrub_places`), SysV IPC
objects removed, and then checked: a clean-up that fails retires the worker (see sandbox/README.md,
"What a run could leave behind"). The zygote finds the processes a run left with
:func:`_descendants` and :func:`_alive`. Standard library only.
"""

from __future__ import annotations

import os
import time

from .seccomp import _LIBC, _prctl_libc

#: longest the clean-up of the writable places may take before the worker is retired instead
SCRUB_SECONDS = 3.0
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def record_places(paths: list[str]) -> dict[str, tuple[os.stat_result, frozenset]]:
    """The writable places among `paths` (those that are directories), each with what to put back
    (and check) after each run: its status (mode, times) and its extended attributes."""
    return {d: (os.stat(d), frozenset(_xattrs(d))) for d in paths if os.path.isdir(d)}


def scrub_places(places: dict[str, tuple[os.stat_result, frozenset]], sysv_ipc: bool) -> str | None:
    """Erase what the run left where the next run could find it: the entries of the writable
    places (/tmp, /dev/shm, /dev/mqueue: files, POSIX shared memory and message queues) and what
    it set on those directories themselves (mode, extended attributes, times), and SysV IPC
    objects (`sysv_ipc`: the IPC namespace is the worker's own, so every object in it is the run's).
    Then check: every place empty, its mode and extended attributes as they were at start (see
    :func:`record_places`), no SysV IPC object left. None if so, else why not (the worker is then
    retired)."""
    deadline = time.monotonic() + SCRUB_SECONDS
    try:
        for d, (initial, xattrs) in places.items():
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
        if sysv_ipc:  # a private IPC namespace: every object in it is the run's
            _remove_sysv_ipc()
    except Exception as e:  # noqa: BLE001 - whatever it was (RecursionError, MemoryError too)
        return f"the clean-up of the writable places failed ({type(e).__name__}: {str(e)[:300]})"
    return None


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


# --------------------------------------------------------------------------- the processes a run left
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
