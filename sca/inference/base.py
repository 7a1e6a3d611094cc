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

FinishReason = Literal["stop", "length", "error"]
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
    """One model answer: its text (cut before any stop string) and exact token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ChatModel(ABC):
    """A chat model behind some backend. Use as a context manager or call :meth:`close`."""

    name: str
    backend: str

    @abstractmethod
    def generate(
        self,
        conversations: list[list[dict]],
        sampling: SamplingParams,
        tools: list[dict] | None = None,
    ) -> list[Generation]:
        """Answer every conversation (a list of ``{"role", "content"}`` messages), in order.

        `tools` are OpenAI-style tool schemas handed to the chat template (or
        server) for formats that show them to the model.
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
    """Raise TypeError/ValueError unless every conversation is a non-empty list of role/content messages."""
    if isinstance(conversations, (str, dict)) or not isinstance(conversations, (list, tuple)):
        raise TypeError("conversations must be a list of conversations (lists of messages)")
    for i, conv in enumerate(conversations):
        if not isinstance(conv, (list, tuple)) or not conv:
            raise ValueError(f"conversation {i} must be a non-empty list of messages")
        for j, msg in enumerate(conv):
            if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
                raise ValueError(
                    f"conversation {i}, message {j}: expected {{'role': one of {ROLES}, 'content': str}}, got {msg!r}"
                )


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
