"""Native function calling: the per-family parsers, family detection, message shapes, and the hf path.

Model outputs here are written by hand in each family's documented style; the
chat templates are small ones written for these tests, not the models' own.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest

from sca.inference import Generation, SamplingParams, load_model
from sca.inference.toolcalls import (
    FAMILIES,
    PARSERS,
    decode_for_tools,
    detect_family,
    extract_tool_calls,
    make_tool_call,
    openai_messages,
    parse_generic,
    parse_hermes,
    parse_llama3,
    parse_mistral,
    parse_tool_calls,
    template_messages,
)


def calls_of(calls: list[dict]) -> list[tuple[str, dict]]:
    """(name, decoded arguments) of each call, after checking the OpenAI shape and the ids."""
    assert [c["id"] for c in calls] == [f"call_{k}" for k in range(len(calls))]
    out = []
    for call in calls:
        assert call["type"] == "function" and set(call) == {"id", "type", "function"}
        assert isinstance(call["function"]["arguments"], str)  # JSON text, as OpenAI
        out.append((call["function"]["name"], json.loads(call["function"]["arguments"])))
    return out


# -- Llama 3.1/3.2 ---------------------------------------------------------------------------------


def test_llama3_single_call_with_parameters_or_arguments():
    for key in ("parameters", "arguments"):
        text, calls = parse_llama3(json.dumps({"name": "get_weather", key: {"city": "Paris"}}))
        assert text == "" and calls_of(calls) == [("get_weather", {"city": "Paris"})]


def test_llama3_python_tag_and_several_calls():
    out = '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {"y": "z"}}'
    text, calls = parse_llama3(out)
    assert text == "" and calls_of(calls) == [("a", {"x": 1}), ("b", {"y": "z"})]
    # after the tag, a call may omit its (empty) parameters, also after a ";"
    text, calls = parse_llama3('<|python_tag|>{"name": "a", "parameters": {"x": 1}};{"name": "ping"}')
    assert text == "" and calls_of(calls) == [("a", {"x": 1}), ("ping", {})]
    # newlines between calls
    text, calls = parse_llama3('<|python_tag|>{"name": "a", "parameters": {}}\n{"name": "ping"}')
    assert text == "" and calls_of(calls) == [("a", {}), ("ping", {})]


def test_llama3_surrounding_text_nested_and_unicode():
    out = (
        "Let me check that.\n"
        '{"name": "book", "parameters": {"trip": {"from": "東京", "to": "Zürich", "legs": [1, {"seat": "12A"}]}}}\n'
        "I will report back."
    )
    text, calls = parse_llama3(out)
    assert text == "Let me check that.\nI will report back."
    [(name, args)] = calls_of(calls)
    assert name == "book" and args == {"trip": {"from": "東京", "to": "Zürich", "legs": [1, {"seat": "12A"}]}}
    assert "東京" in calls[0]["function"]["arguments"]  # not \\u-escaped


def test_llama3_malformed_json_stays_text():
    for out in (
        '{"name": "a", "parameters": {"x": 1}',  # unbalanced
        '<|python_tag|>{"name": "a", "parameters": {x: 1}}',  # not JSON
        '<|python_tag|>brave_search.call(query="weather")',  # built-in tool syntax, not JSON
        '{"name": "", "parameters": {}}',  # no name
        '{"name": "a", "parameters": [1, 2]}',  # arguments not an object
    ):
        assert parse_llama3(out) == (out, [])


@pytest.mark.parametrize(
    "out",
    [
        # Llama 3.1 with a tool call after <|python_tag|>, or as plain JSON (its JSON tool-calling prompt)
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}',  # Llama 3.2 adds a type
        '\n\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n',
    ],
)
def test_llama3_real_forms_with_or_without_the_python_tag(out):
    assert parse_llama3(out) == ("", [make_tool_call("get_weather", {"city": "Paris"}, 0)])


@pytest.mark.parametrize(
    ("out", "text"),
    [
        ('I will look that up. {"name": "get_weather", "parameters": {"city": "Paris"}}', "I will look that up."),
        ('Sure!\n\n<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', "Sure!"),
        (
            'Let me check.\n```json\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n```\nOne moment.',
            "Let me check.\nOne moment.",
        ),
    ],
)
def test_llama3_call_after_some_prose(out, text):
    assert parse_llama3(out) == (text, [make_tool_call("get_weather", {"city": "Paris"}, 0)])


def test_llama3_json_in_a_code_block_of_another_language_is_code_not_a_call():
    out = 'Like this:\n```python\nrequest = {"name": "get_weather", "parameters": {"city": "Paris"}}\n```'
    assert parse_llama3(out) == (out, [])


def test_arguments_given_as_json_text_are_accepted():
    _, calls = parse_llama3('{"name": "f", "arguments": "{\\"q\\": 1}"}')
    assert calls_of(calls) == [("f", {"q": 1})]


# -- Hermes / Qwen2.5 ------------------------------------------------------------------------------


def test_hermes_single_and_several_calls_with_text():
    out = (
        "I need two lookups.\n"
        '<tool_call>\n{"name": "search", "arguments": {"query": "vLLM"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "fetch", "arguments": {"url": "https://x.org", "opts": {"depth": 2}}}\n</tool_call>'
    )
    text, calls = parse_hermes(out)
    assert text == "I need two lookups."
    assert calls_of(calls) == [("search", {"query": "vLLM"}), ("fetch", {"url": "https://x.org", "opts": {"depth": 2}})]


def test_hermes_unclosed_last_block_and_unicode():
    text, calls = parse_hermes('<tool_call>{"name": "say", "arguments": {"text": "héllo 👋"}}')
    assert text == "" and calls_of(calls) == [("say", {"text": "héllo 👋"})]


@pytest.mark.parametrize(
    ("out", "text"),
    [
        # cut at the stop string "</tool_call>" (the stop string itself is not in the text)
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n', ""),
        ('Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}', "Checking."),
        # out of tokens inside the closing tag
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_', ""),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}</', ""),
        # a fenced call, never closed
        ('<tool_call>\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\n</tool', ""),
        # the model wrote on instead of closing the block: that stays text
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\nI will wait.', "I will wait."),
    ],
)
def test_hermes_block_never_closed(out, text):
    assert parse_hermes(out) == (text, [make_tool_call("get_weather", {"city": "Paris"}, 0)])


def test_hermes_generation_cut_at_the_closing_tag_stop_string():
    full = 'On it.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call> and more'
    text, cut = full[: full.index("</tool_call>")], ["</tool_call>"]
    content, calls = extract_tool_calls(None, None, text, cut, "hermes")
    assert content == "On it." and calls_of(calls) == [("get_weather", {"city": "Paris"})]
    # a second block after a closed one, cut the same way
    two = '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"name": "b", "arguments": {"x": 1}}\n</tool_c'
    assert calls_of(parse_hermes(two)[1]) == [("a", {}), ("b", {"x": 1})]


@pytest.mark.parametrize(
    "out",
    [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',  # cut inside the JSON
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_',  # unbalanced
        "<tool_call>\n{'name': 'get_weather', 'arguments': {'city': 'Paris'}}\n",  # not JSON
        "<tool_call>\n",
        '<tool_call>\n```json\n{"name": "get_weather", "arguments": ',
    ],
)
def test_hermes_malformed_unclosed_block_stays_text(out):
    assert parse_hermes(out) == (out, [])


def test_hermes_malformed_block_stays_text_and_good_blocks_still_parse():
    bad = '<tool_call>\n{"name": "a", "arguments": {"x": 1}\n</tool_call>'
    assert parse_hermes(bad) == (bad, [])
    out = bad + '\n<tool_call>{"name": "b", "arguments": {}}</tool_call>'
    text, calls = parse_hermes(out)
    assert text == bad and calls_of(calls) == [("b", {})]
    # A malformed block is not salvaged by the generic fallback either.
    salvage = '<tool_call>[{"name": "a", "arguments": {}}, oops]</tool_call>'
    assert parse_hermes(salvage) == (salvage, [])


# -- Mistral ---------------------------------------------------------------------------------------


def test_mistral_list_of_calls():
    out = '[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {"b": {"c": [true, null]}}}]'
    text, calls = parse_mistral(out)
    assert text == "" and calls_of(calls) == [("f", {"a": 1}), ("g", {"b": {"c": [True, None]}})]


def test_mistral_text_before_and_after_and_newer_name_args_form():
    text, calls = parse_mistral('Sure. [TOOL_CALLS] [{"name": "f", "arguments": {"q": "ünï"}}] ok')
    assert text == "Sure.\nok" and calls_of(calls) == [("f", {"q": "ünï"})]
    text, calls = parse_mistral('[TOOL_CALLS]f[ARGS]{"a": 1}[TOOL_CALLS]g[CALL_ID]abc123XYZ[ARGS]{"b": 2}')
    assert text == "" and calls_of(calls) == [("f", {"a": 1}), ("g", {"b": 2})]


def test_mistral_malformed_stays_text():
    for out in (
        '[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}]',
        '[TOOL_CALLS][{"name": "f", "arguments": {}}, {"nom": "g"}]',  # one bad item spoils the list
        "[TOOL_CALLS]",
    ):
        assert parse_mistral(out) == (out, [])


def test_mistral_without_the_marker_falls_back_to_a_bare_list():
    text, calls = parse_mistral('[{"name": "f", "arguments": {"a": 1}}]')
    assert text == "" and calls_of(calls) == [("f", {"a": 1})]


# -- generic ---------------------------------------------------------------------------------------


def test_generic_fenced_block_and_bare_object():
    out = 'I will call it:\n```json\n{"name": "f", "arguments": {"x": [1, 2]}}\n```\nthen wait.'
    text, calls = parse_generic(out)
    assert text == "I will call it:\nthen wait." and calls_of(calls) == [("f", {"x": [1, 2]})]
    out = 'Calling {"name": "g", "parameters": {"k": "v"}} and {"name": "h", "arguments": {}} now'
    text, calls = parse_generic(out)
    assert text == "Calling\nand\nnow" and calls_of(calls) == [("g", {"k": "v"}), ("h", {})]
    text, calls = parse_generic('```json\n[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"n": 1}}]\n```')
    assert text == "" and calls_of(calls) == [("a", {}), ("b", {"n": 1})]


def test_generic_is_strict_about_what_a_call_is():
    for out in (
        'The user is {"name": "Bob", "age": 3}.',  # a name but no arguments
        '{"data": {"name": "f", "arguments": {}}}',  # a call nested inside other data is data
        "```json\n{\"name\": \"f\", \"arguments\": {\"x\": 1}\n```",  # malformed in a fence
        "```python\nprint({'name': 'f', 'arguments': {}})\n```",
        "plain prose with {braces} and [brackets]",
    ):
        assert parse_generic(out) == (out, [])


def test_generic_understands_every_marker_style():
    assert calls_of(parse_generic('<tool_call>{"name": "a", "arguments": {}}</tool_call>')[1]) == [("a", {})]
    assert calls_of(parse_generic('[TOOL_CALLS][{"name": "b", "arguments": {}}]')[1]) == [("b", {})]
    assert calls_of(parse_generic('<|python_tag|>{"name": "c", "parameters": {}}')[1]) == [("c", {})]


def test_a_family_without_its_markers_falls_back_to_generic():
    out = 'Here: ```json\n{"name": "f", "arguments": {"x": 1}}\n```'
    assert calls_of(parse_hermes(out)[1]) == [("f", {"x": 1})]
    assert calls_of(parse_tool_calls('{"name": "g", "arguments": {}}', "mistral")[1]) == [("g", {})]


def test_parsers_never_raise_on_odd_output():
    odd = [
        "",
        "{",
        "[",
        "}{][",
        "[" * 5000 + "]" * 5000,
        '{"name": ' * 1200,
        "<tool_call>",
        "</tool_call><tool_call>",
        "[TOOL_CALLS]",
        "[TOOL_CALLS]f[ARGS]",
        "[TOOL_CALLS]f[ARGS]{oops",
        "<|python_tag|>",
        "```json\n```",
        '{"name": null, "arguments": null}',
        '{"name": "f", "arguments": null}',
        '{"name": "f", "arguments": "not json"}',
        "\x00\ud800 weird",
    ]
    for family in FAMILIES:
        for out in odd:
            text, calls = parse_tool_calls(out, family)
            assert isinstance(text, str) and isinstance(calls, list)
    assert set(PARSERS) == set(FAMILIES)
    for family in FAMILIES:
        for out in odd:
            assert PARSERS[family](out) == parse_tool_calls(out, family)


def test_a_parser_bug_leaves_the_text_alone_instead_of_raising(monkeypatch):
    from sca.inference import toolcalls

    def broken(text):
        raise ValueError("parser bug")

    monkeypatch.setitem(toolcalls._SPANNERS, "hermes", broken)
    out = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    assert parse_tool_calls(out, "hermes") == (out, [])
    with pytest.raises(ValueError, match="unknown tool-call family"):
        parse_tool_calls("x", "gpt")


def test_text_without_calls_is_returned_unchanged():
    for family in FAMILIES:
        assert parse_tool_calls("  Just an answer.\n", family) == ("  Just an answer.\n", [])


def test_make_tool_call_shape():
    assert make_tool_call("f", {"a": "é"}, 3) == {
        "id": "call_3",
        "type": "function",
        "function": {"name": "f", "arguments": '{"a": "é"}'},
    }


# -- family detection ------------------------------------------------------------------------------

# Small templates in each family's style, written for these tests.
HERMES_TEMPLATE = """
{%- if tools %}<|im_start|>system
You may call functions. Signatures:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
For each call, reply with <tool_call>{"name": <name>, "arguments": <args>}</tool_call><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{{ message.content }}
{%- for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}
"""

LLAMA31_TEMPLATE = """{{- bos_token }}
{%- for message in messages %}<|start_header_id|>{{ message.role }}<|end_header_id|>

{%- if message.tool_calls %}
{%- for call in message.tool_calls %}<|python_tag|>{"name": "{{ call.function.name }}", "parameters": {{ call.function.arguments | tojson }}}{% endfor %}<|eom_id|>
{%- else %}{{ message.content }}<|eot_id|>{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""

LLAMA32_TEMPLATE = """{%- for message in messages %}<|start_header_id|>{{ message.role }}<|end_header_id|>

{%- if tools and loop.last %}Respond with a JSON object {"name": function name, "parameters": dictionary of argument name and its value}.
{{ tools | tojson }}{% endif %}
{{ message.content }}<|eot_id|>
{%- endfor %}"""

MISTRAL_TEMPLATE = """{{ bos_token }}
{%- for message in messages %}
{%- if message.role == 'user' %}
{%- if tools and loop.last %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[INST]{{ message.content }}[/INST]
{%- elif message.tool_calls %}[TOOL_CALLS]{{ message.tool_calls | map(attribute='function') | list | tojson }}{{ eos_token }}
{%- elif message.role == 'tool' %}[TOOL_RESULTS]{"call_id": "{{ message.tool_call_id }}", "content": {{ message.content | tojson }}}[/TOOL_RESULTS]
{%- else %}{{ message.content }}{{ eos_token }}{% endif %}
{%- endfor %}"""

PLAIN_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def test_detect_family_from_chat_template_markers():
    assert detect_family(HERMES_TEMPLATE) == "hermes"
    assert detect_family(LLAMA31_TEMPLATE) == "llama3"
    assert detect_family(LLAMA32_TEMPLATE) == "llama3"  # no python_tag: Llama 3 headers + "parameters"
    assert detect_family(MISTRAL_TEMPLATE) == "mistral"
    assert detect_family(PLAIN_TEMPLATE) == "generic"
    # a tokenizer-like object, and a dict of named templates
    assert detect_family(SimpleNamespace(chat_template=HERMES_TEMPLATE)) == "hermes"
    assert detect_family({"default": PLAIN_TEMPLATE, "tool_use": MISTRAL_TEMPLATE}) == "mistral"
    # the template wins over the name
    assert detect_family(HERMES_TEMPLATE, "mistralai/Mistral-7B-Instruct-v0.3") == "hermes"


def test_detect_family_falls_back_to_the_model_name():
    assert detect_family(PLAIN_TEMPLATE, "meta-llama/Llama-3.2-1B-Instruct") == "llama3"
    assert detect_family(None, "Qwen/Qwen2.5-7B-Instruct") == "hermes"
    assert detect_family("", "/models/NousResearch-Hermes-2-Pro") == "hermes"
    assert detect_family(None, "mistralai/Mixtral-8x7B-Instruct") == "mistral"
    assert detect_family(SimpleNamespace(chat_template=None, name_or_path="/ckpt/qwen2.5-0.5b")) == "hermes"
    assert detect_family(None, "HuggingFaceTB/SmolLM2-135M-Instruct") == "generic"
    assert detect_family(None) == "generic"


# -- message shapes --------------------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_0", "content": "18C, sunny"},
    {"role": "user", "content": "And in Oslo?"},
]


def test_template_messages_give_templates_objects_and_leave_the_input_alone():
    original = copy.deepcopy(HISTORY)
    msgs = template_messages(HISTORY)
    assert HISTORY == original  # copies, not edits
    assert msgs[1]["content"] == "" and msgs[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert msgs[0] == HISTORY[0] and msgs[2] == HISTORY[2]
    # Mistral templates want 9-character alphanumeric ids: the same stable one in call and answer.
    mistral = template_messages(HISTORY, "mistral")
    new_id = mistral[1]["tool_calls"][0]["id"]
    assert len(new_id) == 9 and new_id.isalnum() and mistral[2]["tool_call_id"] == new_id
    assert template_messages(HISTORY, "mistral")[2]["tool_call_id"] == new_id
    # Arguments that are not JSON are left for the template to show as they are.
    odd = [{"role": "assistant", "content": "x", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]
    assert template_messages(odd)[0]["tool_calls"][0]["function"]["arguments"] == "{oops"


def test_openai_messages_send_arguments_as_json_text():
    msgs = [{"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {"a": 1}}}]}]
    [msg] = openai_messages(msgs)
    assert msg == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
    }
    assert openai_messages(HISTORY) == HISTORY
    assert openai_messages([{"role": "assistant", "content": "hi", "tool_calls": []}]) == [
        {"role": "assistant", "content": "hi"}
    ]


# -- the hf backend, end to end on the default model's tokenizer -----------------------------------


@pytest.fixture(scope="module")
def hf_model():
    import torch

    threads = torch.get_num_threads()
    m = load_model(backend="hf", device="cpu", dtype="float32", num_threads=1)
    yield m
    m.close()
    torch.set_num_threads(threads)


class ScriptedLM:
    """The real model, except that `generate` answers every row with the same scripted tokens."""

    def __init__(self, model, tokens: list[int]):
        self._model = model
        self.tokens = tokens

    def __getattr__(self, name):
        return getattr(self._model, name)

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, generation_config, stopping_criteria=None):
        import torch

        new = torch.tensor([self.tokens] * input_ids.shape[0], dtype=torch.long)
        return torch.cat([input_ids, new], dim=1)


def hermes_model(hf_model, answer: str | None = None):
    from sca.inference.hf import HFChatModel

    tok = copy.deepcopy(hf_model.tokenizer)
    tok.chat_template = HERMES_TEMPLATE
    lm = hf_model.model
    if answer is not None:
        lm = ScriptedLM(hf_model.model, tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    return HFChatModel.from_objects(lm, tok, name="smol-hermes")


def test_hf_renders_tools_and_tool_messages_with_the_template(hf_model):
    model = hermes_model(hf_model)
    assert model.family() == "hermes"
    prompt = model.tokenizer.decode(model._encode(HISTORY, TOOLS, 0, "hermes"))
    assert "<tools>" in prompt and '"name": "get_weather"' in prompt and "Current weather in a city" in prompt
    # the earlier call, its arguments as an object (not a JSON string inside a string), and the answer
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "<tool_response>\n18C, sunny\n</tool_response>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "<tools>" not in model.tokenizer.decode(model._encode(HISTORY, None, 0, None))


def test_hf_generation_with_a_tool_call_block_comes_back_parsed(hf_model):
    answer = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    model = hermes_model(hf_model, answer)
    [gen] = model.generate([HISTORY], SamplingParams(temperature=0, max_new_tokens=64), tools=TOOLS)
    assert gen.text == "Checking." and gen.finish_reason == "tool_calls"
    assert calls_of(gen.tool_calls) == [("get_weather", {"city": "Oslo"})]
    assert gen.token_ids == model.model.tokens and gen.completion_tokens == len(model.model.tokens)
    # Without tools offered, the same answer is plain text.
    [plain] = model.generate([HISTORY], SamplingParams(temperature=0, max_new_tokens=64))
    assert plain.tool_calls is None and plain.text == answer and plain.finish_reason == "stop"
    # An answer without a call keeps its text and has no tool calls.
    quiet = hermes_model(hf_model, "It is sunny.")
    [gen] = quiet.generate([HISTORY], SamplingParams(temperature=0, max_new_tokens=64), tools=TOOLS)
    assert (gen.text, gen.tool_calls, gen.finish_reason) == ("It is sunny.", None, "stop")


def test_hf_keeps_special_marker_tokens_for_the_parser(hf_model):
    from sca.inference.hf import HFChatModel

    tok = copy.deepcopy(hf_model.tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["[TOOL_CALLS]", "[ARGS]"]})
    tok.chat_template = MISTRAL_TEMPLATE
    ids = tok('[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}', add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("[ARGS]") in ids
    model = HFChatModel.from_objects(ScriptedLM(hf_model.model, ids + [tok.eos_token_id]), tok, name="smol-mistral")
    assert model.family() == "mistral"
    [gen] = model.generate([HISTORY[:1]], SamplingParams(temperature=0, max_new_tokens=64), tools=TOOLS)
    assert calls_of(gen.tool_calls) == [("get_weather", {"city": "Oslo"})] and gen.text == ""
    # decode_for_tools drops the other special tokens (the end of turn) but keeps the markers
    assert decode_for_tools(tok, ids + [tok.eos_token_id]) == '[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}'


def test_extract_tool_calls_cuts_at_stop_strings_and_falls_back_to_text():
    text = '<tool_call>{"name": "f", "arguments": {}}</tool_call> END more'
    content, calls = extract_tool_calls(None, None, text, [], "hermes")
    assert calls_of(calls) == [("f", {})] and content == "END more"
    # without a tokenizer the plain text is parsed; no calls: the text comes back unchanged
    assert extract_tool_calls(None, [1, 2], "just text", [], "hermes") == ("just text", None)


def test_tool_calls_after_a_stop_string_are_not_calls(hf_model):
    tok = hf_model.tokenizer
    call = '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'
    ids = tok("I think STOP" + call, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert extract_tool_calls(tok, ids, "I think ", ["STOP"], "hermes") == ("I think ", None)
    ids = tok("Go." + call + " STOP then", add_special_tokens=False)["input_ids"]
    text, calls = extract_tool_calls(tok, ids, "Go." + call + " ", ["STOP"], "hermes")
    assert text == "Go." and calls_of(calls) == [("f", {"x": 1})]


@pytest.mark.slow
def test_hf_real_generation_with_tools_runs(hf_model):
    model = hermes_model(hf_model)
    sp = SamplingParams(temperature=0, max_new_tokens=6)
    [gen] = model.generate([HISTORY], sp, tools=TOOLS)
    assert isinstance(gen, Generation) and gen.completion_tokens == len(gen.token_ids) > 0
    assert gen.prompt_tokens == len(model._encode(HISTORY, TOOLS, 0, "hermes"))
