"""Run model-written Python safely and fast against an environment that stays in this process.

    from sandbox import Sandbox
    with Sandbox(backend="auto", workers=2) as sb:
        res = sb.run(env, code)                                   # exec: reports the global `answer`
        res = sb.run(env, evaluation_src, mode="evaluate", answer=res.answer)  # read-only evaluate()

Backends: ``bwrap`` (namespaces), ``docker`` (containers), ``subprocess``
(rlimits only, no isolation), ``auto`` (docker if an engine answers, else
bwrap). See sandbox/README.md. The names are loaded on first use, so that
``sandbox.config`` (imported by the command line at start-up) costs nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sandbox.config import SandboxConfig

if TYPE_CHECKING:
    from sandbox.backends import BACKENDS, resolve_backend
    from sandbox.core import Sandbox
    from sandbox.result import RunResult, SandboxUnavailable, ToolCallRecord

__all__ = ["BACKENDS", "RunResult", "Sandbox", "SandboxConfig", "SandboxUnavailable", "ToolCallRecord",
           "resolve_backend"]

_WHERE = {"BACKENDS": "sandbox.backends", "resolve_backend": "sandbox.backends", "Sandbox": "sandbox.core",
          "RunResult": "sandbox.result", "SandboxUnavailable": "sandbox.result", "ToolCallRecord": "sandbox.result"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
