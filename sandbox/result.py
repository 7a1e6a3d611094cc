"""What one sandboxed run reports."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

#: every value of :attr:`RunResult.status`
STATUSES = ("ok", "error", "timeout", "sandbox_error")


#: a tool call's arguments or result kept in its record (``keep_payloads``) up to this many bytes of
#: JSON; a larger one is kept as a stub (see :func:`payload_stub`)
KEEP_PAYLOAD_BYTES = 16 << 10
#: bytes of payloads one run keeps at most with ``keep_payloads=True`` (the rest as stubs): what the
#: trusted process holds of what a run sent is bounded whatever the code sends
KEEP_RUN_BYTES = 1 << 20
#: characters of a refusal's message kept in a call's record (the code itself gets up to 4,000)
KEEP_ERROR_CHARS = 1000
#: characters of a payload's JSON a stub keeps
STUB_PREFIX_CHARS = 200


#: the single key of a payload stub
STUB_KEY = "_truncated"


def payload_stub(value: Any) -> dict:
    """What a record keeps of a payload too large to keep: ``{"_truncated": {"bytes", "sha256",
    "prefix"}}``, the size, digest and first characters of its compact JSON. A dict with a single
    key no tool has as a parameter, so it is never mistaken for arguments that could be replayed."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    data = text.encode("utf-8", "replace")
    return {STUB_KEY: {"bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest(), "prefix": text[:STUB_PREFIX_CHARS]}}


def is_stub(value: Any) -> bool:
    """Whether `value` is a :func:`payload_stub`."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(STUB_KEY), dict)


class SandboxUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why, in one line."""


@dataclass
class ToolCallRecord:
    """One tool call the code made.

    The sizes, the time and the refusal are always kept; the JSON arguments and result only
    unless the run was told not to (``Sandbox.run(..., keep_payloads=False)``), so that a stage
    that needs a summary never holds what a run chose to send, and then each within a size (a
    larger one becomes a ``{"_truncated": {"bytes", "sha256", "prefix"}}`` stub: see
    :func:`payload_stub`).
    """

    name: str
    args: dict | None = None  # None unless kept
    result: Any = None  # None unless kept (or the tool returned null)
    error: str | None = None  # the ToolError message when the tool refused (its first 1,000 characters)
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
    kept_bytes: int = 0  # bytes of JSON payloads kept in tool_calls (see Sandbox.run's keep_payloads)
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
