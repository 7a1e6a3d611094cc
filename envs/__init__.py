"""Tool environments.

Every module in this package whose name does not start with ``_`` (and is not
``base``) is an environment of the same name: it defines ``make()``, which
returns an :class:`envs.base.Environment`. Another package adds one through
the entry-point group ``sca.envs`` (``name = "pkg.module:make"``). Nothing else
needs to change: the CLI and every stage find environments here.

Listing names imports nothing heavy, so it is cheap (used to check records).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from typing import Callable

from envs.base import BenchmarkTask, Environment, Tool, ToolError, UnknownToolError, WriteForbiddenError

__all__ = [
    "BenchmarkTask", "Environment", "Tool", "ToolError", "UnknownToolError", "WriteForbiddenError",
    "env_names", "make_env", "UnknownEnvironmentError",
]

ENTRY_POINT_GROUP = "sca.envs"
_NOT_ENVS = {"base"}


class UnknownEnvironmentError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, object]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _builtin_names() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(__path__)
        if not m.name.startswith("_") and m.name not in _NOT_ENVS
    )


def env_names() -> list[str]:
    """Names of every available environment (built-in first, then plug-ins)."""
    names = _builtin_names()
    names += sorted(n for n in _entry_points() if n not in names)
    return names


def _factory(name: str) -> Callable[[], Environment]:
    if name in _builtin_names():
        module = importlib.import_module(f"envs.{name}")
        return module.make
    eps = _entry_points()
    if name in eps:
        return eps[name].load()  # type: ignore[attr-defined]
    raise UnknownEnvironmentError(f"unknown environment {name!r} (available: {', '.join(env_names())})")


def make_env(name: str) -> Environment:
    """A fresh instance of environment `name`, in its initial state."""
    env = _factory(name)()
    if not isinstance(env, Environment):
        raise TypeError(f"environment factory for {name!r} returned {type(env).__name__}, not an Environment")
    return env
