"""Tool environments, and the registry of what is known of each without building it.

Every module in this package whose name does not start with ``_`` (and is not
``base``) is an environment of the same name: it declares ``SPEC``, its
:class:`envs.base.EnvSpec` (name, description, whether a simulated user speaks in it,
its tools, and ``make``, the factory of fresh instances). Another package adds one through
the entry-point group ``sca.envs`` (``name = "pkg.module:SPEC"``, or a factory,
``name = "pkg.module:make"``, whose spec is then read off one instance). Nothing else
needs to change: the CLI and every stage find environments here. (An environment's
benchmark, its tasks and scorer, is registered in :mod:`sca.benchmarks`.)

Listing names imports nothing heavy, so it is cheap (used to check records).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cached_property, lru_cache

from envs.base import EnvSpec, Environment, Tool, ToolError, UnknownToolError, WriteForbiddenError

__all__ = [
    "EnvSpec", "Environment", "Tool", "ToolError", "UnknownToolError", "WriteForbiddenError",
    "env_names", "env_spec", "make_env", "UnknownEnvironmentError",
]

ENTRY_POINT_GROUP = "sca.envs"
_NOT_ENVS = {"base"}


class UnknownEnvironmentError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class _Plugin:
    """An environment of another package: its entry point, and the spec it declares (loaded once)."""

    def __init__(self, entry_point: object) -> None:
        self.entry_point = entry_point

    @cached_property
    def spec(self) -> EnvSpec:
        target = self.entry_point.load()  # type: ignore[attr-defined]
        if isinstance(target, EnvSpec):
            return target
        return EnvSpec.of_instance(target, repr(self.entry_point.name))  # type: ignore[attr-defined]


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, _Plugin]:
    from importlib.metadata import entry_points

    return {ep.name: _Plugin(ep) for ep in entry_points(group=ENTRY_POINT_GROUP)}


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


def env_spec(name: str) -> EnvSpec:
    """What is known of environment `name` without building it (see :class:`envs.base.EnvSpec`)."""
    if name in _builtin_names():
        return importlib.import_module(f"envs.{name}").SPEC
    plugins = _entry_points()
    if name in plugins:
        return plugins[name].spec
    raise UnknownEnvironmentError(f"unknown environment {name!r} (available: {', '.join(env_names())})")


def make_env(name: str) -> Environment:
    """A fresh instance of environment `name`, in its initial state."""
    return env_spec(name).make()
