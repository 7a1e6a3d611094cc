"""What the kernel enforces for the runner's processes: prctl(2), and the seccomp filter every run gets.

A run shares its uid with the zygote and the forker, so the kernel would let it change their
resource limits (prlimit), priority (setpriority), CPU affinity and scheduling, and I/O
priority: a later honest run in the same worker would then fail for reasons of an earlier run.
The forker installs this filter before it forks any child: those calls are refused unless they
name the calling process itself. Kernel keyrings (a store that outlives processes, shared by
every process of a uid) are refused entirely, as in Docker's default profile. (The zygote and
the forker are not dumpable, so their /proc files belong to root and ptrace-like access to them
is refused by the kernel itself.)

Standard library only (libc through ``ctypes``, loaded on first use).
"""

from __future__ import annotations

import os
import resource

# --------------------------------------------------------------------------- prctl
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2

_LIBC = []  # libc, once loaded


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
