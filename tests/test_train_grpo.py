"""`sca train --algo grpo`: TRL's GRPOTrainer with its rollouts played by our episode engine."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
from _sandbox_util import backend_or_skip
from typer.testing import CliRunner

from sca_cli.app import app

# Rewards that vary within a group at temperature 1: an answer of even length passes.
TASKS = [
    {"id": "even-1", "env": "calculation", "instruction": "Say any single word.",
     "evaluation_function": "def evaluate(answer):\n    return isinstance(answer, str) and len(answer) % 2 == 0\n",
     "solution": "answer = 'ok'\n", "failure_cases": ["answer = 'odd'\n", "answer = 3\n", "pass\n"]},
    {"id": "even-2", "env": "calculation", "instruction": "Name a colour.",
     "evaluation_function": "def evaluate(answer):\n    return isinstance(answer, str) and len(answer) % 2 == 0\n",
     "solution": "answer = 'blue'\n", "failure_cases": ["answer = 'red'\n", "answer = 3\n", "pass\n"]},
]


def write(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from sca.inference import default_model_path

    return AutoTokenizer.from_pretrained(str(default_model_path()))


def test_episodes_become_prompt_completion_and_a_mask_of_the_models_own_tokens(tokenizer):
    """What TRL gets for one episode: the prompt up to the first reply, then everything else, with
    env_mask 1 exactly on the tokens the model generated (its replies, as generated)."""
    from sca.executor import ExecutorConfig, ExecutorEpisode
    from stages.train_grpo import EpisodeRollouts

    replies = ["THOUGHT: look END THOUGHT\nACTION:\nprint(string_length(string='ab'))\nEND ACTION",
               "THOUGHT: done END THOUGHT\n2"]
    ids = [tokenizer(r + "<|im_end|>", add_special_tokens=False)["input_ids"] for r in replies]

    class Env:
        name, description, policy, user_facing = "calculation", "d", "", False

        def tools(self):
            return []

    ep = ExecutorEpisode.start(task_id="t", trial=0, instruction="How long is ab?", env=Env(), sandbox=None,
                               config=ExecutorConfig(), scorer=None)
    ep.messages += [{"role": "assistant", "content": replies[0]}, {"role": "user", "content": "OBSERVATION:\n2"},
                    {"role": "assistant", "content": replies[1]}]
    ep.assistant_token_ids = ids
    ep.reward, ep.termination = 1, "final_answer"
    stats = Counter()
    roll = EpisodeRollouts([], tokenizer, type("C", (), {"episode_max_steps": 15, "action_format": "code"})(),
                           None, None, stats, [tokenizer.eos_token_id])
    out = roll._to_trl([ep])
    prompt, completion, mask = out["prompt_ids"][0], out["completion_ids"][0], out["env_mask"][0]
    full = tokenizer.apply_chat_template(ep.messages, tokenize=False)
    assert tokenizer.decode(prompt + completion) == full  # the whole conversation, as the template renders it
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")  # up to the generation prompt
    assert len(mask) == len(completion) and mask[0] == 1  # the completion starts at the first reply
    trained = [t for t, m in zip(completion, mask) if m]
    assert trained == ids[0] + ids[1]  # exactly the generated tokens, nothing of the observation
    assert "OBSERVATION" not in tokenizer.decode(trained)
    assert out["sca_reward"] == [1.0] and stats["rewarded"] == 1
    # an infrastructure failure trains nothing and earns nothing
    ep.infra_error, ep.reward = {"kind": "sandbox", "message": "lost"}, None
    out = roll._to_trl([ep])
    assert out["sca_reward"] == [0.0] and not any(out["env_mask"][0]) and stats["infra_failures"] == 1


def test_uniform_groups_are_counted_and_can_be_left_out(tmp_path):
    from stages.train_grpo import EpisodeRollouts, load_tasks

    stats = Counter()
    roll = EpisodeRollouts.__new__(EpisodeRollouts)
    roll.stats = stats
    roll._count_groups(["a", "a", "b", "b", "c", "c"], [1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert (stats["groups"], stats["groups_uniform"]) == (3, 2)
    tasks = write(tmp_path / "t.jsonl", TASKS + [{**TASKS[0], "id": "even-3"}])
    rollout = write(tmp_path / "r.jsonl", [
        {"task_id": "even-1", "trial": 0, "reward": 1}, {"task_id": "even-1", "trial": 1, "reward": 1},
        {"task_id": "even-2", "trial": 0, "reward": 0}, {"task_id": "even-2", "trial": 1, "reward": 1},
        {"task_id": "even-3", "trial": 0, "reward": 0}, {"task_id": "even-3", "trial": 1, "reward": None}])
    kept, notes = load_tasks(str(tasks), str(rollout))
    assert [t["id"] for t in kept] == ["even-2"]
    assert notes == {"left out: solved by none or all trials of the earlier rollout": 2}


def test_bad_input_is_one_line(tmp_path):
    r = CliRunner().invoke(app, ["train", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "c"), "--algo", "grpo"])
    assert r.exit_code == 2 and "no such file" in r.output
    r = CliRunner().invoke(app, ["train", str(write(tmp_path / "t.jsonl", TASKS)), "-o", str(tmp_path / "c"),
                                 "--algo", "rft", "--k", "4"])
    assert r.exit_code == 2 and "--k and --episode-max-steps go with --algo grpo" in r.output


def test_vllm_server_mode_is_refused_before_training(tmp_path):
    """TRL's server mode would leave our episodes generating elsewhere than the engine TRL syncs."""
    r = CliRunner().invoke(app, ["train", str(write(tmp_path / "t.jsonl", TASKS)), "-o", str(tmp_path / "c"),
                                 "--algo", "grpo", "--sandbox", "subprocess", "--set", "use_vllm=true",
                                 "--set", "vllm_mode=server"])
    assert r.exit_code == 2 and "vllm_mode=server" in r.output and "colocate" in r.output
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_a_few_grpo_steps_on_live_episodes(tmp_path):
    backend_or_skip("bwrap")
    import torch

    torch.set_num_threads(1)
    out = tmp_path / "ckpt"
    r = CliRunner().invoke(app, ["train", str(write(tmp_path / "t.jsonl", TASKS)), "-o", str(out), "--algo", "grpo",
                                 "--k", "4", "--episode-max-steps", "1", "--sandbox", "bwrap", "--workers", "1",
                                 "--set", "per_device_train_batch_size=4", "--set", "max_steps=2",
                                 "--set", "episode_max_new_tokens=12", "--set", "temperature=1.0",
                                 "--set", "learning_rate=1e-4", "--set", "seed=3"])
    assert r.exit_code == 0, r.output
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [1, 2]
    assert all(math.isfinite(line["loss"]) for line in log)
    assert log[-1]["episodes"] == 8 and log[-1]["groups"] == 2
    # at least one group had unequal rewards, so the policy gradient was not zero
    assert log[-1]["groups_uniform"] < 2 and any(line["grad_norm"] > 0 for line in log), log
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["summary"]["algo"] == "grpo" and summary["summary"]["examples"] == 8
    # the checkpoint reloads and generates
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt")
    assert model.generate(ids if hasattr(ids, "shape") else ids["input_ids"], max_new_tokens=3).shape[-1] > 0
