"""What one sandboxed run reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: every value of :attr:`RunResult.status`
STATUSES = ("ok", "error", "timeout", "sandbox_error")


class SandboxUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why, in one line."""


@dataclass
class ToolCallRecord:
    """One tool call the code made: its JSON arguments and the result or the refusal."""

    name: str
    args: dict
    result: Any = None
    error: str | None = None  # the ToolError message when the tool refused


@dataclass
class RunResult:
    """The outcome of :meth:`sandbox.Sandbox.run`.

    ``status`` is ``"ok"``, ``"error"`` (the code raised), ``"timeout"`` or
    ``"sandbox_error"`` (the worker crashed or was killed, the protocol broke,
    or the code ran out of memory).
    """

    status: str
    answer: Any = None  # exec mode: the global `answer` (JSON; other values as their repr)
    answer_type: str | None = None
    value: Any = None  # evaluate mode: what evaluate() returned (JSON; other values as their repr)
    value_type: str | None = None
    stdout: str = ""
    stderr: str = ""
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    error_type: str | None = None  # "ToolError", "NameError", "Timeout", "MemoryError", "SandboxError", ...
    error: str | None = None
    traceback: str | None = None  # of the code only: the runner's own frames are left out
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"
