"""Run model-written Python safely and fast against an environment that stays in this process.

    from sandbox import Sandbox, SandboxConfig
    with Sandbox(SandboxConfig(backend="auto", workers=2)) as sb:     # or SandboxConfig(...).build()
        res = sb.run(env, code)                                   # exec: reports the global `answer`
        res = sb.run(env, evaluation_src, mode="evaluate", answer=res.answer)  # read-only evaluate()

Backends: ``bwrap`` (namespaces), ``docker`` (containers), ``subprocess``
(rlimits only, no isolation), ``auto`` (docker if an engine answers, else
bwrap). See sandbox/README.md. Every name here is loaded from its module on first use, so
that importing one module of the package (``sandbox.config``, which the command line imports at
start-up, or ``sandbox.errors``) costs nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.backends import resolve_backend
    from sandbox.config import BACKEND_NAMES as BACKENDS
    from sandbox.config import SandboxConfig
    from sandbox.pool import Sandbox
    from sandbox.result import RunResult, SandboxUnavailable, ToolCallRecord

__all__ = ["BACKENDS", "RunResult", "Sandbox", "SandboxConfig", "SandboxUnavailable", "ToolCallRecord",
           "resolve_backend"]

#: name -> (module, the name there)
_WHERE = {"BACKENDS": ("sandbox.config", "BACKEND_NAMES"), "SandboxConfig": ("sandbox.config", "SandboxConfig"),
          "resolve_backend": ("sandbox.backends", "resolve_backend"), "Sandbox": ("sandbox.pool", "Sandbox"),
          "RunResult": ("sandbox.result", "RunResult"), "SandboxUnavailable": ("sandbox.result", "SandboxUnavailable"),
          "ToolCallRecord": ("sandbox.result", "ToolCallRecord")}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        module, attr = _WHERE[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
