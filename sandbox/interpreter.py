"""What a sandbox shows of a Python interpreter: the executable, its standard library and the
shared libraries they load. Nothing installed: no site-packages, no dist-packages, nothing else of
the host's library directories.

Both isolating backends are built from this: bwrap binds exactly these files (read-only), the
Docker image is made of them when no registry is reachable (``python -m sandbox.image build``).
A verdict must never depend on what happens to be installed on the machine that computed it, and
model-written code must not find the host's packages (with their data, and their code to run).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from dataclasses import dataclass

#: directories of the standard library the runner never needs (the image leaves them out)
SKIP_DIRS = frozenset({"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
                       "site-packages", "dist-packages", "__phello__"})
#: extension modules left out: their shared libraries (X11 for tkinter) are not the sandbox's business
SKIP_EXTENSIONS = ("_tkinter",)


@dataclass(frozen=True)
class Interpreter:
    """Facts of one Python installation, as resolved paths on this machine."""

    exe: str  # the real executable (never a virtual environment's link to it)
    prefix: str  # its installation prefix (sys.base_prefix)
    stdlib: str  # the standard library directory (lib-dynload inside it)
    version: str  # "3.11.7"
    libdir: str  # where a shared libpython lives, if any

    @property
    def relocated(self) -> bool:
        """Whether the sandbox shows it elsewhere than on the host: anything outside /usr (a pyenv
        or conda tree under /root or /home) appears under one neutral prefix."""
        return not (self.prefix == "/usr" or self.prefix.startswith("/usr/"))


_FACTS = ("import json, os, sys, sysconfig; print(json.dumps({'exe': os.path.realpath(sys.executable), "
          "'prefix': os.path.realpath(sys.base_prefix), 'stdlib': os.path.realpath(sysconfig.get_paths()['stdlib']), "
          "'version': '%d.%d.%d' % sys.version_info[:3], 'libdir': sysconfig.get_config_var('LIBDIR') or ''}))")


def interpreter(python: str | None = None) -> Interpreter:
    """The facts of `python` (default: the running interpreter, without starting another)."""
    if python is None or os.path.realpath(python) == os.path.realpath(sys.executable):
        facts = {"exe": os.path.realpath(sys.executable), "prefix": os.path.realpath(sys.base_prefix),
                 "stdlib": os.path.realpath(sysconfig.get_paths()["stdlib"]),
                 "version": "%d.%d.%d" % sys.version_info[:3], "libdir": sysconfig.get_config_var("LIBDIR") or ""}
    else:
        out = subprocess.run([python, "-I", "-c", _FACTS], check=True, capture_output=True, text=True).stdout
        facts = json.loads(out)
    if not facts["exe"].startswith(facts["prefix"] + os.sep):  # an executable outside its prefix (rare)
        facts["prefix"] = os.path.dirname(os.path.dirname(facts["exe"]))
    return Interpreter(**facts)


def extension_modules(interp: Interpreter) -> list[str]:
    """The standard library's compiled modules (lib-dynload), but those of :data:`SKIP_EXTENSIONS`."""
    found = []
    for root, dirs, names in os.walk(interp.stdlib):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith("config-")]
        found += [os.path.join(root, n) for n in names
                  if n.endswith(".so") and not n.startswith(SKIP_EXTENSIONS)]
    return sorted(found)


def libpython(interp: Interpreter) -> list[str]:
    """A shared libpython of the installation, if it has one (its files and links)."""
    if not interp.libdir or not os.path.isdir(interp.libdir):
        return []
    return sorted(os.path.join(interp.libdir, n) for n in os.listdir(interp.libdir) if n.startswith("libpython")
                  and ".so" in n)


def shared_libraries(binaries: list[str]) -> list[str]:
    """Every shared library the binaries load (per one ``ldd`` over all of them), the dynamic
    loader included, as the paths the loader asks for (``/lib/x86_64-linux-gnu/libz.so.1``)."""
    if not binaries:
        return []
    try:
        out = subprocess.run(["ldd", *binaries], capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise OSError(f"ldd cannot list the interpreter's shared libraries: {e}") from None
    libs = set()
    for line in out.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
        if m:
            libs.add(m.group(1))
    return sorted(libs)


def sandbox_path(interp: Interpreter, mount: str, path: str) -> str:
    """Where the host path `path` of `interp`'s installation appears in the sandbox."""
    if interp.relocated and path.startswith(interp.prefix + os.sep):
        return mount + path[len(interp.prefix):]
    return path


def sandbox_files(interp: Interpreter, mount: str) -> dict[str, str]:
    """What the sandbox needs of `interp`: sandbox path -> host path, the standard library as one
    directory, every other entry a file. `mount` is where a relocated installation appears.

    A library of the installation itself (a shared libpython) appears in the installation's own
    lib directory under `mount`, where the loader is told to look (:func:`library_path`); any other
    library in its own directory as the host resolves it, under the name the loader asks for,
    which is where the loader's default search finds it without the host's ``/etc/ld.so.cache``.
    """
    files = {sandbox_path(interp, mount, interp.stdlib): interp.stdlib,
             sandbox_path(interp, mount, interp.exe): interp.exe}
    for lib in shared_libraries([interp.exe, *extension_modules(interp), *libpython(interp)]):
        real = os.path.realpath(lib)
        where = os.path.join(os.path.realpath(os.path.dirname(lib)), os.path.basename(lib))
        files[sandbox_path(interp, mount, where)] = real
    return files


def library_path(interp: Interpreter, mount: str) -> str | None:
    """``LD_LIBRARY_PATH`` inside the sandbox for a relocated installation with a shared libpython
    (its RPATH names the host location); None when the loader needs no help."""
    if interp.relocated and any(p.startswith(interp.prefix + os.sep) for p in libpython(interp)):
        return sandbox_path(interp, mount, os.path.realpath(interp.libdir))
    return None


def package_dirs(interp: Interpreter) -> list[str]:
    """Directories of installed packages in the standard library's directory (``site-packages``,
    ``dist-packages``), which the sandbox hides under an empty directory."""
    return [os.path.join(interp.stdlib, d) for d in ("site-packages", "dist-packages")
            if os.path.isdir(os.path.join(interp.stdlib, d))]
