"""The vLLM backend without vLLM: argument mapping, output conversion, the missing-vLLM error.

vLLM needs a GPU and is not installed here; the engine is replaced by a fake
module shaped like vLLM's documented API (``LLM``, ``LLM.chat``,
``SamplingParams``, ``RequestOutput``), at the very edge of the backend.
"""

from __future__ import annotations

import copy
import json
import sys
import types
from types import SimpleNamespace

import pytest

from sca.inference import BackendUnavailable, Generation, SamplingParams, load_model
from sca.inference.vllm import (
    VLLMChatModel,
    engine_context_length,
    to_generation,
    vllm_chat_messages,
    vllm_sampling_kwargs,
)


def request_output(text: str, n_prompt: int, n_completion: int, finish: str | None):
    completion = SimpleNamespace(index=0, text=text, token_ids=list(range(n_completion)), finish_reason=finish)
    return SimpleNamespace(request_id="0", prompt_token_ids=list(range(n_prompt)), outputs=[completion], finished=True)


def parse_like_vllm(conversation: list[dict]) -> list[dict]:
    """What vLLM's chat parsing makes of a conversation before the template sees it.

    vLLM reads each assistant tool call's ``arguments`` with ``json.loads`` (empty: ``{}``);
    an object there raises, as in the vLLM releases that do not check for one.
    """
    parsed = copy.deepcopy(conversation)
    for message in parsed:
        if message["role"] == "assistant":
            for call in message.get("tool_calls") or []:
                args = call["function"].get("arguments")
                call["function"]["arguments"] = json.loads(args) if args else {}
    return parsed


class FakeVLLM(types.ModuleType):
    """A stand-in for the `vllm` package that records how it is called.

    With `tokenizer` set, engines give it out (``LLM.get_tokenizer``), know a
    ``max_model_len`` (``llm_engine.model_config``), and answer with `reply`
    (a function of the messages), tokenized for real.
    """

    def __init__(self, tokenizer=None, reply=None):
        super().__init__("vllm")
        fake = self
        self.engines: list[dict] = []
        self.chat_calls: list[dict] = []

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class TokenizingLLM:
            def __init__(self, **kwargs):
                fake.engines.append(kwargs)
                config = SimpleNamespace(max_model_len=kwargs.get("max_model_len", 8192))
                self.llm_engine = SimpleNamespace(model_config=config)

            def get_tokenizer(self):
                return tokenizer

            def chat(self, messages, sampling_params=None, use_tqdm=True, tools=None, add_generation_prompt=True):
                fake.chat_calls.append({"messages": messages, "sampling_params": sampling_params, "tools": tools})
                outputs = []
                for conv in messages:
                    conv = parse_like_vllm(conv)
                    text = tokenizer.apply_chat_template(conv, tools=tools, add_generation_prompt=True, tokenize=False)
                    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
                    answer = tokenizer(reply(conv), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                    completion = SimpleNamespace(
                        index=0,
                        text=tokenizer.decode(answer, skip_special_tokens=True),
                        token_ids=answer,
                        finish_reason="stop",
                    )
                    outputs.append(SimpleNamespace(prompt_token_ids=prompt, outputs=[completion]))
                return outputs

        class LLM:
            def __init__(self, **kwargs):
                fake.engines.append(kwargs)

            def chat(self, messages, sampling_params=None, use_tqdm=True, tools=None, add_generation_prompt=True):
                fake.chat_calls.append(
                    {"messages": messages, "sampling_params": sampling_params, "use_tqdm": use_tqdm, "tools": tools}
                )
                for conv in messages:
                    parse_like_vllm(conv)
                return [
                    request_output(f"answer to {conv[-1]['content']}", 10 + i, 3, "stop")
                    for i, conv in enumerate(messages)
                ]

        self.SamplingParams = SamplingParams
        self.LLM = TokenizingLLM if tokenizer is not None else LLM


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
        "token_ids": [0, 1, 2, 3],
        "tool_calls": None,
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
    assert all(g.tool_calls is None and g.token_ids == [0, 1, 2] for g in gens)  # no tokenizer: plain text
    assert [g.text for g in gens] == ["answer to q0", "answer to q1", "answer to q2"]
    assert [g.prompt_tokens for g in gens] == [10, 11, 12]
    assert model.generate([], SamplingParams()) == []
    model.close()
    assert model.llm is None


def test_chat_messages_carry_tool_call_arguments_as_json_text():
    conversation = [
        {"role": "user", "content": "find a and b"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": {"q": "naïve"}}},
                {"id": "call_1", "function": {"name": "g", "arguments": '{"n": [1, 2]}'}},
                {"id": "call_2", "function": {"name": "h", "arguments": ""}},
                {"id": "call_3", "function": {"name": "k", "arguments": "not json {"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "found"},
    ]
    original = copy.deepcopy(conversation)
    sent = vllm_chat_messages(conversation)
    assert conversation == original  # the input is left alone
    calls = sent[1]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == ['{"q": "naïve"}', '{"n": [1, 2]}', "{}", '"not json {"']
    assert all(isinstance(c["function"]["arguments"], str) and c["type"] == "function" for c in calls)
    assert sent[1]["content"] == "" and sent[2] == original[2] and sent[0] == original[0]
    # vLLM's own parsing of them succeeds and gives the templates objects (or the text, for non-JSON).
    assert [c["function"]["arguments"] for c in parse_like_vllm(sent)[1]["tool_calls"]] == [
        {"q": "naïve"}, {"n": [1, 2]}, {}, "not json {"
    ]
    # mistral ids are fixed the same way in the call and in the tool's answer
    mistral = vllm_chat_messages(conversation, "mistral")
    assert mistral[1]["tool_calls"][0]["id"] == mistral[2]["tool_call_id"] != "call_0"
    assert len(mistral[2]["tool_call_id"]) == 9 and mistral[1]["tool_calls"][0]["function"]["arguments"] == '{"q": "naïve"}'


def test_sampling_mapping_caps_max_tokens():
    assert vllm_sampling_kwargs(SamplingParams(max_new_tokens=100), 0, max_tokens=7)["max_tokens"] == 7


def test_engine_context_length_is_found_where_vllm_keeps_it():
    config = SimpleNamespace(max_model_len=4096)
    assert engine_context_length(SimpleNamespace(llm_engine=SimpleNamespace(model_config=config))) == 4096
    assert engine_context_length(SimpleNamespace(model_config=config)) == 4096
    assert engine_context_length(SimpleNamespace()) is None


# -- with a real tokenizer (the default model's) behind the fake engine ------------------------------------

HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>\n"
    "Call tools as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}"
    "</tool_call>{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from sca.inference import default_model_path

    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    tok = copy.deepcopy(tok)
    tok.chat_template = HERMES_TEMPLATE
    return tok


def test_context_is_checked_before_sending_and_max_tokens_capped(monkeypatch, tokenizer):
    fake = FakeVLLM(tokenizer, reply=lambda conv: "ok")
    monkeypatch.setitem(sys.modules, "vllm", fake)
    convs = [
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "word " * 300}],
        [{"role": "user", "content": "word " * 20}],
    ]
    n = [len(tokenizer(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False))["input_ids"]) for c in convs]
    ctx = n[2] + 10
    model = VLLMChatModel("org/model", max_model_len=ctx)
    assert model.context_length == ctx and model.info()["context_length"] == ctx
    gens = model.generate(convs, SamplingParams(max_new_tokens=50, seed=3))
    assert gens[1] == Generation(text="", prompt_tokens=n[1], completion_tokens=0, finish_reason="context")
    [call] = fake.chat_calls
    assert call["messages"] == [convs[0], convs[2]]  # the long one is never sent
    assert [p.kwargs["max_tokens"] for p in call["sampling_params"]] == [min(50, ctx - n[0]), 10]
    assert [p.kwargs["seed"] for p in call["sampling_params"]] == [3, 5]  # seeds keep their conversation's index
    for i in (0, 2):
        assert gens[i].text == "ok" and gens[i].prompt_tokens == n[i]
        assert gens[i].token_ids[-1] == tokenizer.eos_token_id and gens[i].completion_tokens == 2
    # Nothing fits: the engine is not called at all.
    assert model.generate([convs[1]], SamplingParams())[0].finish_reason == "context"
    assert len(fake.chat_calls) == 1


def test_tool_calls_are_parsed_with_the_family_of_the_chat_template(monkeypatch, tokenizer):
    answer = 'On it.\n<tool_call>{"name": "lookup", "arguments": {"q": "naïve"}}</tool_call>'
    fake = FakeVLLM(tokenizer, reply=lambda conv: answer if conv[-1]["role"] == "user" else "Done.")
    monkeypatch.setitem(sys.modules, "vllm", fake)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    call = {"id": "call_0", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "a"}'}}
    convs = [
        [{"role": "user", "content": "find it"}],
        [
            {"role": "user", "content": "find a"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_0", "content": "found"},
        ],
    ]
    model = VLLMChatModel("org/model")
    assert model.family() == "hermes"
    first, second = model.generate(convs, SamplingParams(max_new_tokens=100), tools=tools)
    assert first.text == "On it." and first.finish_reason == "tool_calls"
    [parsed] = first.tool_calls
    assert parsed["id"] == "call_0" and parsed["function"]["name"] == "lookup"
    assert json.loads(parsed["function"]["arguments"]) == {"q": "naïve"}
    assert (second.text, second.tool_calls, second.finish_reason) == ("Done.", None, "stop")
    # The engine got the tools, and the earlier call with its arguments as JSON text (vLLM parses them).
    [sent] = fake.chat_calls
    assert sent["tools"] == tools
    assert sent["messages"][1][1]["tool_calls"][0]["function"]["arguments"] == '{"q": "a"}'
    assert sent["messages"][1][1]["content"] == ""
    # Arguments given as an object in the conversation go as JSON text too; the template sees the object.
    with_object = copy.deepcopy(convs[1])
    with_object[1]["tool_calls"][0]["function"]["arguments"] = {"q": "a"}
    [again] = model.generate([with_object], SamplingParams(max_new_tokens=100), tools=tools)
    assert again == second
    assert fake.chat_calls[-1]["messages"][0][1]["tool_calls"][0]["function"]["arguments"] == '{"q": "a"}'
    # Without tools, the same answer stays text.
    [plain] = model.generate(convs[:1], SamplingParams(max_new_tokens=100))
    assert plain.tool_calls is None and plain.text == answer
