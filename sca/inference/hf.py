"""The transformers backend: one `generate` call per batch, on CPU or GPU.

Conversations are rendered with the tokenizer's own chat template, sorted by
length (less padding), left-padded into batches of `batch_size`, and generated
together. Token counts are exact: prompt tokens without padding, completion
tokens up to and including the end-of-turn token or the token that completed
a stop string.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from sca.inference.base import (
    ChatModel,
    Generation,
    InferenceError,
    SamplingParams,
    check_conversations,
    cut_at_stop,
)


class HFChatModel(ChatModel):
    """A causal LM loaded with transformers.

    `model` is a Hugging Face model id or a local checkpoint directory.
    `device` is "auto" (CUDA when available), "cpu", "cuda", "cuda:1"...;
    `dtype` is "auto" (bfloat16 on GPU, float32 on CPU) or a torch dtype name.
    `num_threads`, if given, sets torch's CPU thread count for the whole
    process (1 is much faster than the default on a CPU shared with other work).
    """

    backend = "hf"

    def __init__(
        self,
        model: str | Path,
        *,
        name: str | None = None,
        batch_size: int = 16,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        num_threads: int | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads is not None:
            torch.set_num_threads(num_threads)

        device = _pick_device(device)
        torch_dtype = _pick_dtype(dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(str(model), trust_remote_code=trust_remote_code)
        lm = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch_dtype, trust_remote_code=trust_remote_code)
        lm.to(device)
        self._setup(lm, tokenizer, name=name or _short_name(model), path=str(model), batch_size=batch_size)

    @classmethod
    def from_objects(cls, model: Any, tokenizer: Any, *, name: str, batch_size: int = 16) -> HFChatModel:
        """Wrap a model and tokenizer already in memory (e.g. right after training)."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer, name=name, path=None, batch_size=batch_size)
        return self

    def _setup(self, model: Any, tokenizer: Any, *, name: str, path: str | None, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not getattr(tokenizer, "chat_template", None):
            raise InferenceError(f"the tokenizer of {name} has no chat template")
        self.name = name
        self.path = path
        self.batch_size = batch_size
        self.model = model.eval()
        self.tokenizer = tokenizer
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        if not eos_ids:
            raise InferenceError(f"{name} defines no end-of-sequence token")
        self._eos_ids = sorted(eos_ids)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = model.generation_config.pad_token_id
        self._pad_id = pad if pad is not None else self._eos_ids[0]

    # -- generation ---------------------------------------------------------------------------

    def generate(
        self,
        conversations: list[list[dict]],
        sampling: SamplingParams,
        tools: list[dict] | None = None,
    ) -> list[Generation]:
        import torch

        check_conversations(conversations)
        prompts = [self._encode(conv, tools, i) for i, conv in enumerate(conversations)]
        # Longest first: similar lengths share a batch, and memory trouble shows up at once.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, gen in zip(chunk, self._generate_batch([prompts[i] for i in chunk], sampling)):
                results[i] = gen
        return results  # type: ignore[return-value]

    def _encode(self, conversation: list[dict], tools: list[dict] | None, index: int) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(
                conversation, tools=tools or None, add_generation_prompt=True, tokenize=False
            )
        except Exception as e:  # jinja raises its own errors, e.g. for unsupported roles
            raise InferenceError(f"chat template of {self.name} failed on conversation {index}: {e}") from e
        # The template already writes any BOS/special tokens it wants.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _generate_batch(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Generation]:
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention_mask[row, width - len(p) :] = 1
        device = self.model.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)

        # A fresh config: only our sampling parameters count, not the checkpoint's defaults.
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not sampling.greedy,
            temperature=None if sampling.greedy else sampling.temperature,
            top_p=None if sampling.greedy else sampling.top_p,
            top_k=None if sampling.greedy else 0,  # no top-k cut (older transformers default to 50)
            eos_token_id=self._eos_ids,
            pad_token_id=self._pad_id,
            bos_token_id=self.model.generation_config.bos_token_id,
        )
        stopper = _StopStrings(self.tokenizer, sampling.stop, width, self._eos_ids) if sampling.stop else None
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([stopper]) if stopper else None,
            )
        new = out[:, width:].tolist()

        gens = []
        for row, (prompt, tokens) in enumerate(zip(prompts, new)):
            n, reason = len(tokens), "length"
            eos_at = next((k for k, t in enumerate(tokens) if t in self._eos_ids), None)
            if eos_at is not None:
                n, reason = eos_at + 1, "stop"
            if stopper is not None and stopper.stopped_at[row] is not None and stopper.stopped_at[row] <= n:
                n, reason = stopper.stopped_at[row], "stop"
            text = self.tokenizer.decode(tokens[:n], skip_special_tokens=True)
            text, cut = cut_at_stop(text, sampling.stop)
            if cut:
                reason = "stop"
            elif reason == "length" and n < sampling.max_new_tokens:
                raise InferenceError(f"generation of row {row} ended after {n} tokens for no known reason")
            gens.append(Generation(text=text, prompt_tokens=len(prompt), completion_tokens=n, finish_reason=reason))
        return gens

    # -- bookkeeping --------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.name,
            "path": self.path,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "device": str(self.model.device),
            "batch_size": self.batch_size,
        }

    def close(self) -> None:
        if getattr(self, "model", None) is None:
            return
        on_cuda = self.model.device.type == "cuda"
        self.model = None
        self.tokenizer = None
        gc.collect()
        if on_cuda:
            import torch

            torch.cuda.empty_cache()


class _StopStrings:
    """Stopping criterion: a row is done once its decoded tail contains a stop string.

    Records, per row, how many new tokens had been generated when that happened,
    which makes the completion token count exact.
    """

    def __init__(self, tokenizer: Any, stop: list[str], prompt_width: int, eos_ids: list[int]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.prompt_width = prompt_width
        self.eos_ids = eos_ids
        # A token decodes to at least one character in practice; the margin covers
        # special tokens and partial UTF-8 sequences that decode to nothing.
        self.window = max(len(s) for s in stop) + 8
        self.stopped_at: list[int | None] = []

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        new = input_ids[:, self.prompt_width :]
        if not self.stopped_at:
            self.stopped_at = [None] * input_ids.shape[0]
        ended = torch.isin(new, torch.tensor(self.eos_ids, device=new.device)).any(dim=1).tolist()
        tails = new[:, -self.window :].tolist()
        done = []
        for row, tail in enumerate(tails):
            if self.stopped_at[row] is None and not ended[row]:
                text = self.tokenizer.decode(tail, skip_special_tokens=True)
                if any(s in text for s in self.stop):
                    self.stopped_at[row] = new.shape[1]
            done.append(self.stopped_at[row] is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _pick_dtype(dtype: Any, device: str) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    value = getattr(torch, str(dtype), None)
    if isinstance(value, torch.dtype):
        return value
    raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")


def _short_name(model: str | Path) -> str:
    """A readable model name: the last part of a path or of an `org/name` id."""
    return Path(str(model).rstrip("/")).name or str(model)
