"""The vLLM backend: the offline engine (`vllm.LLM`) on local GPUs.

The whole batch goes to ``LLM.chat`` at once; vLLM schedules it with
continuous batching and shares common prompt prefixes (prefix caching is on).
The chat template is the model's own. vLLM is imported only when a model is
loaded: ``pip install 'sca-toolkit[vllm]'`` on a GPU machine.

The context is the engine's ``max_model_len``: prompts are counted with the
engine's tokenizer first; one that does not fit gets finish_reason "context"
and is not sent, and the others get ``max_tokens`` capped to the room left.
With `tools`, answers are split into text and tool calls by the parser of the
model's family (:mod:`sca.inference.toolcalls`).
"""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path
from typing import Any

from sca.inference.base import (
    BackendUnavailable,
    ChatModel,
    Generation,
    InferenceError,
    SamplingParams,
    check_conversations,
    context_generation,
    cut_at_stop,
    fits_context,
    new_token_budget,
    request_seed,
)
from sca.inference.toolcalls import (
    FAMILIES,
    detect_family,
    extract_tool_calls,
    openai_messages,
    template_messages,
)


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise BackendUnavailable(
            f"the vllm backend needs vLLM, which is not installed ({e}); "
            "on a GPU machine: pip install 'sca-toolkit[vllm]', or use --backend hf"
        ) from e
    return vllm


class VLLMChatModel(ChatModel):
    """A model served by vLLM's offline engine.

    `tensor_parallel_size` splits the model across that many GPUs; other
    keyword arguments (``max_model_len``, ``gpu_memory_utilization``...) go to
    ``vllm.LLM`` unchanged. `tool_family`: how the model writes tool calls
    (see :data:`sca.inference.toolcalls.FAMILIES`; default: detected from the
    chat template).
    """

    backend = "vllm"

    def __init__(
        self,
        model: str | Path,
        *,
        name: str | None = None,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        seed: int = 0,
        tool_family: str | None = None,
        **engine_kwargs: Any,
    ):
        if tool_family is not None and tool_family not in FAMILIES:
            raise ValueError(f"unknown tool_family {tool_family!r}; choose one of {', '.join(FAMILIES)}")
        vllm = _import_vllm()
        self.name = name or Path(str(model).rstrip("/")).name
        self.path = str(model)
        self.engine_args = dict(
            model=str(model),
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            enable_prefix_caching=True,
            **engine_kwargs,
        )
        self.llm = vllm.LLM(**self.engine_args)
        self.tool_family = tool_family
        self.context_length = engine_context_length(self.llm) or engine_kwargs.get("max_model_len")

    @classmethod
    def from_llm(cls, llm: Any, *, name: str, tool_family: str | None = None) -> VLLMChatModel:
        """Wrap a ``vllm.LLM`` made elsewhere (TRL's colocated engine during GRPO, whose weights TRL
        keeps in sync); :meth:`close` leaves it to its owner."""
        self = cls.__new__(cls)
        self.name, self.path, self.engine_args = name, None, {}
        self.llm, self.tool_family = llm, tool_family
        self.context_length = engine_context_length(llm)
        self._borrowed = True
        return self

    def generate(
        self,
        conversations: list[list[dict]],
        sampling: SamplingParams,
        tools: list[dict] | None = None,
    ) -> list[Generation]:
        check_conversations(conversations)
        if not conversations:
            return []
        vllm = _import_vllm()
        tokenizer = self._tokenizer()
        family = self.family(tokenizer) if tools else None
        results: list[Generation | None] = [None] * len(conversations)
        todo: list[tuple[int, int]] = []  # (conversation, max_tokens)
        for i, conv in enumerate(conversations):
            n = self._count_prompt(tokenizer, template_messages(conv, family), tools)
            if n is not None and not fits_context(n, self.context_length):
                results[i] = context_generation(n)
            else:
                budget = sampling.max_new_tokens if n is None else new_token_budget(
                    n, sampling.max_new_tokens, self.context_length
                )
                todo.append((i, budget))
        if todo:
            params = [vllm.SamplingParams(**vllm_sampling_kwargs(sampling, i, max_tokens=m)) for i, m in todo]
            outputs = self.llm.chat(
                [vllm_chat_messages(conversations[i], family) for i, _ in todo],
                sampling_params=params,
                use_tqdm=False,
                tools=tools or None,
                add_generation_prompt=True,
            )
            if len(outputs) != len(todo):
                raise InferenceError(f"vLLM returned {len(outputs)} outputs for {len(todo)} conversations")
            for (i, _), out in zip(todo, outputs):
                gen = to_generation(out, sampling.stop)
                if family is not None:
                    text, calls = extract_tool_calls(tokenizer, gen.token_ids, gen.text, sampling.stop, family)
                    if calls:
                        reason = "tool_calls" if gen.finish_reason == "stop" else gen.finish_reason
                        gen = dataclasses.replace(gen, text=text, tool_calls=calls, finish_reason=reason)
                results[i] = gen
        return results  # type: ignore[return-value]

    def family(self, tokenizer: Any = None) -> str:
        """The tool-call family used to parse answers: `tool_family`, else detected from the chat template."""
        if self.tool_family:
            return self.tool_family
        return detect_family(tokenizer if tokenizer is not None else self._tokenizer(), self.path)

    def _tokenizer(self) -> Any:
        """The engine's tokenizer, or None if it does not give one."""
        try:
            return self.llm.get_tokenizer()
        except Exception:  # noqa: BLE001 - an engine without one (skip_tokenizer_init...): no tokenizer
            return None

    def _count_prompt(self, tokenizer: Any, conversation: list[dict], tools: list[dict] | None) -> int | None:
        """Prompt tokens as vLLM's chat renders them, or None when the context or a usable tokenizer is missing."""
        if self.context_length is None or tokenizer is None:
            return None
        try:
            text = tokenizer.apply_chat_template(
                conversation, tools=tools or None, add_generation_prompt=True, tokenize=False
            )
            if not isinstance(text, str):  # e.g. a tokenizer whose template gives token ids
                return len(text)
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])
        except Exception:  # noqa: BLE001 - no template, an unusual tokenizer: the engine checks then
            return None

    def info(self) -> dict[str, Any]:
        info = {"backend": self.backend, "model": self.name, "path": self.path, "context_length": self.context_length}
        info.update({k: v for k, v in self.engine_args.items() if k != "model"})
        return info

    def close(self) -> None:
        if getattr(self, "llm", None) is None or getattr(self, "_borrowed", False):
            return
        self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def vllm_chat_messages(conversation: list[dict], family: str | None = None) -> list[dict]:
    """Copies of the messages as ``LLM.chat`` takes them: OpenAI's wire format.

    vLLM parses each assistant tool call's ``arguments`` from JSON text itself before
    the chat template sees it (``json.loads``; older versions fail on an object), so they go
    as JSON text: an object is written out, empty text becomes ``{}`` and text that
    is not JSON a JSON string. Tool-call ids are fixed for mistral as in
    :func:`~sca.inference.toolcalls.template_messages`; a None content next to tool
    calls becomes "".
    """
    out = openai_messages(template_messages(conversation, family))
    for message in out:
        for call in message.get("tool_calls") or ():
            fn = call["function"]
            try:
                json.loads(fn["arguments"])
            except (ValueError, RecursionError):
                fn["arguments"] = json.dumps(fn["arguments"], ensure_ascii=False)
    return out


def vllm_sampling_kwargs(sampling: SamplingParams, index: int = 0, max_tokens: int | None = None) -> dict[str, Any]:
    """Our sampling parameters as ``vllm.SamplingParams`` keyword arguments for conversation `index`.

    `max_tokens` overrides ``max_new_tokens`` (a cap that keeps the request within the context).

    vLLM treats temperature 0 as greedy; top_p is then meaningless and left at 1.
    Stop strings are excluded from the text, as in every backend. vLLM seeds
    each request, so conversation i gets ``seed + i``.
    """
    return {
        "n": 1,
        "temperature": sampling.temperature,
        "top_p": 1.0 if sampling.greedy else sampling.top_p,
        "max_tokens": sampling.max_new_tokens if max_tokens is None else max_tokens,
        "stop": list(sampling.stop) or None,
        "include_stop_str_in_output": False,
        "seed": request_seed(sampling, index),
    }


def to_generation(request_output: Any, stop: list[str]) -> Generation:
    """One ``vllm.RequestOutput`` (its first completion) as a :class:`Generation`.

    vLLM reports "stop" for EOS and stop strings, "length" at max_tokens, and
    "abort" when a request was dropped; the last becomes "error".
    """
    completion = request_output.outputs[0]
    text, cut = cut_at_stop(completion.text, stop)
    reason = completion.finish_reason
    if cut or reason == "stop":
        finish = "stop"
    elif reason == "length":
        finish = "length"
    else:
        finish = "error"
    token_ids = list(completion.token_ids)
    return Generation(
        text=text,
        prompt_tokens=len(request_output.prompt_token_ids or ()),
        completion_tokens=len(token_ids),
        finish_reason=finish,
        token_ids=token_ids,
    )


def engine_context_length(llm: Any) -> int | None:
    """The engine's ``max_model_len`` (where vLLM keeps it differs between versions), or None."""
    for owner in (getattr(llm, "llm_engine", None), llm):
        config = getattr(owner, "model_config", None)
        value = getattr(config, "max_model_len", None)
        if isinstance(value, int) and value > 0:
            return value
    return None
