"""The vLLM backend without vLLM: argument mapping, output conversion, the missing-vLLM error.

vLLM needs a GPU and is not installed here; the engine is replaced by a fake
module shaped like vLLM's documented API (``LLM``, ``LLM.chat``,
``SamplingParams``, ``RequestOutput``), at the very edge of the backend.
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from sca.inference import BackendUnavailable, SamplingParams, load_model
from sca.inference.vllm import VLLMChatModel, to_generation, vllm_sampling_kwargs


def request_output(text: str, n_prompt: int, n_completion: int, finish: str | None):
    completion = SimpleNamespace(index=0, text=text, token_ids=list(range(n_completion)), finish_reason=finish)
    return SimpleNamespace(request_id="0", prompt_token_ids=list(range(n_prompt)), outputs=[completion], finished=True)


class FakeVLLM(types.ModuleType):
    """A stand-in for the `vllm` package that records how it is called."""

    def __init__(self):
        super().__init__("vllm")
        fake = self
        self.engines: list[dict] = []
        self.chat_calls: list[dict] = []

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class LLM:
            def __init__(self, **kwargs):
                fake.engines.append(kwargs)

            def chat(self, messages, sampling_params=None, use_tqdm=True, tools=None, add_generation_prompt=True):
                fake.chat_calls.append(
                    {"messages": messages, "sampling_params": sampling_params, "use_tqdm": use_tqdm, "tools": tools}
                )
                return [
                    request_output(f"answer to {conv[-1]['content']}", 10 + i, 3, "stop")
                    for i, conv in enumerate(messages)
                ]

        self.SamplingParams = SamplingParams
        self.LLM = LLM


@pytest.fixture
def fake_vllm(monkeypatch):
    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    return fake


def test_sampling_mapping():
    sp = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=100, stop=["END ACTION"], seed=5)
    assert vllm_sampling_kwargs(sp, index=2) == {
        "n": 1,
        "temperature": 0.8,
        "top_p": 0.9,
        "max_tokens": 100,
        "stop": ["END ACTION"],
        "include_stop_str_in_output": False,
        "seed": 7,
    }
    greedy = vllm_sampling_kwargs(SamplingParams(temperature=0, top_p=0.5))
    assert greedy["temperature"] == 0 and greedy["top_p"] == 1.0
    assert greedy["stop"] is None and greedy["seed"] is None


def test_output_conversion():
    assert to_generation(request_output("hello", 12, 4, "stop"), []).to_dict() == {
        "text": "hello",
        "prompt_tokens": 12,
        "completion_tokens": 4,
        "finish_reason": "stop",
    }
    assert to_generation(request_output("long", 5, 9, "length"), []).finish_reason == "length"
    assert to_generation(request_output("", 5, 0, "abort"), []).finish_reason == "error"
    # A stop string left in the text (e.g. the engine was told to include it) is still cut.
    gen = to_generation(request_output("code END ACTION more", 5, 6, "length"), ["END ACTION"])
    assert (gen.text, gen.finish_reason) == ("code ", "stop")


def test_missing_vllm_gives_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(BackendUnavailable, match="needs vLLM") as info:
        VLLMChatModel("some/model")
    assert "\n" not in str(info.value)


def test_engine_arguments(fake_vllm):
    model = load_model("/models/llama-8b", backend="vllm", tensor_parallel_size=4, max_model_len=16384)
    [engine] = fake_vllm.engines
    assert engine["model"] == "/models/llama-8b"
    assert engine["tensor_parallel_size"] == 4
    assert engine["enable_prefix_caching"] is True
    assert engine["max_model_len"] == 16384
    info = model.info()
    assert info["backend"] == "vllm" and info["model"] == "llama-8b" and info["tensor_parallel_size"] == 4


def test_generate_sends_the_whole_batch_to_chat(fake_vllm):
    model = VLLMChatModel("org/model", name="m")
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    gens = model.generate(convs, SamplingParams(temperature=0.7, max_new_tokens=50, seed=1), tools=tools)
    [call] = fake_vllm.chat_calls
    assert call["messages"] == convs and call["tools"] == tools and call["use_tqdm"] is False
    assert [p.kwargs["seed"] for p in call["sampling_params"]] == [1, 2, 3]
    assert all(p.kwargs["max_tokens"] == 50 for p in call["sampling_params"])
    assert [g.text for g in gens] == ["answer to q0", "answer to q1", "answer to q2"]
    assert [g.prompt_tokens for g in gens] == [10, 11, 12]
    assert model.generate([], SamplingParams()) == []
    model.close()
    assert model.llm is None
