#!/usr/bin/env python3
"""Start a bwrap worker as an unprivileged host user when sca runs as root.

Run as root, bubblewrap maps the sandbox's user to host root: whatever the sandbox
could reach by its uid (files, /proc entries of its own processes) it would reach
as root. So, as root, a worker is started through this launcher (standard library
only, run as ``python -I -S drop_root.py``), which

1. moves itself into the worker's cgroups (``--cgroup-procs FILE``, repeatable),
   so the worker is confined from its first instruction;
2. if some files that bwrap must bind are out of reach of an unprivileged user
   (an interpreter under /root), makes a private mount namespace and binds each
   ``--expose HOST STAGED`` read-only at a path under a fresh tmpfs: the host's
   mount table is not touched;
3. drops every group and becomes ``--uid``/``--gid`` (65534, nobody), then
   executes the command after ``--`` (bwrap, with its paths already pointing at
   the staged copies). bwrap, unprivileged now, maps the sandbox user to that uid.
"""

from __future__ import annotations

import os
import stat
import sys

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
#: where the staged binds appear (inside the launcher's private mount namespace only)
STAGE = "/tmp/.sca-stage"
EXIT_SETUP = 97


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _check(ctypes, result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def stage(exposed: list[tuple[str, str]]) -> None:
    """Bind each host path read-only at its staged path, in a private mount namespace."""
    ctypes, libc = _libc()
    _check(ctypes, libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(ctypes, libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    parent = os.path.dirname(STAGE)
    # the tmpfs below hides the parent (/tmp): hold every host path open first, and bind from the
    # descriptor, so a path under it (a checkout in /tmp) is still found
    held = [(os.open(host, os.O_PATH | os.O_CLOEXEC), host, staged) for host, staged in exposed]
    _check(ctypes, libc.mount(b"tmpfs", parent.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=1m"),
           f"tmpfs on {parent}")
    for fd, host, staged in held:
        if not staged.startswith(STAGE + "/"):
            raise ValueError(f"staged path {staged} is not under {STAGE}")
        os.makedirs(os.path.dirname(staged), mode=0o755, exist_ok=True)
        if stat.S_ISDIR(os.fstat(fd).st_mode):  # not os.path.isdir(host): the tmpfs may hide it now
            os.mkdir(staged, 0o755)
        else:
            os.close(os.open(staged, os.O_CREAT | os.O_WRONLY, 0o644))
        _check(ctypes, libc.mount(f"/proc/self/fd/{fd}".encode(), staged.encode(), None, MS_BIND | MS_REC, None),
               f"bind {host}")
        os.close(fd)
        _check(ctypes, libc.mount(None, staged.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
                                  None), f"read-only {staged}")
    _check(ctypes, libc.mount(None, parent.encode(), None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
                              b"mode=0755,size=1m"), f"read-only {parent}")


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("drop_root.py: usage: [--cgroup-procs F]... [--expose HOST STAGED]... --uid U --gid G -- COMMAND...",
              file=sys.stderr)
        return 2
    split = argv.index("--")
    opts, command = argv[:split], argv[split + 1:]
    procs: list[str] = []
    exposed: list[tuple[str, str]] = []
    uid = gid = None
    i = 0
    while i < len(opts):
        if opts[i] == "--cgroup-procs":
            procs.append(opts[i + 1])
            i += 2
        elif opts[i] == "--expose":
            exposed.append((opts[i + 1], opts[i + 2]))
            i += 3
        elif opts[i] in ("--uid", "--gid"):
            value = int(opts[i + 1])
            if opts[i] == "--uid":
                uid = value
            else:
                gid = value
            i += 2
        else:
            print(f"drop_root.py: unknown option {opts[i]}", file=sys.stderr)
            return 2
    if uid is None or gid is None or uid == 0 or gid == 0 or not command:
        print("drop_root.py: --uid and --gid (not 0) and a command are required", file=sys.stderr)
        return 2
    try:
        for path in procs:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
        if exposed:
            stage(exposed)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.getuid() != uid or os.geteuid() != uid or os.getgroups():
            raise OSError("the uid or groups did not change")
        os.execv(command[0], command)
    except (OSError, ValueError) as e:
        print(f"drop_root.py: cannot start the worker as uid {uid}: {e}", file=sys.stderr)
    return EXIT_SETUP


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
