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
    """One tool call the code made.

    The sizes, the time and the refusal are always kept; the JSON arguments and result only
    unless the run was told not to (``Sandbox.run(..., keep_payloads=False)``), so that a stage
    that needs a summary never holds what a run chose to send.
    """

    name: str
    args: dict | None = None  # None unless kept
    result: Any = None  # None unless kept (or the tool returned null)
    error: str | None = None  # the ToolError message when the tool refused
    arg_bytes: int = 0  # size of the JSON arguments
    result_bytes: int = 0  # size of the JSON reply (result or refusal)
    seconds: float = 0.0  # time the tool took in the trusted process


@dataclass
class RunResult:
    """The outcome of :meth:`sandbox.Sandbox.run`.

    ``status`` is ``"ok"``, ``"error"`` (the code raised, or used up a budget:
    ``error_type`` says which), ``"timeout"`` or ``"sandbox_error"`` (the worker crashed or
    was killed, the protocol broke, or the code ran out of memory).
    """

    status: str
    answer: Any = None  # exec mode: the global `answer` (JSON; other values as their repr)
    answer_type: str | None = None
    value: Any = None  # evaluate mode: what evaluate() returned (JSON; other values as their repr)
    value_type: str | None = None
    stdout: str = ""
    stderr: str = ""
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    error_type: str | None = None  # "ToolError", "NameError", "Timeout", "BudgetExceeded", "SandboxError", ...
    error: str | None = None
    traceback: str | None = None  # of the code only: the runner's own frames are left out
    duration_s: float = 0.0
    tool_s: float = 0.0  # of duration_s, the time spent in tools in the trusted process
    refused_calls: int = 0  # tool calls the sandbox refused for the run's budgets
    #: the trusted side failed, not the code: no worker could be started, or none said it started the
    #: job, so nothing of the code ran. A run to retry, never a verdict on the code. Once a worker started
    #: the job, everything is the run's own result: errors of the code (its exceptions, its memory), a
    #: worker that died or hung under it, everything a worker sent (a protocol it broke, NaN, a report too
    #: large, a call past the budgets). Infrastructure failures are left out of the rewards and retried,
    #: so code that could cause one could hide its own failing verdict.
    infra: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def verdict(self) -> bool | None:
        """What ``evaluate()`` returned if it returned a real bool (JSON true/false), else None.

        A value of any other type, however it is named (a user class called ``bool``, the
        string "True"), is not a verdict.
        """
        if self.status == "ok" and self.value_type == "bool" and (self.value is True or self.value is False):
            return self.value
        return None
