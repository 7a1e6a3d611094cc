"""The transformers backend: one `generate` call per batch, on CPU or GPU.

Conversations are rendered with the tokenizer's own chat template, sorted by
length (less padding), left-padded into batches of `batch_size`, and generated
together. Token counts are exact: prompt tokens without padding, completion
tokens up to and including the end-of-turn token or the token that completed
a stop string; `Generation.token_ids` are those very tokens.

A prompt that does not fit the model's context gets finish_reason "context"
without generating, and `max_new_tokens` is capped so that prompt plus
completion never exceed it. With `tools`, the chat template shows them to the
model and its answer is split into text and tool calls by the parser of the
model's family (:mod:`sca.inference.toolcalls`).

Two things keep it fast where it is slowest, on a CPU:

- **Threads on a shared CPU.** torch runs each op on a team of OpenMP threads (one per core) that
  meet at a barrier after every op, and by default a thread that reaches the barrier early spins
  for a while instead of sleeping. Beside other busy processes this is ruinous: a teammate that the
  kernel has descheduled holds up every op, and the spinning threads burn the very CPU time it is
  waiting for. On a 2-core machine shared with a CI run (load average 4-6), the bundled model
  generated 0.9 tokens/s with torch's defaults and 6.7 with waiting threads that sleep; beside a busy
  loop on each core, 0.3 and 5.1 (bench/generate.py --contention). So this module sets OpenMP's wait
  policy to passive before torch first loads (OpenMP reads it once, when torch loads; importing this
  module does it, and :func:`sca.inference.load_model` imports it first). ``$SCA_HF_THREADS`` overrides
  this: ``auto`` (the default: passive waits, torch's thread count), a number N (passive waits and N
  threads), ``torch`` (torch's and OpenMP's own defaults). An ``$OMP_WAIT_POLICY`` of your own is left
  as it is. Where torch was loaded before (a script that imported it first), the policy it loaded
  with stays.
- **A long system prompt read again and again.** The challenger's system prompt is thousands of
  tokens (retail: 3.3k for the bundled model) and every turn of every episode starts with it. The
  keys and values of a batch's shared system prompt are computed once and kept (:class:`_PrefixCache`,
  at most ``prefix_cache_bytes``), and each later batch that starts with the same tokens, or with the
  first part of them (episodes whose prompts differ only at the end), prefills only the rest. Greedy
  answers are the same as without it (tests/test_inference_hf.py).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from sca.inference.base import (
    ChatModel,
    Generation,
    InferenceError,
    SamplingParams,
    check_conversations,
    context_generation,
    cut_at_stop,
    fits_context,
    new_token_budget,
)
from sca.inference.toolcalls import (
    FAMILIES,
    detect_family,
    extract_tool_calls,
    template_messages,
)

#: how the backend uses the CPU's threads: "auto", a thread count, or "torch" (see the module's docstring)
THREADS_ENV = "SCA_HF_THREADS"
#: bytes of cached prompt prefixes (keys and values) a model keeps at most, by default: 6 retail
#: challenger prompts of the bundled model in float32 (46 KB a token, 150 MB a prompt)
PREFIX_CACHE_BYTES = 1 << 30
#: a shared system prompt shorter than this is prefilled with the rest of the prompt
PREFIX_MIN_TOKENS = 128


def thread_setting() -> str | int:
    """``$SCA_HF_THREADS``: "auto", "torch" or a thread count >= 1 (ValueError on anything else)."""
    raw = os.environ.get(THREADS_ENV, "").strip().lower() or "auto"
    if raw in ("auto", "torch"):
        return raw
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{THREADS_ENV} must be auto, torch or a thread count >= 1, not {raw!r}")
    return value


def _set_openmp_policy() -> None:
    """Passive OpenMP waits, unless $SCA_HF_THREADS=torch or $OMP_WAIT_POLICY is set; only while torch is not
    loaded yet (afterwards the setting would change nothing)."""
    try:
        setting = thread_setting()
    except ValueError:
        return  # said when a model loads
    if setting != "torch" and "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


_set_openmp_policy()


class HFChatModel(ChatModel):
    """A causal LM loaded with transformers.

    `model` is a Hugging Face model id or a local checkpoint directory.
    `device` is "auto" (CUDA when available), "cpu", "cuda", "cuda:1"...;
    `dtype` is "auto" (bfloat16 on GPU, float32 on CPU) or a torch dtype name.
    `num_threads`, if given, sets torch's CPU thread count for the whole
    process (else ``$SCA_HF_THREADS``, if a number; see the module's docstring).
    `context_length`: the longest prompt plus completion, in tokens (default: the
    model config's ``max_position_embeddings``, else the tokenizer's
    ``model_max_length`` when it is a real limit). `tool_family`: how the model
    writes tool calls (see :data:`sca.inference.toolcalls.FAMILIES`; default:
    detected from the chat template). `prefix_cache_bytes`: the most memory the cache of shared system
    prompts may hold (default :data:`PREFIX_CACHE_BYTES`; 0: no cache).
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
        context_length: int | None = None,
        tool_family: str | None = None,
        prefix_cache_bytes: int | None = None,
    ):
        setting = thread_setting()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads is None and isinstance(setting, int):
            num_threads = setting
        if num_threads is not None:
            torch.set_num_threads(num_threads)

        device = _pick_device(device)
        torch_dtype = _pick_dtype(dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(str(model), trust_remote_code=trust_remote_code)
        lm = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch_dtype, trust_remote_code=trust_remote_code)
        lm.to(device)
        self._setup(
            lm,
            tokenizer,
            name=name or _short_name(model),
            path=str(model),
            batch_size=batch_size,
            context_length=context_length,
            tool_family=tool_family,
            prefix_cache_bytes=prefix_cache_bytes,
        )

    @classmethod
    def from_objects(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        batch_size: int = 16,
        context_length: int | None = None,
        tool_family: str | None = None,
        prefix_cache_bytes: int | None = None,
    ) -> HFChatModel:
        """Wrap a model and tokenizer already in memory (e.g. right after training)."""
        self = cls.__new__(cls)
        self._setup(
            model,
            tokenizer,
            name=name,
            path=None,
            batch_size=batch_size,
            context_length=context_length,
            tool_family=tool_family,
            prefix_cache_bytes=prefix_cache_bytes,
        )
        return self

    def _setup(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        path: str | None,
        batch_size: int,
        context_length: int | None,
        tool_family: str | None,
        prefix_cache_bytes: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if context_length is not None and context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")
        if tool_family is not None and tool_family not in FAMILIES:
            raise ValueError(f"unknown tool_family {tool_family!r}; choose one of {', '.join(FAMILIES)}")
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
        self.context_length = context_length or model_context_length(model, tokenizer)
        #: None: detected from the chat template on each call (see :func:`~sca.inference.toolcalls.detect_family`)
        self.tool_family = tool_family
        limit = PREFIX_CACHE_BYTES if prefix_cache_bytes is None else prefix_cache_bytes
        if limit < 0:
            raise ValueError(f"prefix_cache_bytes must be >= 0, got {limit}")
        self._prefix_cache = _PrefixCache(model, limit)

    # -- generation ---------------------------------------------------------------------------

    def generate(
        self,
        conversations: list[list[dict]],
        sampling: SamplingParams,
        tools: list[dict] | None = None,
    ) -> list[Generation]:
        import torch

        check_conversations(conversations)
        family = self.family() if tools else None
        prompts = [self._encode(conv, tools, i, family) for i, conv in enumerate(conversations)]
        heads = [self._system_length(conv, tools, family, prompt) for conv, prompt in zip(conversations, prompts)]
        results: list[Generation | None] = [None] * len(prompts)
        budget: dict[int, int] = {}
        for i, prompt in enumerate(prompts):
            if fits_context(len(prompt), self.context_length):
                budget[i] = new_token_budget(len(prompt), sampling.max_new_tokens, self.context_length)
            else:
                results[i] = context_generation(len(prompt))
        # Longest first: similar lengths share a batch, and memory trouble shows up at once.
        order = sorted(budget, key=lambda i: -len(prompts[i]))
        # A batch shares one max_new_tokens: prompts capped by the context (the longest, so the
        # first in order) batch only with prompts of the same cap, so no row ever runs past the
        # context and batching never changes an answer.
        batches: list[list[int]] = []
        for i in order:
            if batches and len(batches[-1]) < self.batch_size and budget[batches[-1][0]] == budget[i]:
                batches[-1].append(i)
            else:
                batches.append([i])
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        for chunk in batches:
            gens = self._generate_batch([prompts[i] for i in chunk], sampling, budget[chunk[0]],
                                        head=min(heads[i] for i in chunk))
            for i, gen in zip(chunk, gens):
                if family is not None:
                    gen = self._with_tool_calls(gen, sampling.stop, family)
                results[i] = gen
        return results  # type: ignore[return-value]

    def family(self) -> str:
        """The tool-call family used to parse answers: `tool_family`, else detected from the chat template."""
        return self.tool_family or detect_family(self.tokenizer, self.path or self.name)

    def _with_tool_calls(self, gen: Generation, stop: list[str], family: str) -> Generation:
        text, calls = extract_tool_calls(self.tokenizer, gen.token_ids, gen.text, stop, family)
        if not calls:
            return gen
        reason = "tool_calls" if gen.finish_reason == "stop" else gen.finish_reason
        return dataclasses.replace(gen, text=text, tool_calls=calls, finish_reason=reason)

    def _encode(self, conversation: list[dict], tools: list[dict] | None, index: int, family: str | None) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(
                template_messages(conversation, family),
                tools=tools or None,
                add_generation_prompt=True,
                tokenize=False,
            )
        except Exception as e:  # jinja raises its own errors, e.g. for unsupported roles
            raise InferenceError(f"chat template of {self.name} failed on conversation {index}: {e}") from e
        # The template already writes any BOS/special tokens it wants.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _system_length(self, conversation: list[dict], tools: list[dict] | None, family: str | None,
                       prompt: list[int]) -> int:
        """How many leading tokens of `prompt` are its system message (with the tools the template shows
        there): the part worth caching. 0 when it has none, or the prefix cache is off."""
        if not self._prefix_cache.limit or conversation[0].get("role") != "system":
            return 0
        try:
            text = self.tokenizer.apply_chat_template(template_messages(conversation[:1], family), tools=tools or None,
                                                      add_generation_prompt=False, tokenize=False)
        except Exception:  # noqa: BLE001 - a template that wants more than a system message: no reuse
            return 0
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        # Rendered alone, the system message must tokenize as the start of the whole prompt (it does at a
        # special token such as <|im_end|>); where it does not, its tokens are not the prompt's prefix.
        return len(ids) if prompt[: len(ids)] == ids else 0

    def _generate_batch(
        self, prompts: list[list[int]], sampling: SamplingParams, max_new: int, head: int = 0
    ) -> list[Generation]:
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        # The system prompt the rows share (their common start, within the shortest row's system message),
        # computed once and cached: each row then prefills only what follows it.
        shared = _common_length(prompts, min(head, min(len(p) for p in prompts) - 1))
        prefix = self._prefix_cache.get(prompts[0][:shared]) if shared >= PREFIX_MIN_TOKENS else None
        if prefix is None:
            shared = 0
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            # Left padding: every prompt ends where generation starts. With a cached prefix, which fills the
            # first `shared` places of every row, the padding goes between it and the rest (masked out; the
            # positions count only unmasked tokens, so every token keeps its place).
            input_ids[row, :shared] = torch.tensor(p[:shared], dtype=torch.long)
            attention_mask[row, :shared] = 1
            input_ids[row, width - len(p) + shared :] = torch.tensor(p[shared:], dtype=torch.long)
            attention_mask[row, width - len(p) + shared :] = 1
        device = self.model.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)

        config = GenerationConfig(**generation_settings(sampling, max_new, self._eos_ids, self._pad_id, self.model))
        stopper = _StopStrings(self.tokenizer, sampling.stop, width, self._eos_ids) if sampling.stop else None
        # transformers fills every setting our config leaves unset from the model's own generation_config
        # (the checkpoint's generation_config.json: repetition_penalty, bad_words_ids, min_length...). Only
        # our sampling parameters may count, so the model sees our config as its own while it generates.
        owner = _config_owner(self.model)
        with _SWAP_LOCK:  # threads sharing a model must not restore each other's config
            saved = owner.generation_config
            owner.generation_config = config
            try:
                with torch.inference_mode():
                    cache = {} if prefix is None else self._prefix_cache.batch(prefix, len(prompts))
                    out = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=attention_mask,
                        generation_config=config,
                        stopping_criteria=StoppingCriteriaList([stopper]) if stopper else None,
                        **cache,
                    )
            finally:
                owner.generation_config = saved
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
            elif reason == "length" and n < max_new:
                raise InferenceError(f"generation of row {row} ended after {n} tokens for no known reason")
            gens.append(
                Generation(
                    text=text,
                    prompt_tokens=len(prompt),
                    completion_tokens=n,
                    finish_reason=reason,
                    token_ids=tokens[:n],
                )
            )
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
            "context_length": self.context_length,
        }

    def close(self) -> None:
        if getattr(self, "model", None) is None:
            return
        on_cuda = self.model.device.type == "cuda"
        self._prefix_cache.clear()
        self.model = None
        self.tokenizer = None
        gc.collect()
        if on_cuda:
            import torch

            torch.cuda.empty_cache()


#: held while a model generates with our config in place of its own
_SWAP_LOCK = threading.RLock()


def _common_length(prompts: list[list[int]], limit: int) -> int:
    """The length of the start all `prompts` share, at most `limit`."""
    first = prompts[0]
    n = max(0, limit)
    for p in prompts[1:]:
        n = min(n, len(p))
        if p[:n] != first[:n]:  # the first difference, by halving (list slices compare in C)
            lo, hi = 0, n  # p[:lo] == first[:lo], p[:hi] != first[:hi]
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if p[:mid] == first[:mid] else (lo, mid)
            n = lo
    return n


class _PrefixCache:
    """The keys and values of prompt prefixes (one row each, per layer), by their tokens.

    `get` returns those of a prefix, from the longest cached one that starts the same way (the keys and
    values of a token depend only on the tokens up to it, so the first part of a cached prefix serves any
    prompt that starts with that part), prefilling only what the cache lacks; the result is kept, the
    least recently used entries leaving first so that all of them hold at most `limit` bytes. An entry
    that alone needs more is used once and not kept. The cache empties itself when the weights change
    (a model in training). Only for models whose every layer keeps a plain growing cache (not sliding
    windows or recurrent states), and the transformers versions with :class:`~transformers.DynamicCache`
    layers: elsewhere `get` returns None and generation prefills everything as before.
    """

    def __init__(self, model: Any, limit: int):
        self.model = model
        self.limit = limit
        self.entries: OrderedDict[tuple[int, ...], list[tuple[Any, Any]]] = OrderedDict()
        self.bytes = 0
        self.reused_tokens = 0  # prefill saved, in tokens, since the start
        self._lock = threading.RLock()
        self._weights: int | None = None
        self._keyword: str | None = None  # the name of the cache argument; "" once found unsupported
        self._logits_arg: dict[str, int] = {}

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()
            self.bytes = 0

    def get(self, tokens: list[int]) -> list[tuple[Any, Any]] | None:
        """The keys and values of `tokens` (per layer: keys, values of shape [1, heads, len(tokens), dim])."""
        if not self.limit or not self._supported():
            return None
        with self._lock:
            version = sum(p._version for p in self.model.parameters())  # bumped by every in-place update
            if version != self._weights:
                self.clear()
                self._weights = version
            best, n = None, 0
            for key in self.entries:
                m = _common_length([list(key), tokens], len(tokens))
                if m > n:
                    best, n = key, m
            base = None
            if best is not None and n >= PREFIX_MIN_TOKENS:
                self.entries.move_to_end(best)
                base = [(k[:, :, :n], v[:, :, :n]) for k, v in self.entries[best]]
                self.reused_tokens += n
                if n == len(tokens):
                    return base
            else:
                n = 0
            layers = self._prefill(tokens, n, base)
            self._keep(tuple(tokens), layers)
            return layers

    def batch(self, layers: list[tuple[Any, Any]], rows: int) -> dict[str, Any]:
        """The keyword argument that hands `generate` a cache holding `layers` in each of `rows` rows (a copy:
        generation appends to it)."""
        from transformers import DynamicCache

        data = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in layers]
        return {self._keyword: DynamicCache(ddp_cache_data=data, config=self.model.config)}

    def _prefill(self, tokens: list[int], done: int, base: list[tuple[Any, Any]] | None) -> list[tuple[Any, Any]]:
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=base, config=self.model.config)
        device = self.model.device
        with torch.inference_mode():
            # Positions follow the cache's length; only the last position's logits are computed.
            self.model(input_ids=torch.tensor([tokens[done:]], dtype=torch.long, device=device), use_cache=True,
                       **{self._keyword: cache}, **self._logits_arg)
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        assert all(k.shape[-2] == len(tokens) for k, _ in layers), "the prefix cache lost tokens"
        return layers

    def _keep(self, key: tuple[int, ...], layers: list[tuple[Any, Any]]) -> None:
        size = sum(k.nbytes + v.nbytes for k, v in layers)
        if size > self.limit:
            return
        for old in [k for k in self.entries if k == key[: len(k)]]:  # what the new entry covers
            self._drop(old)
        while self.entries and self.bytes + size > self.limit:
            self._drop(next(iter(self.entries)))
        self.entries[key] = layers
        self.bytes += size

    def _drop(self, key: tuple[int, ...]) -> None:
        self.bytes -= sum(k.nbytes + v.nbytes for k, v in self.entries.pop(key))

    def _supported(self) -> bool:
        if self._keyword is None:
            self._keyword = _cache_keyword(self.model)
            self._logits_arg = {"logits_to_keep": 1} if _accepts(self.model, "logits_to_keep") else {}
        return bool(self._keyword)


def _accepts(model: Any, name: str) -> bool:
    import inspect

    return name in inspect.signature(_config_owner(model).forward).parameters


def _cache_keyword(model: Any) -> str:
    """The name under which `model` takes a cache ("cache" in transformers 5, "past_key_values" before), or ""
    when its cache cannot be prefilled and shared: a layer that is not a plain growing one, or no layers."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        layers = DynamicCache(config=model.config).layers
    except (ImportError, AttributeError, TypeError, ValueError):
        return ""
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return ""
    for name in ("cache", "past_key_values"):
        if _accepts(model, name):
            return name
    return ""


def _config_owner(model: Any) -> Any:
    """The transformers model whose ``generation_config`` `generate` reads (a PEFT wrapper's base model)."""
    base = getattr(model, "get_base_model", None)
    if callable(base):
        try:
            inner = base()
        except Exception:  # noqa: BLE001 - not a PEFT wrapper after all
            return model
        if hasattr(inner, "generation_config"):
            return inner
    return model


def generation_settings(
    sampling: SamplingParams, max_new: int, eos_ids: list[int], pad_id: int, model: Any = None
) -> dict[str, Any]:
    """``GenerationConfig`` arguments that say everything about decoding: our sampling parameters,
    and the neutral value of every other setting a checkpoint's ``generation_config.json`` may change.

    Only the special tokens (and the decoder start of encoder-decoder models) come from `model`.
    """
    special = getattr(model, "generation_config", None)
    return {
        "max_new_tokens": max_new,
        "min_new_tokens": None,
        "min_length": 0,
        "do_sample": not sampling.greedy,
        "temperature": None if sampling.greedy else sampling.temperature,
        "top_p": None if sampling.greedy else sampling.top_p,
        "top_k": None if sampling.greedy else 0,  # no top-k cut (transformers' default is 50)
        "min_p": None,
        "typical_p": 1.0,
        "epsilon_cutoff": 0.0,
        "eta_cutoff": 0.0,
        "repetition_penalty": 1.0,
        "encoder_repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "encoder_no_repeat_ngram_size": 0,
        "length_penalty": 1.0,
        "exponential_decay_length_penalty": None,
        "bad_words_ids": None,
        "sequence_bias": None,
        "suppress_tokens": None,
        "begin_suppress_tokens": None,
        "forced_bos_token_id": None,
        "forced_eos_token_id": None,
        "renormalize_logits": False,
        "remove_invalid_values": False,
        "guidance_scale": None,
        "watermarking_config": None,
        "num_beams": 1,
        "num_beam_groups": 1,
        "num_return_sequences": 1,
        "penalty_alpha": None,
        "stop_strings": None,
        "eos_token_id": eos_ids,
        "pad_token_id": pad_id,
        "bos_token_id": getattr(special, "bos_token_id", None),
        "decoder_start_token_id": getattr(special, "decoder_start_token_id", None),
        "use_cache": True,  # a model set up for training (gradient checkpointing) turns its cache off
    }


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


#: tokenizers say model_max_length = 1e30 (or so) when they do not know; real limits are far smaller
_SANE_LENGTH = 10_000_000


def model_context_length(model: Any, tokenizer: Any) -> int | None:
    """The context length a transformers model declares, or None.

    The model config's ``max_position_embeddings`` (or its older names), else
    the tokenizer's ``model_max_length`` when it is a real limit.
    """
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        try:
            config = config.get_text_config()
        except (AttributeError, TypeError, ValueError):
            config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _SANE_LENGTH:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < _SANE_LENGTH:
        return value
    return None


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
