"""Every setting of a sandbox in one place, with its default: :class:`SandboxConfig`.

A :class:`~sandbox.pool.Sandbox` is made from one (``Sandbox(config)``); stages hold one and build
their sandbox with :meth:`SandboxConfig.build`; the command line takes its flags' defaults, help and
bounds from here. No other module holds a default of these settings: the parent sends each of them
with every job, and the runner reads them from the job. Standard library only, and nothing of the
package but the pool that :meth:`SandboxConfig.build` imports when called (``sca --help`` imports
this module).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

#: the names ``--sandbox`` accepts
BACKEND_NAMES = ("auto", "docker", "bwrap", "subprocess")


def _cores() -> int:
    return os.cpu_count() or 1


@dataclass
class SandboxConfig:
    """How model-written code runs: which isolation, how many workers, and each run's limits.

    Budgets are per run: a run that asks for more gets a ``BudgetExceeded`` error at the call
    that goes over (it is the code's error, like any exception it raises).
    """

    # `metadata`: the help and bounds of the command line's flag (``sca_cli.common.flag``)
    backend: str = field(default="auto", metadata={"help": " | ".join(BACKEND_NAMES) + " (subprocess: no isolation)."})
    workers: int = field(default_factory=_cores, metadata={  # one warm worker each
        "help": "Sandbox workers, runs at once [default: cores].", "min": 1})
    timeout: float = field(default=10.0, metadata={
        "help": "Seconds of wall clock for each run of code, tool calls included.", "min": 0.1})
    memory_mb: int = field(default=1024, metadata={  # address space
        "help": "Memory cap of each process of a run, MiB.", "min": 64})
    max_procs: int = 64  # processes a run may have at once
    output_limit: int = 10_000  # characters of stdout and of stderr kept per run
    max_tool_calls: int = field(default=2000, metadata={"help": "Tool calls allowed per run.", "min": 1})
    max_tool_bytes: int = field(default=8 << 20, metadata={  # arguments and results together
        "help": "Bytes of JSON tool arguments and results allowed per run.", "min": 1024})
    max_depth: int = 64  # nesting of lists/objects in tool arguments, answers and returned values
    image: str = "sca-sandbox:latest"  # the docker backend's image

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_NAMES:
            raise ValueError(f"unknown sandbox backend {self.backend!r} (choose from {', '.join(BACKEND_NAMES)})")
        for name in ("workers", "timeout", "memory_mb", "max_procs", "output_limit", "max_tool_calls",
                     "max_tool_bytes", "max_depth"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"sandbox {name} must be a positive number, not {value!r}")

    def with_(self, **changes: Any) -> SandboxConfig:
        """A copy with some settings changed (None values are ignored: "keep the default")."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def build(self, workers: int | None = None):
        """Start a :class:`~sandbox.pool.Sandbox` with these settings (`workers` overrides the count)."""
        from sandbox.pool import Sandbox  # imported on use: the command line imports this module at start-up

        return Sandbox(self if workers is None else replace(self, workers=max(1, workers)))
