"""Run model-written Python safely and fast against an environment that stays in this process.

    from sandbox import Sandbox
    with Sandbox(backend="auto", workers=2) as sb:
        res = sb.run(env, code)                                   # exec: reports the global `answer`
        res = sb.run(env, evaluation_src, mode="evaluate", answer=res.answer)  # read-only evaluate()

Backends: ``bwrap`` (namespaces), ``docker`` (containers), ``subprocess``
(rlimits only, no isolation), ``auto`` (docker if an engine answers, else
bwrap). See sandbox/README.md.
"""

from sandbox.backends import BACKENDS, resolve_backend
from sandbox.core import Sandbox
from sandbox.result import RunResult, SandboxUnavailable, ToolCallRecord

__all__ = ["BACKENDS", "RunResult", "Sandbox", "SandboxUnavailable", "ToolCallRecord", "resolve_backend"]
