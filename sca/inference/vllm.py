"""The vLLM backend: the offline engine (`vllm.LLM`) on local GPUs.

The whole batch goes to ``LLM.chat`` at once; vLLM schedules it with
continuous batching and shares common prompt prefixes (prefix caching is on).
The chat template is the model's own. vLLM is imported only when a model is
loaded: ``pip install 'sca-toolkit[vllm]'`` on a GPU machine.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from sca.inference.base import (
    BackendUnavailable,
    ChatModel,
    Generation,
    InferenceError,
    SamplingParams,
    check_conversations,
    cut_at_stop,
    request_seed,
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
    ``vllm.LLM`` unchanged.
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
        **engine_kwargs: Any,
    ):
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
        params = [vllm.SamplingParams(**vllm_sampling_kwargs(sampling, i)) for i in range(len(conversations))]
        outputs = self.llm.chat(
            [list(c) for c in conversations],
            sampling_params=params,
            use_tqdm=False,
            tools=tools or None,
            add_generation_prompt=True,
        )
        if len(outputs) != len(conversations):
            raise InferenceError(f"vLLM returned {len(outputs)} outputs for {len(conversations)} conversations")
        return [to_generation(out, sampling.stop) for out in outputs]

    def info(self) -> dict[str, Any]:
        info = {"backend": self.backend, "model": self.name, "path": self.path}
        info.update({k: v for k, v in self.engine_args.items() if k != "model"})
        return info

    def close(self) -> None:
        if getattr(self, "llm", None) is None:
            return
        self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def vllm_sampling_kwargs(sampling: SamplingParams, index: int = 0) -> dict[str, Any]:
    """Our sampling parameters as ``vllm.SamplingParams`` keyword arguments for conversation `index`.

    vLLM treats temperature 0 as greedy; top_p is then meaningless and left at 1.
    Stop strings are excluded from the text, as in every backend. vLLM seeds
    each request, so conversation i gets ``seed + i``.
    """
    return {
        "n": 1,
        "temperature": sampling.temperature,
        "top_p": 1.0 if sampling.greedy else sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
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
    return Generation(
        text=text,
        prompt_tokens=len(request_output.prompt_token_ids or ()),
        completion_tokens=len(completion.token_ids),
        finish_reason=finish,
    )
