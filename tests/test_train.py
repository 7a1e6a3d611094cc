"""`sca train`: RFT, SFT and DPO with TRL (CPU), the assistant-only mask, token parity, options, the
checkpoint, and bad input.

The training tests use tests/fixtures/trajectories/tiny.jsonl (conversations of about 100-200
tokens: this CPU trains the default model at a few dozen tokens per second) and one thread. They
train the tiny random model of conftest.py (what they check: which examples, which tokens the loss
covers, what is logged and written) and, in the slow tier, the bundled default model too. The masks
and token parity are checked with the bundled tokenizer, which the tiny model shares.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sca.records.io import InputError, load_records
from sca.records.schema import TRAIN_LOG_LINE
from sca_cli.app import app

FIX = Path(__file__).resolve().parent / "fixtures" / "trajectories"
TINY = FIX / "tiny.jsonl"
RETAIL = FIX / "retail.jsonl"
runner = CliRunner()

#: a chat template with no {% generation %} markers and no special tokens around the roles (plain text
#: headers, so a reply's first token can merge with its header when the whole string is tokenized)
PLAIN_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Agent: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Agent: {% endif %}"
)

#: renders only the last assistant reply in full: earlier ones change when a turn is added
UNSTABLE_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' and not loop.last %}<|im_start|>assistant\n...<|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: much faster than two on a CPU shared with other work."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_path() -> str:
    from sca.inference.default_model import default_model_path

    return str(default_model_path())


@pytest.fixture(scope="module")
def tokenizer(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


class Base:
    """The model a training test trains: `path` to load it from, and how to name it to the stage (the
    bundled model is not named: the stage's default)."""

    def __init__(self, path: str, named: bool):
        self.path = path
        self.args = ["--model", path] if named else []
        self.options = {"model_name_or_path": path} if named else {}


@pytest.fixture(scope="module", params=["tiny", pytest.param("bundled", marks=pytest.mark.slow)])
def base(request, model_path) -> Base:
    """The tiny random model (fast tier), then the bundled default model (slow tier)."""
    if request.param == "tiny":
        return Base(request.getfixturevalue("tiny_model"), named=True)
    return Base(model_path, named=False)


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def records(path: Path) -> list[dict]:
    from sca.records.schema import TRAINING_TRAJECTORY

    return load_records(path, TRAINING_TRAJECTORY).records


def encoder(tok, policy: str = "check"):
    from sca.training.encoding import ChatEncoder

    return ChatEncoder(tok, policy)


def trained_texts(tok, ids: list[int], mask: list[int]) -> list[str]:
    from sca.training.encoding import mask_runs

    return [tok.decode(ids[s:e], skip_special_tokens=False) for s, e in mask_runs(mask)]


def encoded_replies(tok, enc):
    """Each retail record encoded, its mask checked, and its trained text exactly each assistant reply
    ending in <|im_end|>; yields (record, encoding) for further checks."""
    from sca.training.encoding import verify_mask

    for record in records(RETAIL):
        e = enc.encode(record, record["id"])
        verify_mask(tok, e, record["id"])
        replies = [m["content"] + "<|im_end|>" for m in record["messages"] if m["role"] == "assistant"]
        assert trained_texts(tok, e.input_ids, e.mask) == replies, record["id"]
        yield record, e


def chatml_oracle(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Independent of sca.training: the whole conversation (to its last reply's <|im_end|>: the template's
    newline after it is glue, no part of any example) tokenized at once, and 1 on each assistant reply of
    the ChatML: from after <|im_start|>assistant\n to <|im_end|> included."""
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    header = tokenizer("assistant\n", add_special_tokens=False)["input_ids"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    text = tokenizer.apply_chat_template(messages[: last + 1], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    mask = [0] * len(ids)
    for j, t in enumerate(ids):
        if t == start and ids[j + 1: j + 1 + len(header)] == header:
            k = j + 1 + len(header)
            while True:
                mask[k] = 1
                if ids[k] == end:
                    break
                k += 1
    end = max(j for j, m in enumerate(mask) if m) + 1
    assert tokenizer.decode(ids[end:]) == "\n"  # what is left out: the newline after the last <|im_end|>
    return ids[:end], mask[:end]


def one_line_error(result) -> str:
    """The error: one line, the last; before it only progress lines ("sca train: loading...")."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert lines and lines[-1].startswith("error: "), result.output
    assert all(line.startswith("sca train: ") for line in lines[:-1]), result.output
    return lines[-1]


# -- training: rft through the CLI, sft and dpo through the library --------------------------------


@pytest.fixture(scope="module")
def rft_run(tmp_path_factory, base):
    out = tmp_path_factory.mktemp("rft") / "ckpt"
    result = cli("train", TINY, "-o", out, "--algo", "rft", "--lr", "1e-5", "--max-length", "512",
                 "--set", "max_steps=2", "--set", "per_device_train_batch_size=2", *base.args)
    return out, result


def test_rft_trains_on_reward_1_and_writes_checkpoint_log_and_summary(rft_run):
    out, result = rft_run
    assert result.exit_code == 0, result.output
    assert "examples used" in result.output and "final loss" in result.output
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [1, 2]
    for line in log:
        TRAIN_LOG_LINE.check(line)  # the shape docs/TRAJECTORY.md describes, as sca report reads it
        assert {"step", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_s", "elapsed_s"} <= set(line)
        assert math.isfinite(line["loss"]) and line["tokens_per_s"] > 0
    summary = json.loads((out / "train_summary.json").read_text())
    s = summary["summary"]
    assert summary["stage"] == "train" and summary["status"] == "finished"
    assert summary["inputs"][0]["sha256"] and summary["config"]["learning_rate"] == 1e-5
    assert s["examples"] == 2 and s["skipped"] == {"reward 0": 2}  # tiny.jsonl: two reward-1 trajectories
    assert s["steps"] == 2 and s["trained_tokens"] < s["tokens"] and s["final_loss"] == log[-1]["loss"]
    assert s["settings"]["bf16"] is False  # fp32 on CPU
    assert s["settings"]["gradient_checkpointing"] is True
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name


def test_rft_loss_is_the_mean_over_assistant_tokens_only(rft_run, tokenizer, base):
    """The first logged loss, recomputed with the base model over the assistant tokens alone."""
    import torch
    from transformers import AutoModelForCausalLM

    out, result = rft_run
    assert result.exit_code == 0, result.output
    first = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])["loss"]
    model = AutoModelForCausalLM.from_pretrained(base.path)
    nll, n, total = 0.0, 0, 0
    for record in records(TINY):
        if record["reward"] != 1:
            continue  # both reward-1 examples are in the first batch of 2
        ids, mask = chatml_oracle(tokenizer, record["messages"])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
        for j in range(1, len(ids)):
            if mask[j]:
                nll -= logp[j - 1, ids[j]].item()
                n += 1
        total += len(ids)
    assert 0 < n < total
    assert first == pytest.approx(nll / n, rel=1e-3)


def test_checkpoint_reloads_with_plain_transformers_and_generates(rft_run, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, result = rft_run
    assert result.exit_code == 0, result.output
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]


def test_sft_trains_on_every_rewarded_trajectory(tmp_path, base):
    from stages.train import train

    s = train(TINY, tmp_path / "ckpt", algo="sft",
              options={"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 512, **base.options})
    assert s.examples == 4 and s.skipped == {} and s.steps == 1
    assert s.final_loss is not None and math.isfinite(s.final_loss)


def test_dpo_trains_on_pairs_of_a_task_scoring_assistant_tokens_only(tmp_path, tokenizer, base):
    import torch
    from transformers import AutoModelForCausalLM

    from sca.training.configs import build_config
    from sca.training.fit import prepare
    from stages.train import train

    s = train(TINY, tmp_path / "ckpt", algo="dpo",
              options={"max_steps": 1, "per_device_train_batch_size": 2, **base.options})
    assert s.examples == 2 and s.notes == {"tasks paired": 2} and s.steps == 1
    assert s.final_loss is not None and math.isfinite(s.final_loss)
    assert abs(s.final_loss - math.log(2)) < 1e-3  # the first DPO step: policy == reference
    [log] = [json.loads(line) for line in (tmp_path / "ckpt" / "train_log.jsonl").read_text().splitlines()]
    TRAIN_LOG_LINE.check(log)
    assert "reward_margin" in log
    # what TRL scored: the log-probability of the assistant tokens of each completion, observations left out
    _, prep = prepare("dpo", records(TINY), tokenizer, build_config("dpo", tmp_path / "unused"))
    model = AutoModelForCausalLM.from_pretrained(base.path)
    expected = {}
    for side in ("chosen", "rejected"):
        total = 0.0
        for row in prep.rows:
            ids = torch.tensor([row["prompt_ids"] + row[f"{side}_ids"]])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            p = len(row["prompt_ids"])
            for j, (t, m) in enumerate(zip(row[f"{side}_ids"], row[f"{side}_mask"])):
                if m:
                    total += logp[p + j - 1, t].item()
            assert 0 in row[f"{side}_mask"] or side == "rejected"  # the chosen continuations hold observations
        expected[side] = total / len(prep.rows)
    assert log["logps_chosen"] == pytest.approx(expected["chosen"], rel=1e-3)
    assert log["logps_rejected"] == pytest.approx(expected["rejected"], rel=1e-3)


@pytest.mark.slow
def test_overfitting_a_tiny_set_makes_the_loss_fall(tmp_path):
    from stages.train import train

    one = tmp_path / "one.jsonl"
    one.write_text(TINY.read_text().splitlines()[2] + "\n")  # tiny-status#0, reward 1
    s = train(one, tmp_path / "ckpt", algo="rft", sets=["max_steps=6", "learning_rate=1e-4", "lr_scheduler_type=constant",
                                                        "gradient_checkpointing=false"])
    log = [json.loads(line)["loss"] for line in (tmp_path / "ckpt" / "train_log.jsonl").read_text().splitlines()]
    assert s.examples == 1 and s.first_loss == log[0] and s.final_loss == log[-1]
    assert len(log) == 6 and all(math.isfinite(x) for x in log)
    assert log[-1] < 0.5 * log[0], log


@pytest.mark.slow
def test_lora_merged_checkpoint_is_a_plain_model(tmp_path):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ckpt"
    result = cli("train", TINY, "-o", out, "--algo", "rft", "--merge-lora", "--set", "max_steps=1",
                 "--set", "per_device_train_batch_size=1", "--set", "lora_r=4")
    assert result.exit_code == 0, result.output
    assert "merged LoRA" in result.output
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())


# -- the assistant-only mask ---------------------------------------------------------------------------


def test_mask_on_the_default_template_is_exactly_the_assistant_replies(tokenizer):
    """Checked against an oracle that reads the ChatML of the whole conversation tokenized at once."""
    enc = encoder(tokenizer)
    for record in records(RETAIL):
        e = enc.encode(record, record["id"])
        ids, oracle = chatml_oracle(tokenizer, record["messages"])
        assert e.input_ids == ids and e.mask == oracle, record["id"]
        replies = [m["content"] + "<|im_end|>" for m in record["messages"] if m["role"] == "assistant"]
        assert trained_texts(tokenizer, e.input_ids, e.mask) == replies


def test_mask_on_a_template_without_generation_markers(tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = PLAIN_TEMPLATE
    for record, e in encoded_replies(tokenizer, encoder(tokenizer)):
        context = tokenizer.decode([t for t, m in zip(e.input_ids, e.mask) if not m])
        assert "User: " in context and "Agent: " in context
        assert not any(m["content"] in context for m in record["messages"] if m["role"] == "assistant")
        # the newline the template writes after the end-of-turn token is context, never trained
        runs = __import__("sca.training.encoding", fromlist=["mask_runs"]).mask_runs(e.mask)
        assert all(tokenizer.decode(e.input_ids[s2:s2 + 1]) == "\n" for _, s2 in runs[:-1])
        # after the last reply: nothing (the template's trailing newline is trimmed, neither trained nor kept)
        assert runs[-1][1] == len(e.input_ids) and e.input_ids[-1] == tokenizer.eos_token_id


def test_a_template_that_rewrites_past_turns_is_refused(tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = UNSTABLE_TEMPLATE
    with pytest.raises(InputError, match="not prefix-stable"):
        encoder(tokenizer).encode(records(RETAIL)[0], "r0")


def test_verify_mask_catches_a_wrong_or_empty_mask(tokenizer):
    import dataclasses

    from sca.training.encoding import mask_runs, verify_mask

    e = encoder(tokenizer).encode(records(RETAIL)[0], "r0")
    verify_mask(tokenizer, e, "r0")
    s, t = mask_runs(e.mask)[1]
    shifted = list(e.mask)
    shifted[s - 1], shifted[t - 1] = 1, 0  # one token of the header in, the end-of-turn token out
    with pytest.raises(InputError, match="does not match assistant message 1"):
        verify_mask(tokenizer, dataclasses.replace(e, mask=shifted), "r0")
    glue = list(e.mask)
    glue[t] = 1  # the newline after <|im_end|>
    with pytest.raises(InputError, match="does not match"):
        verify_mask(tokenizer, dataclasses.replace(e, mask=glue), "r0")
    with pytest.raises(InputError, match="empty"):
        verify_mask(tokenizer, dataclasses.replace(e, mask=[0] * len(e.mask)), "r0")
    merged = list(e.mask)
    for j in range(t, mask_runs(e.mask)[2][0]):
        merged[j] = 1  # an observation between two replies
    with pytest.raises(InputError, match="trained spans for"):
        verify_mask(tokenizer, dataclasses.replace(e, mask=merged), "r0")


#: ChatML that writes an empty assistant turn after the conversation (glue after the last reply)
EMPTY_TURN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% elif messages[-1]['role'] == 'assistant' %}<|im_start|>assistant\n<|im_end|>\n{% endif %}"
)


def test_glue_after_the_last_reply_is_trimmed(tokenizer):
    """Nothing after the last reply's end-of-turn token: not the template's newline, nor an empty turn or a
    generation prompt it writes there (neither trained nor left untrained at the end of the example)."""
    from sca.training.encoding import mask_runs, verify_mask

    record = {**records(RETAIL)[0]}
    first_reply = next(i for i, m in enumerate(record["messages"]) if m["role"] == "assistant")
    record["messages"] = record["messages"][: first_reply + 1]
    for template in (None, EMPTY_TURN_TEMPLATE):
        tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
        if template:
            tok.chat_template = template
        e = encoder(tok).encode(record, "r")
        verify_mask(tok, e, "r")
        assert mask_runs(e.mask)[-1][1] == len(e.input_ids)
        assert e.input_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
        assert tok.decode(e.input_ids).endswith(record["messages"][-1]["content"] + "<|im_end|>")


def test_the_templates_end_of_turn_is_used_when_the_tokenizer_names_another_or_none(tokenizer):
    """A tokenizer whose eos token is not the template's end-of-turn (a base model's), or is missing: the
    end-of-turn token is read from the chat template, so each reply is trained to its <|im_end|>."""
    from sca.training.encoding import end_of_turn_ids, ensure_pad_token

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for eos in ("<|endoftext|>", None):
        tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
        tok.eos_token, tok.pad_token = eos, None
        assert im_end in end_of_turn_ids(tok, [])
        assert len(list(encoded_replies(tok, encoder(tok)))) == len(records(RETAIL))
        ensure_pad_token(tok, end_of_turn_ids(tok, []))
        assert tok.pad_token == (eos or "<|im_end|>")


def test_verify_mask_needs_each_end_of_turn_token_under_the_mask(tokenizer):
    import dataclasses

    from sca.training.encoding import mask_runs, verify_mask

    e = encoder(tokenizer).encode(records(RETAIL)[0], "r0")
    _, t = mask_runs(e.mask)[1]
    no_eot = list(e.mask)
    no_eot[t - 1] = 0  # only the end-of-turn token out: the text (special tokens skipped) is unchanged
    with pytest.raises(InputError, match="assistant message 1 leaves out its end-of-turn token"):
        verify_mask(tokenizer, dataclasses.replace(e, mask=no_eot), "r0")


def test_verify_mask_checks_examples_as_cut_at_max_length(tokenizer):
    """The mask is checked on the example as trained, after the cut at max_length, not only before it."""
    import dataclasses

    from sca.training.encoding import mask_runs, verify_mask, window

    e = encoder(tokenizer).encode(records(RETAIL)[0], "r0")
    runs = mask_runs(e.mask)
    (s1, _), (s2, _) = runs[0], runs[1]
    cut = window(e, 0, s1 + 3)  # inside the first reply
    assert cut.cut and len(cut.input_ids) == s1 + 3 and len(cut.expected) == 1
    verify_mask(tokenizer, cut, "r0")
    verify_mask(tokenizer, window(e, 0, s2), "r0")  # between replies: the first whole, nothing of the second
    shifted = list(cut.mask)
    shifted[s1 - 1] = 1  # one header token in
    with pytest.raises(InputError, match="as cut at max_length"):
        verify_mask(tokenizer, dataclasses.replace(cut, mask=shifted), "r0")
    early = list(cut.mask)
    early[-1] = 0  # the cut reply's span stops before the end of the sequence
    with pytest.raises(InputError, match="as cut at max_length"):
        verify_mask(tokenizer, dataclasses.replace(cut, mask=early), "r0")
    with pytest.raises(InputError, match="1 trained spans for 2"):  # a whole reply left out of the cut mask
        verify_mask(tokenizer, dataclasses.replace(window(e, 0, s2 + 2), mask=e.mask[: s2] + [0, 0]), "r0")


def test_token_parity_check_trains_what_use_trains(tokenizer):
    """check == use: a reply the model ended without its end-of-turn token (a stop string, put back in the text)
    is trained on its generated ids under check as under use; the template's end-of-turn is context."""
    from sca.training.configs import build_config
    from sca.training.fit import prepare

    record = json.loads(json.dumps(records(TINY)[0]))
    record["reward"] = 1
    replies = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in replies]
    ids[0] = ids[0] + [im_end]  # the first reply ended on its end-of-turn token, the others on a stop string
    record["assistant_token_ids"] = ids
    rows = {}
    for policy in ("check", "use"):
        _, prep = prepare("rft", [record], tokenizer, build_config("rft", "/tmp/unused", options={"token_ids": policy}))
        assert prep.parity.checked == len(replies) and prep.parity.mismatched == 0
        rows[policy] = prep.rows[0]
        trained = [t for t in rows[policy]["labels"] if t != -100]
        assert trained == [t for r in ids for t in r]  # the generated ids: no end-of-turn the model did not produce
    assert rows["check"] == rows["use"]
    assert rows["check"]["input_ids"][-1] == im_end and rows["check"]["labels"][-1] == -100  # context


def test_resume_needs_a_checkpoint(tmp_path):
    line = one_line_error(cli("train", TINY, "-o", tmp_path / "c", "--algo", "rft", "--set",
                              "resume_from_checkpoint=true"))
    assert "no checkpoint-N directory" in line


def test_rft_and_sft_select_by_reward(tokenizer):
    from sca.training.configs import build_config
    from sca.training.fit import prepare

    sel, prep = prepare("rft", records(RETAIL), tokenizer, build_config("rft", "/tmp/unused"))
    assert [r["id"] for r in sel.records] == ["retail-cancel-001#0", "retail-address-002#0", "retail-total-003#0"]
    assert prep.examples == 3 and prep.skipped == {"reward 0": 5, "reward null": 1}
    sel, prep = prepare("sft", records(RETAIL), tokenizer, build_config("sft", "/tmp/unused"))
    assert prep.examples == 8 and prep.skipped == {"reward null": 1}
    assert all(r["reward"] is not None for r in sel.records)


def test_truncation_keeps_the_start_and_drops_examples_left_without_a_reply(tokenizer):
    from sca.training.configs import build_config
    from sca.training.fit import prepare

    cfg = build_config("rft", "/tmp/unused", options={"max_length": 200})
    _, prep = prepare("rft", records(RETAIL), tokenizer, cfg)
    assert all(len(r["input_ids"]) <= 200 for r in prep.rows)
    assert prep.truncated == 3
    cfg = build_config("rft", "/tmp/unused", options={"max_length": 120})  # shorter than the system prompt
    with pytest.raises(InputError, match="no assistant token within max_length"):
        prepare("rft", records(RETAIL), tokenizer, cfg)


# -- DPO pairs -------------------------------------------------------------------------------------


def test_dpo_prompt_is_the_shared_prefix_and_completions_score_assistant_tokens_only(tokenizer):
    from sca.training.configs import build_config
    from sca.training.fit import prepare

    cfg = build_config("dpo", "/tmp/unused")
    sel, prep = prepare("dpo", records(RETAIL), tokenizer, cfg)
    assert [(a["id"], b["id"]) for a, b in sel.pairs] == [
        ("retail-cancel-001#0", "retail-cancel-001#1"),
        ("retail-address-002#0", "retail-address-002#1"),
        ("retail-address-002#0", "retail-address-002#2"),  # one reward-1 trajectory, cycled
    ]
    assert sel.skipped == {"reward null": 1, "task with no reward-0 trajectory": 1,
                           "task with no reward-1 trajectory": 1}
    by_id = {r["id"]: r for r in records(RETAIL)}
    for (c, r), row in zip(sel.pairs, prep.rows):
        prompt = tokenizer.decode(row["prompt_ids"])
        # shared messages: the first reply of the cancel task is in the prompt, as context
        shared = 0
        while by_id[c["id"]]["messages"][shared] == by_id[r["id"]]["messages"][shared]:
            shared += 1
        for m in c["messages"][:shared]:
            assert m["content"] in prompt
        for rec, ids, mask in ((c, row["chosen_ids"], row["chosen_mask"]), (r, row["rejected_ids"], row["rejected_mask"])):
            replies = [m["content"] + "<|im_end|>" for m in rec["messages"][shared:] if m["role"] == "assistant"]
            assert trained_texts(tokenizer, ids, mask) == replies
    cancel, address, address2 = prep.rows
    # cancel: diverges at the second reply; the first is in the prompt, as context
    assert tokenizer.decode(cancel["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert 'find_user_id_by_email("yusuf.rossi@example.com")' in tokenizer.decode(cancel["prompt_ids"])
    assert "OBSERVATION" in tokenizer.decode(cancel["chosen_ids"])  # observations: in the completion, untrained
    # address: diverges at the first reply
    assert tokenizer.decode(address["prompt_ids"]).endswith("mei.kovacs@example.com.<|im_end|>\n<|im_start|>assistant\n")
    # address #0 vs #2: same first reply, then different observations; the prompt takes their shared start
    assert tokenizer.decode(address2["prompt_ids"]).endswith('<|im_start|>user\nOBSERVATION: "')


def test_dpo_collator_applies_the_assistant_masks():
    from sca.training.dpo import MaskedPreferenceCollator

    collate = MaskedPreferenceCollator(pad_token_id=0)
    batch = collate([
        {"prompt_ids": [1, 2], "chosen_ids": [3, 4, 5, 6], "rejected_ids": [7, 8],
         "chosen_mask": [1, 0, 0, 1], "rejected_mask": [1, 1]},
        {"prompt_ids": [9], "chosen_ids": [10], "rejected_ids": [11, 12, 13],
         "chosen_mask": [1], "rejected_mask": [0, 1, 0]},
    ])
    assert batch["completion_mask"].tolist() == [
        [0, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0],  # chosen
        [0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0],  # rejected
    ]


# -- token parity ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tokenizer):
    """A record whose two replies and their token ids come from the default model (greedy): one that
    ends on the end-of-turn token, one cut by a stop string that is put back (as sca rollout does)."""
    from sca.inference import SamplingParams, load_model

    first = records(TINY)[0]["messages"][:2]
    second_user = {"role": "user", "content": "Say it again."}
    with load_model(backend="hf", device="cpu", dtype="float32", num_threads=1) as model:
        [g1] = model.generate([first], SamplingParams(temperature=0, max_new_tokens=24))
        reply1 = {"role": "assistant", "content": g1.text}
        stop = "#W21"  # the model repeats the order number
        [g2] = model.generate([first + [reply1, second_user]],
                              SamplingParams(temperature=0, max_new_tokens=32, stop=[stop]))

    def ids_of(gen, text):
        if getattr(gen, "token_ids", None) is not None:
            return list(gen.token_ids)
        return tokenizer(text, add_special_tokens=False)["input_ids"]  # a backend that gives no ids

    if g1.finish_reason != "stop" or g2.finish_reason != "stop" or g2.text.endswith(".com"):
        pytest.skip("the default model did not stop (or not on the stop string) within the budget")
    reply2 = {"role": "assistant", "content": g2.text + stop}  # the stop string put back
    ids1 = ids_of(g1, g1.text) + ([] if getattr(g1, "token_ids", None) is not None else [tokenizer.eos_token_id])
    record = {"id": "gen#0", "task_id": "gen", "reward": 1, "messages": first + [reply1, second_user, reply2],
              "assistant_token_ids": [ids1, ids_of(g2, reply2["content"])]}
    return record


def test_generated_token_ids_match_re_tokenizing(tokenizer, generated):
    from sca.training.configs import build_config
    from sca.training.fit import prepare

    _, prep = prepare("rft", [generated], tokenizer, build_config("rft", "/tmp/unused"))
    assert prep.parity.checked == 2 and prep.parity.mismatched == 0


def test_a_token_id_mismatch_is_reported_never_silently_trained(tokenizer, generated, tmp_path):
    from sca.training.configs import build_config
    from sca.training.fit import prepare

    bad = json.loads(json.dumps(generated))
    bad["assistant_token_ids"][1][0] = 1000  # not what re-tokenizing gives
    with pytest.raises(InputError, match=r"1 of 2 assistant messages .*'gen#0'.* assistant message 1"):
        prepare("rft", [bad], tokenizer, build_config("rft", "/tmp/unused"))

    _, prep = prepare("rft", [bad], tokenizer, build_config("rft", "/tmp/unused", options={"token_ids": "use"}))
    assert prep.parity.used == 2 and prep.parity.mismatched == 1
    ids, labels = prep.rows[0]["input_ids"], prep.rows[0]["labels"]
    trained = [t for t in labels if t != -100]
    assert trained == bad["assistant_token_ids"][0] + bad["assistant_token_ids"][1]  # the generated ids, as they are
    assert tokenizer.eos_token_id in ids[len(ids) - 3:]  # the template's end of turn follows, as context

    _, prep = prepare("rft", [bad], tokenizer, build_config("rft", "/tmp/unused", options={"token_ids": "ignore"}))
    assert prep.parity.checked == 0 and 1000 not in prep.rows[0]["input_ids"]

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(bad) + "\n")
    line = one_line_error(cli("train", path, "-o", tmp_path / "ckpt", "--algo", "rft"))
    assert "token ids: 1 of 2" in line and "--token-ids use" in line


# -- options -----------------------------------------------------------------------------------------


def test_paper_preset_yaml_and_set_layer_onto_the_typed_config(tmp_path):
    from sca.training.configs import DPOTrainConfig, SFTTrainConfig, build_config

    cfg = build_config("rft", tmp_path, preset="paper")
    assert isinstance(cfg, SFTTrainConfig)
    assert (cfg.learning_rate, cfg.num_train_epochs, cfg.max_length) == (1e-5, 6, 16384)
    assert cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps == 8
    cfg = build_config("dpo", tmp_path, preset="paper")
    assert isinstance(cfg, DPOTrainConfig) and (cfg.learning_rate, cfg.beta) == (2e-7, 0.1)

    yaml_file = tmp_path / "trl.yaml"
    yaml_file.write_text("learning_rate: 3e-5\nwarmup_steps: 5\nlr_scheduler_type: cosine\n")
    cfg = build_config("rft", tmp_path, preset="paper", config_file=yaml_file, options={"num_train_epochs": 2},
                       sets=["warmup_steps=7", "per_device_train_batch_size=2", "model_init_kwargs={\"dtype\": \"float32\"}"])
    assert (cfg.learning_rate, cfg.num_train_epochs, cfg.warmup_steps) == (3e-5, 2, 7)
    assert cfg.lr_scheduler_type.value == "cosine" and cfg.model_init_kwargs == {"dtype": "float32"}
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (2, 4)  # global batch 8 kept

    with pytest.raises(InputError, match="unknown option 'learnig_rate' .*did you mean learning_rate"):
        build_config("rft", tmp_path, sets=["learnig_rate=1"])
    with pytest.raises(InputError, match="unknown option 'beta'"):
        build_config("rft", tmp_path, sets=["beta=0.1"])  # a DPO option
    with pytest.raises(InputError, match="expected a number"):
        build_config("rft", tmp_path, sets=["learning_rate=fast"])
    with pytest.raises(InputError, match="FlashAttention"):
        build_config("rft", tmp_path, sets=["padding_free=true"])


def test_help_lists_train_and_imports_no_heavy_module():
    result = cli("train", "--help")
    assert result.exit_code == 0 and "Examples:" in result.output and "--token-ids" in result.output
    probe = (
        "import sys\nsys.argv = ['sca', 'train', '--help']\nfrom sca_cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', [m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


# -- bad input: one line, exit 2 -----------------------------------------------------------------------


def test_no_rewarded_trajectory_is_a_one_line_error(tmp_path):
    line = one_line_error(cli("train", FIX / "no_reward.jsonl", "-o", tmp_path / "c", "--algo", "rft"))
    assert "no trajectory with reward 1" in line and "5 reward 0, 1 reward null" in line
    line = one_line_error(cli("train", FIX / "no_reward.jsonl", "-o", tmp_path / "c", "--algo", "dpo"))
    assert "no DPO pair" in line


def test_malformed_record_is_a_one_line_error_naming_file_and_line(tmp_path):
    line = one_line_error(cli("train", FIX / "malformed.jsonl", "-o", tmp_path / "c", "--algo", "sft"))
    assert line == f'error: {FIX / "malformed.jsonl"}:2: reward: expected 0, 1 or null, got "yes"'
    bad = tmp_path / "bad.jsonl"
    record = records(TINY)[0]
    for broken, expected in (
        ({**record, "messages": record["messages"][1:]},
         "messages[0].role: the system prompt must come first, got 'user'"),
        ({**record, "assistant_token_ids": [[1, 2]]}, "assistant_token_ids: 1 entries for 3 assistant messages"),
        ({k: v for k, v in record.items() if k != "reward"}, "reward: missing required field"),
    ):
        bad.write_text(json.dumps(broken) + "\n")
        assert one_line_error(cli("train", bad, "-o", tmp_path / "c", "--algo", "rft")).endswith(f"{bad}:1: {expected}")


def test_a_trajectory_from_another_tool_needs_no_trial_env_or_instruction():
    """sca train reads the fields training relies on: trial, env and instruction may be missing (another tool's
    trajectories), the id need not be <task_id>#<trial>, a reward may be written 1.0; the reward must be there."""
    from sca.records.schema import TRAINING_TRAJECTORY, TRAJECTORY, RecordError

    record = records(TINY)[0]
    other = {k: v for k, v in record.items() if k not in ("trial", "env", "instruction")}
    TRAINING_TRAJECTORY.check({**other, "id": "from-elsewhere", "reward": 1.0})
    TRAINING_TRAJECTORY.check({**other, "reward": None})
    with pytest.raises(RecordError, match="trial: missing required field"):
        TRAJECTORY.check(other)  # what sca rollout writes has them all
    with pytest.raises(RecordError, match="reward: missing required field"):
        TRAINING_TRAJECTORY.check({k: v for k, v in other.items() if k != "reward"})


def test_bad_options_are_one_line_errors(tmp_path):
    assert "unknown option 'learnig_rate'" in one_line_error(
        cli("train", TINY, "-o", tmp_path / "c", "--algo", "rft", "--set", "learnig_rate=1"))
    assert "--algo must be one of" in one_line_error(cli("train", TINY, "-o", tmp_path / "c", "--algo", "ppp"))
    assert "TRL 1.16 has no PPO trainer" in one_line_error(cli("train", TINY, "-o", tmp_path / "c", "--algo", "ppo"))
    # grpo trains on tasks: a trajectory file is not one
    assert one_line_error(cli("train", TINY, "-o", tmp_path / "c", "--algo", "grpo")).endswith(
        "tiny.jsonl:1: evaluation_function: missing required field")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text("{}")
    assert "already holds a checkpoint" in one_line_error(cli("train", TINY, "-o", tmp_path / "c", "--algo", "rft"))


def test_training_loads_torch_with_passive_openmp_waits(tmp_path):
    """sca train sets OpenMP's passive waits (sca.inference.hf) before anything loads torch: spinning threads
    slow a shared CPU many times over (bench/generate.py --contention)."""
    import os
    import subprocess
    import sys

    code = f"""
import os, sys
import stages.train
from typer.testing import CliRunner
from sca_cli.app import app

def seen(*a, **kw):
    raise RuntimeError("policy " + str(os.environ.get("OMP_WAIT_POLICY")) + " torch-before " + str("torch" in PRE))

PRE = set(sys.modules)
stages.train.train = seen
result = CliRunner().invoke(app, ["train", {str(TINY)!r}, "-o", {str(tmp_path / "ckpt")!r}, "--algo", "rft"])
print(result.exception)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "SCA_HF_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "policy PASSIVE torch-before False" in out.stdout, out.stdout + out.stderr
