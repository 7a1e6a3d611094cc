"""The chat-model interface every stage talks to, whatever runs the model.

A :class:`ChatModel` takes a batch of chat conversations and returns one
:class:`Generation` per conversation, in order. Backends differ only in how
they get there (transformers in-process, vLLM's offline engine, or an
OpenAI-compatible HTTP server); stop strings, token counts and finish reasons
mean the same thing for all of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from typing_extensions import Self

#: why a generation ended: a stop string or end of turn ("stop"), ``max_new_tokens`` ("length"), the
#: model called tools ("tool_calls"), the prompt does not fit the model's context ("context": nothing was
#: generated), or the request failed for good ("error", with ``on_error="return"``)
FinishReason = Literal["stop", "length", "tool_calls", "context", "error"]
ROLES = ("system", "user", "assistant", "tool")


class InferenceError(RuntimeError):
    """Generation failed. `status` and `body` carry the server's answer when there was one."""

    def __init__(self, message: str, *, status: int | None = None, body: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = body


class ServerError(InferenceError):
    """The server kept failing (5xx, 429, or no connection) after every retry."""


class RequestTimeout(InferenceError):
    """A request kept timing out after every retry."""


class BadRequest(InferenceError):
    """The server rejected the request (4xx other than 429); retrying would not help."""


class BackendUnavailable(InferenceError):
    """The backend's software or model is not installed here."""


@dataclass
class SamplingParams:
    """How to sample. `temperature` 0 means greedy; `stop` strings end a generation early."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Generation:
    """One model answer: its text (cut before any stop string) and exact token counts.

    `token_ids`: the completion's token ids as the model produced them (up to and including
    the end-of-turn token or the token that completed a stop string), where the backend gives
    them (hf, vllm), else None. `tool_calls`: with tools offered, the calls the model made,
    OpenAI-style (``{"id", "type": "function", "function": {"name", "arguments": JSON text}}``);
    `text` is then what it wrote besides them.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    token_ids: list[int] | None = None
    tool_calls: list[dict] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ChatModel(ABC):
    """A chat model behind some backend. Use as a context manager or call :meth:`close`."""

    name: str
    backend: str
    #: the longest prompt plus completion the model takes, in tokens (None: unknown)
    context_length: int | None = None

    @abstractmethod
    def generate(
        self,
        conversations: list[list[dict]],
        sampling: SamplingParams,
        tools: list[dict] | None = None,
    ) -> list[Generation]:
        """Answer every conversation (a list of ``{"role", "content"}`` messages), in order.

        `tools` are OpenAI-style tool schemas handed to the chat template (or
        server) for formats that show them to the model; the calls the model
        makes come back in `Generation.tool_calls`. Earlier calls and their
        results are OpenAI-style messages too: an assistant message with
        ``tool_calls`` (content may be None) and ``{"role": "tool",
        "tool_call_id", "content"}`` (see :func:`check_conversations`).

        A conversation whose prompt does not fit the context gets finish_reason
        "context" with nothing generated; the others are generated as usual,
        never past the context.
        """

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """What produced the outputs (backend, model, dtype, device...), for output metadata."""

    def close(self) -> None:
        """Release the model's memory, engines or connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, backend={self.backend!r})"


def check_conversations(conversations: list[list[dict]]) -> None:
    """Raise TypeError/ValueError unless every conversation is a non-empty list of well-formed messages.

    A message is ``{"role": one of ROLES, "content": str}``. An assistant message
    may also carry OpenAI-style ``tool_calls`` (``[{"id", "type": "function",
    "function": {"name", "arguments": JSON text}}]``), and then its content may
    be None or missing; a tool message may name the call it answers in
    ``tool_call_id``.
    """
    if isinstance(conversations, (str, dict)) or not isinstance(conversations, (list, tuple)):
        raise TypeError("conversations must be a list of conversations (lists of messages)")
    for i, conv in enumerate(conversations):
        if not isinstance(conv, (list, tuple)) or not conv:
            raise ValueError(f"conversation {i} must be a non-empty list of messages")
        for j, msg in enumerate(conv):
            _check_message(msg, f"conversation {i}, message {j}")


def _check_message(msg: Any, where: str) -> None:
    if not isinstance(msg, dict) or msg.get("role") not in ROLES:
        raise ValueError(f"{where}: expected {{'role': one of {ROLES}, 'content': str}}, got {msg!r}")
    role, calls = msg["role"], msg.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            raise ValueError(f"{where}: only assistant messages may have tool_calls, not {role!r} ones: {msg!r}")
        if not isinstance(calls, (list, tuple)):
            raise ValueError(f"{where}: tool_calls must be a list, got {calls!r}")
        for k, call in enumerate(calls):
            _check_tool_call(call, f"{where}, tool call {k}")
    content = msg.get("content")
    if not isinstance(content, str) and not (content is None and role == "assistant" and calls):
        raise ValueError(
            f"{where}: 'content' must be a str (None only on an assistant message with tool_calls), got {msg!r}"
        )
    for key in ("tool_call_id", "name"):
        if key in msg and not isinstance(msg[key], str):
            raise ValueError(f"{where}: {key!r} must be a str, got {msg[key]!r}")


def _check_tool_call(call: Any, where: str) -> None:
    expected = "{'id': str, 'type': 'function', 'function': {'name': str, 'arguments': JSON text}}"
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or call.get("type", "function") != "function":
        raise ValueError(f"{where}: expected {expected}, got {call!r}")
    if not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ValueError(f"{where}: the function needs a non-empty 'name', got {call!r}")
    if not isinstance(fn.get("arguments"), (str, dict)):
        raise ValueError(f"{where}: 'arguments' must be JSON text (or a dict), got {call!r}")  # noqa: TRY004
    if "id" in call and not isinstance(call["id"], str):
        raise ValueError(f"{where}: 'id' must be a str, got {call!r}")


def request_seed(sampling: SamplingParams, index: int) -> int | None:
    """The seed for conversation `index` of a call on backends that seed each request.

    Offsetting by the index keeps identical conversations in one call from
    getting identical samples while the whole call stays reproducible.
    """
    return None if sampling.seed is None else sampling.seed + index


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut `text` before the earliest occurrence of any stop string; say whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def context_generation(prompt_tokens: int) -> Generation:
    """What a conversation whose prompt does not fit the context gets: nothing generated."""
    return Generation(text="", prompt_tokens=prompt_tokens, completion_tokens=0, finish_reason="context")


def fits_context(prompt_tokens: int, context_length: int | None) -> bool:
    """Whether a prompt leaves room for at least one new token (always, when the context is unknown)."""
    return context_length is None or prompt_tokens < context_length


def new_token_budget(prompt_tokens: int, max_new_tokens: int, context_length: int | None) -> int:
    """`max_new_tokens`, capped so that prompt plus completion never exceed `context_length`."""
    if context_length is None:
        return max_new_tokens
    return max(0, min(max_new_tokens, context_length - prompt_tokens))
