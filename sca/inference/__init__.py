"""One chat-model interface for every stage, three ways to run the model.

>>> from sca.inference import load_model, SamplingParams
>>> with load_model() as model:                      # SmolLM2-135M-Instruct, transformers
...     [gen] = model.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(temperature=0))

Backends: ``hf`` (transformers, CPU or GPU), ``vllm`` (vLLM's offline engine,
GPU), ``openai`` (any OpenAI-compatible server, e.g. ``vllm serve``). Heavy
libraries are imported only when a backend is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sca.inference.base import (
        BackendUnavailable,
        BadRequest,
        ChatModel,
        Generation,
        InferenceError,
        RequestTimeout,
        SamplingParams,
        ServerError,
    )
    from sca.inference.default_model import DEFAULT_MODEL_NAME, default_model_path

_WHERE = {name: "sca.inference.base" for name in (
    "BackendUnavailable", "BadRequest", "ChatModel", "Generation", "InferenceError", "RequestTimeout",
    "SamplingParams", "ServerError")}
_WHERE.update({"DEFAULT_MODEL_NAME": "sca.inference.default_model", "default_model_path": "sca.inference.default_model"})


def __getattr__(name: str) -> Any:
    """The names of the submodules, loaded on first use (``sca.inference.config`` is imported by
    the command line at start-up and must not pull in the rest)."""
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sca.inference' has no attribute {name!r}")


BACKENDS = ("hf", "vllm", "openai")

__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL_NAME",
    "BackendUnavailable",
    "BadRequest",
    "ChatModel",
    "Generation",
    "InferenceError",
    "RequestTimeout",
    "SamplingParams",
    "ServerError",
    "default_model_path",
    "load_model",
]


def load_model(
    model: str | None = None,
    backend: str = "hf",
    *,
    base_urls: list[str] | None = None,
    **kwargs: Any,
) -> ChatModel:
    """Open a chat model.

    `model`: a Hugging Face id or local checkpoint path (``hf``, ``vllm``), or
    the model name the server knows (``openai``). None means the default model
    (SmolLM2-135M-Instruct; for ``openai``, the first model the server lists).
    `base_urls`: the ``openai`` servers, used round-robin (default
    ``$OPENAI_BASE_URL`` or ``http://127.0.0.1:8000/v1``).
    Other keyword arguments go to the backend's class: :class:`~sca.inference.hf.HFChatModel`,
    :class:`~sca.inference.vllm.VLLMChatModel`, :class:`~sca.inference.openai_compat.OpenAIChatModel`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if base_urls is not None and backend != "openai":
        raise ValueError(f"base_urls only applies to the openai backend, not {backend!r}")
    if backend == "openai":
        from sca.inference.openai_compat import OpenAIChatModel

        return OpenAIChatModel(model, base_urls=base_urls, **kwargs)

    if backend == "hf":  # first: importing it sets OpenMP's wait policy, before anything here loads torch
        import sca.inference.hf  # noqa: F401
    from sca.inference.default_model import DEFAULT_MODEL_NAME, default_model_path

    name = kwargs.pop("name", None)
    if model is None:
        model, name = str(default_model_path()), name or DEFAULT_MODEL_NAME
    if backend == "hf":
        from sca.inference.hf import HFChatModel

        return HFChatModel(model, name=name, **kwargs)
    from sca.inference.vllm import VLLMChatModel

    return VLLMChatModel(model, name=name, **kwargs)
