"""`sca train --algo grpo`: TRL's GRPOTrainer with its rollouts played by our episode engine."""

from __future__ import annotations

import json
import math
import types
from collections import Counter
from pathlib import Path

import pytest
from _sandbox_util import backend_or_skip
from _scripted import ScriptedRoles
from cat_sets import RETAIL_TASKS
from typer.testing import CliRunner

from sca.records.io import InputError
from sca.records.schema import TRAIN_LOG_LINE
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
    from sca.agent.executor import ExecutorConfig, ExecutorEpisode
    from sca.training.grpo import EpisodeRollouts

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
    out = roll._to_trl([ep.record({})])
    prompt, completion, mask = out["prompt_ids"][0], out["completion_ids"][0], out["env_mask"][0]
    full = tokenizer.apply_chat_template(ep.messages, tokenize=False)
    assert full.endswith("<|im_end|>\n")
    # the whole conversation, as the template renders it, to the last reply's end-of-turn token (not the glue after)
    assert tokenizer.decode(prompt + completion) == full[:-1]
    assert completion[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") and mask[-1] == 1
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")  # up to the generation prompt
    assert len(mask) == len(completion) and mask[0] == 1  # the completion starts at the first reply
    trained = [t for t, m in zip(completion, mask) if m]
    assert trained == ids[0] + ids[1]  # exactly the generated tokens, nothing of the observation
    assert "OBSERVATION" not in tokenizer.decode(trained)
    assert out["sca_reward"] == [1.0]
    # an infrastructure failure trains nothing and has no reward: None, which TRL leaves out of the group's
    # mean and std (advantage 0), where a 0 would teach that the answer was bad
    ep.infra_error, ep.reward = {"kind": "sandbox", "message": "lost"}, None
    out = roll._to_trl([ep.record({})])
    assert out["sca_reward"] == [None] and not any(out["env_mask"][0])
    from sca.training.grpo import episode_reward

    assert episode_reward(sca_reward=out["sca_reward"]) == [None]
    # an episode with nothing the model generated to train on (it ended before the first reply): None as well
    ep.infra_error, ep.reward = None, 0
    ep.messages, ep.assistant_token_ids = ep.messages[:2], []
    out = roll._to_trl([ep.record({})])
    assert out["sca_reward"] == [None] and out["env_mask"] == [[0]]
    assert stats["episodes_without_trained_tokens"] == 1


def test_uniform_groups_are_counted_and_can_be_left_out(tmp_path):
    from sca.training.grpo import EpisodeRollouts
    from sca.training.selection import load_tasks

    stats = Counter()
    roll = EpisodeRollouts.__new__(EpisodeRollouts)
    roll.stats = stats
    roll._count_groups(["a", "a", "b", "b", "c", "c"], [1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert (stats["groups"], stats["groups_uniform"]) == (3, 2)
    # a reward None (no reward: out of TRL's baseline) does not make a group differ
    roll._count_groups(["d", "d", "e", "e"], [1.0, None, 0.0, 1.0], None, [False, True, False, False])
    assert (stats["groups"], stats["groups_uniform"], stats["unrewarded"], stats["infra_failures"]) == (5, 3, 1, 1)
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
                                 "--algo", "rft", "--group-size", "4"])
    assert r.exit_code == 2 and "--group-size and --max-steps (an episode's step budget" in r.output


def test_vllm_server_mode_is_refused_before_training(tmp_path):
    """TRL's server mode would leave our episodes generating elsewhere than the engine TRL syncs."""
    r = CliRunner().invoke(app, ["train", str(write(tmp_path / "t.jsonl", TASKS)), "-o", str(tmp_path / "c"),
                                 "--algo", "grpo", "--sandbox", "subprocess", "--set", "use_vllm=true",
                                 "--set", "vllm_mode=server"])
    assert r.exit_code == 2 and "vllm_mode=server" in r.output and "colocate" in r.output
    assert not (tmp_path / "c").exists()


def grpo_cli(tmp_path, *args, input=None):
    """A grpo run meant to stop at a check: past the checks, its model (none) stops it before any episode."""
    tasks = "-" if input is not None else str(write(tmp_path / "t.jsonl", TASKS))
    return CliRunner().invoke(app, ["train", tasks, "-o", str(tmp_path / "c"), "--algo", "grpo", "--sandbox",
                                    "subprocess", "--model", str(tmp_path / "no-model"), *args], input=input)


def test_past_the_checks_a_missing_model_is_a_one_line_error(tmp_path):
    line = last_line(grpo_cli(tmp_path, "--group-size", "2", "--set", "per_device_train_batch_size=2"))
    assert line.startswith("error: cannot load the tokenizer of ") and "no-model" in line


def last_line(result) -> str:
    assert result.exit_code == 2, result.output
    return [line for line in result.output.splitlines() if line.strip()][-1]


def test_vllm_options_our_episodes_cannot_work_with_are_off_or_refused(tmp_path):
    """TRL's importance-sampling correction needs the sampler's per-token log-probabilities (we hand none), and
    vLLM sleep mode is woken only around TRL's own generate calls: off by default, refused when turned on."""
    from sca.training.configs import build_config

    cfg = build_config("grpo", tmp_path / "c", sets=["num_generations=2", "per_device_train_batch_size=2"])
    assert cfg.vllm_importance_sampling_correction is False  # TRL's default is True
    line = last_line(grpo_cli(tmp_path, "--set", "use_vllm=true", "--set", "vllm_importance_sampling_correction=true"))
    assert line.startswith("error: vllm_importance_sampling_correction=true") and "log-probabilities" in line
    line = last_line(grpo_cli(tmp_path, "--set", "use_vllm=true", "--set", "vllm_enable_sleep_mode=true"))
    assert line.startswith("error: vllm_enable_sleep_mode=true")
    assert not (tmp_path / "c").exists()


def test_sharded_training_model_without_vllm_is_refused(tmp_path, monkeypatch):
    """Without vLLM each process generates with its own training model: ZeRO-3 and FSDP shard it."""
    from sca.training.configs import build_config
    from sca.training.grpo import check_grpo_config

    cfg = build_config("grpo", tmp_path / "c", sets=["num_generations=2", "per_device_train_batch_size=2"])
    check_grpo_config(cfg)  # plain: fine
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(InputError, match="DeepSpeed ZeRO-3 shards the model"):
        check_grpo_config(cfg)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    check_grpo_config(cfg)  # ZeRO-2 keeps whole weights on each process
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    line = last_line(grpo_cli(tmp_path, "--group-size", "2", "--set", "per_device_train_batch_size=2"))
    assert line.startswith("error: FSDP shards the model") and "use_vllm=true" in line


def test_generation_batch_must_hold_whole_groups_checked_before_trl(tmp_path, monkeypatch):
    """per-device batch x gradient accumulation x processes episodes per generation, a multiple of --k;
    our one line, before GRPOConfig's own check (and the global batch is applied before TRL derives it)."""
    from sca.training.configs import build_config

    line = last_line(grpo_cli(tmp_path, "--group-size", "3", "--set", "per_device_train_batch_size=4"))
    assert line == ("error: bad training option: the generation batch (per_device_train_batch_size 4 x "
                    "gradient_accumulation_steps 1 x 1 processes = 4 episodes) is not a multiple of num_generations "
                    "(--group-size) 3: each task's 3 episodes must be generated together; make it a multiple of 3")
    cfg = build_config("grpo", tmp_path / "c", options={"global_batch_size": 16, "num_generations": 8},
                       sets=["per_device_train_batch_size=4"])
    assert (cfg.gradient_accumulation_steps, cfg.generation_batch_size) == (4, 16)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    with pytest.raises(InputError, match=r"4 x gradient_accumulation_steps 1 x 2 processes = 8 episodes\) is not a "
                                         r"multiple of num_generations \(--group-size\) 16"):
        build_config("grpo", tmp_path / "c", sets=["num_generations=16", "per_device_train_batch_size=4"])


def test_native_tool_calls_need_tasks_of_one_environment(tmp_path):
    """With json actions the executor is offered one environment's tools (as in sca rollout): refused up front."""
    mixed = TASKS + [{**CANCEL, "id": "retail-1"}]
    r = CliRunner().invoke(app, ["train", str(write(tmp_path / "t.jsonl", mixed)), "-o", str(tmp_path / "c"),
                                 "--algo", "grpo", "--sandbox", "subprocess", "--set", "action_format=json"])
    assert last_line(r).endswith("action_format=json needs tasks of one environment, not calculation, retail")
    assert not (tmp_path / "c").exists()


def test_tasks_from_stdin_are_read_once(tmp_path):
    """The tasks are checked, then trained on: from stdin both must see them (it cannot be read twice)."""
    text = "".join(json.dumps(t) + "\n" for t in TASKS)
    line = last_line(grpo_cli(tmp_path, "--set", "use_vllm=true", "--set", "vllm_mode=server", input=text))
    assert "vllm_mode=server" in line  # reached the option check: the tasks were there the second time too
    from sca.training.selection import load_tasks, read_tasks

    source = read_tasks(str(write(tmp_path / "t.jsonl", TASKS)))
    assert [t["id"] for t in load_tasks(source, None)[0]] == ["even-1", "even-2"]
    assert source.describe()["records"] == 2


def test_text_or_bool_options_are_typed(tmp_path):
    from sca.training.configs import build_config

    cfg = build_config("grpo", tmp_path / "c", sets=["num_generations=2", "per_device_train_batch_size=2",
                                                     "scale_rewards=false", "include_num_input_tokens_seen=non_padding"])
    assert cfg.scale_rewards == "none"  # TRL's meaning of False; the text "false" would be no valid mode
    assert cfg.include_num_input_tokens_seen == "non_padding"  # str | bool: other text stays text
    cfg = build_config("grpo", tmp_path / "c", sets=["num_generations=2", "per_device_train_batch_size=2",
                                                     "include_num_input_tokens_seen=true", "scale_rewards=batch"])
    assert cfg.include_num_input_tokens_seen == "all" and cfg.scale_rewards == "batch"


def test_resume_without_a_checkpoint_is_a_one_line_error(tmp_path):
    line = last_line(grpo_cli(tmp_path, "--group-size", "2", "--set", "per_device_train_batch_size=2",
                              "--set", "resume_from_checkpoint=true"))
    assert "no checkpoint-N directory" in line
    line = last_line(grpo_cli(tmp_path, "--group-size", "2", "--set", "per_device_train_batch_size=2",
                              "--set", f"resume_from_checkpoint={tmp_path / 'nowhere'}"))
    assert "no such checkpoint directory" in line


def test_rollout_plays_one_episode_per_prompt_with_the_training_model_and_restores_train_mode(tokenizer):
    """TRL's rollout_func called as GRPOTrainer calls it: the prompts (each task repeated k times) with the
    trainer; the training model generates (one batch of all episodes) and is back in train mode after."""
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from sandbox.config import SandboxConfig
    from sca.inference import default_model_path
    from sca.training.configs import build_config
    from sca.training.grpo import EpisodeRollouts

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(str(default_model_path()))
    model.train()
    # json actions: the model's replies are tool calls or answers, never code run in the (subprocess) sandbox
    cfg = build_config("grpo", "/tmp/unused", sets=[
        "num_generations=2", "per_device_train_batch_size=4", "action_format=json", "episode_max_steps=1",
        "episode_max_new_tokens=8", "temperature=1.0", "seed=3"])
    trainer = types.SimpleNamespace(use_vllm=False, model=model, accelerator=Accelerator(cpu=True))
    prompts = [[{"role": "user", "content": t["id"]}] for t in TASKS for _ in range(2)]
    stats = Counter()
    with SandboxConfig(backend="subprocess", workers=1).build() as sb:
        roll = EpisodeRollouts(TASKS, tokenizer, cfg, sb, None, stats, [tokenizer.eos_token_id])
        assert roll._policy(trainer, len(prompts)).batch_size == 4  # the episodes asked for, in one batch
        model.train()
        out = roll(prompts, trainer)
    assert model.training  # dropout and the rest back on for the update
    assert len(out["prompt_ids"]) == len(out["completion_ids"]) == len(out["env_mask"]) == len(prompts)
    assert all(r in (0.0, 1.0) for r in out["sca_reward"])
    assert (stats["episodes"], stats["groups"]) == (4, 2)


# -- the simulated user: the same flags and defaults as sca rollout's ----------------------------------------
CANCEL = next(t for t in RETAIL_TASKS if t["id"] == "ret-valid-cancel")  # retail: the simulated user speaks first


def _customer(turn, conv):
    return "Please cancel my skateboard order." if turn == 0 else "Thanks. ###STOP###"


def _reply(turn, conv):
    return "THOUGHT: done END THOUGHT\nYour order is cancelled."


class StopTraining(Exception):
    """Raised by the stand-in for TRL's trainer once it has had one generation batch."""


def one_batch_trainer(got: dict) -> type:
    """A stand-in for TRL's GRPOTrainer at the edge: its train() asks the job's rollout_func for one generation
    batch, as GRPOTrainer does, puts what it returned into `got`, and stops (:class:`StopTraining`)."""
    import torch

    class Trainer:
        use_vllm = False

        def __init__(self, *, args, train_dataset, rollout_func, **kwargs):
            self.model = torch.nn.Linear(1, 1)
            self.accelerator = types.SimpleNamespace(unwrap_model=lambda m: m, process_index=0, num_processes=1)
            self.prompts = [row["prompt"] for row in train_dataset for _ in range(args.num_generations)]
            self.rollout_func = rollout_func

        def train(self, resume_from_checkpoint=None):
            got.update(self.rollout_func(self.prompts, self))
            raise StopTraining

    return Trainer


def _loading(monkeypatch):
    """Model loading at the edge: a model named by a ModelConfig is a scripted double, one per name (None:
    the bundled default); returns the doubles and the configs loaded."""
    from sca.inference.config import ModelConfig

    doubles, loaded = {}, []

    def load(self, **kwargs):
        loaded.append(self)
        return doubles.setdefault(self.model, ScriptedRoles(_reply, _customer))

    monkeypatch.setattr(ModelConfig, "load", load)
    return doubles, loaded


def _rollout_user(tmp_path, monkeypatch, flags):
    """`sca rollout` of one retail task with `flags`: the double that played the user, the sampling it got."""
    doubles, _ = _loading(monkeypatch)
    tasks = write(tmp_path / "rollout.tasks.jsonl", [CANCEL])
    r = CliRunner().invoke(app, ["rollout", str(tasks), "-o", str(tmp_path / "rollout.jsonl"), "--trials", "1",
                                 "--sandbox", "subprocess", *flags])
    assert r.exit_code == 0, r.output
    players = [(name, d) for name, d in doubles.items() if d.role_samplings["user"]]
    assert len(players) == 1
    return players[0][0], players[0][1].role_samplings["user"]


def _grpo_user(tmp_path, monkeypatch, flags):
    """`sca train --algo grpo` with `flags`, up to one generation batch of TRL's (a stand-in trainer at the edge
    asks the GRPO job's rollout_func for it, as GRPOTrainer does, then stops): who played the user ("policy", the
    model in training, or the name of the model loaded for it), the sampling it got, the configs loaded."""
    import trl

    from sca.training.grpo import EpisodeRollouts

    doubles, loaded = _loading(monkeypatch)
    policy = ScriptedRoles(_reply, _customer)
    monkeypatch.setattr(EpisodeRollouts, "_policy", lambda self, trainer, episodes: policy)

    monkeypatch.setattr(trl, "GRPOTrainer", one_batch_trainer({}))
    tasks = write(tmp_path / "grpo.tasks.jsonl", [CANCEL])
    r = CliRunner().invoke(app, ["train", str(tasks), "-o", str(tmp_path / "ckpt"), "--algo", "grpo", "--group-size", "2",
                                 "--sandbox", "subprocess", "--set", "per_device_train_batch_size=2",
                                 "--set", "episode_max_steps=2", *flags])
    assert isinstance(r.exception, StopTraining), r.output
    players = [("policy", policy)] + [(name, d) for name, d in doubles.items()]
    players = [(name, d) for name, d in players if d.role_samplings["user"]]
    assert len(players) == 1
    return players[0][0], players[0][1].role_samplings["user"], loaded


@pytest.mark.parametrize("flags, temperature, own_model", [
    ([], None, False),
    (["--user-temperature", "0.3"], 0.3, False),
    (["--user-model", "other-user", "--user-temperature", "0.2"], 0.2, True),
], ids=["no-flags", "temperature", "own-model"])
def test_grpo_user_samples_as_rollouts_user_from_the_same_flags(tmp_path, monkeypatch, flags, temperature, own_model):
    """GRPO plays the same episodes as `sca rollout`: its simulated user takes the --user-* flags, and where a
    flag is unset, the same default as rollout's user (the executor's defaults); the model in training plays
    the user unless --user-model names another, which is loaded with the flags' settings."""
    import dataclasses

    from sca.inference.config import executor_defaults

    def unseeded(samplings):  # each different one once; the engine sets each call's seed
        out = []
        for s in samplings:
            if dataclasses.replace(s, seed=None) not in out:
                out.append(dataclasses.replace(s, seed=None))
        return out

    rollout_player, rollout_sampling = _rollout_user(tmp_path, monkeypatch, flags)
    grpo_player, grpo_sampling, loaded = _grpo_user(tmp_path, monkeypatch, flags)
    want = executor_defaults().sampling()
    if temperature is not None:
        want = dataclasses.replace(want, temperature=temperature)
    assert unseeded(rollout_sampling) == unseeded(grpo_sampling) == [want]
    assert rollout_player == ("other-user" if own_model else None)  # None: the executor's (bundled) model
    assert grpo_player == ("other-user" if own_model else "policy")
    assert [(c.model, c.backend) for c in loaded] == ([("other-user", "hf")] if own_model else [])


def test_a_user_served_another_way_is_not_the_model_in_training():
    """user_settings: the model in training plays the user only when the user's config names that model
    served the same way; the same name on another backend or server is another copy, loaded on its own."""
    from sca.inference.config import ModelConfig, executor_defaults
    from sca.training.grpo import user_settings

    assert user_settings(None, "ckpt") == (executor_defaults(), True)
    user, is_policy = user_settings(ModelConfig(temperature=0.3), "ckpt")
    assert (user.model, user.temperature, is_policy) == ("ckpt", 0.3, True)
    for other in (ModelConfig(model="ckpt", backend="openai", base_urls=["http://gpu2:8000/v1"]),
                  ModelConfig(backend="vllm"), ModelConfig(model="other-user")):
        user, is_policy = user_settings(other, "ckpt")
        assert (user.model, user.backend, is_policy) == (other.model or "ckpt", other.backend, False), other


def test_user_flags_go_with_grpo(tmp_path):
    r = CliRunner().invoke(app, ["train", str(write(tmp_path / "t.jsonl", TASKS)), "-o", str(tmp_path / "c"),
                                 "--algo", "rft", "--user-temperature", "0.3"])
    assert r.exit_code == 2 and "--user-temperature go with --algo grpo" in r.output


DISTRIBUTED = """
import json, os, sys
from collections import Counter
import torch
from types import SimpleNamespace
from accelerate import Accelerator
from sca.training.grpo import EpisodeRollouts

acc = Accelerator(cpu=True)
rank = acc.process_index
roll = EpisodeRollouts.__new__(EpisodeRollouts)
roll.stats, roll.config, roll.calls = Counter(), SimpleNamespace(seed=3), 0
trainer = SimpleNamespace(accelerator=acc)
seeds = [roll._seed(trainer)]
roll.calls = 1
seeds.append(roll._seed(trainer))
# one task's group of 4 split over the two processes: uniform on rank 0 alone, not over both
keys = ["a", "a", "b"]
rewards = [[1.0, 1.0, 0.0], [1.0, 0.0, None]][rank]
roll._count_groups(keys, rewards, trainer, [False, False, rank == 1])
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump({"seeds": seeds, "stats": dict(roll.stats)}, f)
acc.wait_for_everyone()
torch.distributed.destroy_process_group()  # a clean exit (gloo's threads otherwise abort at shutdown)
"""


def test_processes_sample_with_their_own_seeds_and_groups_are_counted_over_all(tmp_path):
    """Two processes (torch.distributed, gloo on CPU), as accelerate launch runs them."""
    import os
    import socket
    import subprocess
    import sys

    script = tmp_path / "dist.py"
    script.write_text(DISTRIBUTED)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                        "127.0.0.1", "--master_port", str(port), str(script), str(tmp_path)], check=False, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    seeds = [s for rk in ranks for s in rk["seeds"]]
    assert len(set(seeds)) == 4  # per process and per call
    for rk in ranks:  # the whole generation batch, on every process
        assert {k: rk["stats"][k] for k in ("episodes", "groups", "groups_uniform", "rewarded", "infra_failures",
                                            "unrewarded")} == {"episodes": 6, "groups": 2, "groups_uniform": 1,
                                                               "rewarded": 3, "infra_failures": 1, "unrewarded": 1}


@pytest.mark.slow
def test_a_few_grpo_steps_on_live_episodes(tmp_path):
    backend_or_skip("bwrap")
    import torch

    torch.set_num_threads(2)
    out = tmp_path / "ckpt"
    r = CliRunner().invoke(app, ["train", str(write(tmp_path / "t.jsonl", TASKS)), "-o", str(out), "--algo", "grpo",
                                 "--group-size", "4", "--max-steps", "1", "--sandbox", "bwrap", "--workers", "1",
                                 "--set", "per_device_train_batch_size=4", "--set", "max_steps=2",
                                 "--set", "episode_max_new_tokens=12", "--set", "temperature=1.0",
                                 "--set", "learning_rate=1e-4", "--set", "seed=3",
                                 "--set", "save_strategy=steps", "--set", "save_steps=2"])
    assert r.exit_code == 0, r.output
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    for line in log:
        TRAIN_LOG_LINE.check(line)  # the shape docs/TRAJECTORY.md describes, GRPO's counts included
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
    # a resume with the same settings resumes from the step-2 checkpoint: nothing left to train, the log kept; one
    # that trains longer (another max_steps: another learning-rate schedule) is refused, naming it
    def resume(steps):
        return CliRunner().invoke(app, ["train", str(tmp_path / "t.jsonl"), "-o", str(out), "--algo", "grpo",
                                        "--group-size", "4", "--max-steps", "1", "--sandbox", "bwrap", "--workers", "1",
                                        "--set", "per_device_train_batch_size=4", "--set", f"max_steps={steps}",
                                        "--set", "episode_max_new_tokens=12", "--set", "temperature=1.0",
                                        "--set", "learning_rate=1e-4", "--set", "seed=3",
                                        "--set", "resume_from_checkpoint=true"])

    r = resume(3)
    assert r.exit_code == 2 and "made with max_steps=2; this run: max_steps=3" in r.output, r.output
    r = resume(2)
    assert r.exit_code == 0, r.output
    assert [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]


# -- the judge reward: the same flags as sca rollout's -----------------------------------------------------------
#: PAE's task: an instruction only (retail, the simulated user speaks first)
PAE_TASK = {"id": "pae-cancel", "env": "retail", "format": "instruction-only", "instruction": CANCEL["instruction"]}


def test_grpo_takes_the_judge_flags_into_its_config(tmp_path):
    from sca.inference.config import ModelConfig, executor_defaults
    from sca.training.configs import build_config
    from sca.training.grpo import judge_settings

    plain = build_config("grpo", tmp_path / "c", sets=["num_generations=2", "per_device_train_batch_size=2"])
    assert plain.reward == "evaluate" and judge_settings(plain) == (None, False)
    own = build_config("grpo", tmp_path / "c", options={
        "reward": "judge", "judge_model": "big", "judge_backend": "openai", "judge_base_urls": ["http://gpu2:8000/v1"],
        "judge_temperature": 0.0, "num_generations": 2}, sets=["per_device_train_batch_size=2"])
    judge, is_policy = judge_settings(own)
    assert judge == ModelConfig(model="big", backend="openai", base_urls=["http://gpu2:8000/v1"], temperature=0.0)
    assert not is_policy
    policy = build_config("grpo", tmp_path / "c", sets=["reward=judge", "num_generations=2",
                                                        "per_device_train_batch_size=2"])
    assert judge_settings(policy) == (executor_defaults(), True)  # no judge flag: the model in training judges
    for sets, message in ((["reward=vibes"], "reward must be one of evaluate, judge"),
                          (["judge_model=big"], "go with reward=judge"),
                          (["reward=judge", "judge_base_urls=http://x"], "base URLs go with the openai backend")):
        with pytest.raises(InputError, match=message):
            build_config("grpo", tmp_path / "c", sets=sets + ["num_generations=2", "per_device_train_batch_size=2"])


def test_judge_flags_go_with_grpo_and_tasks_without_code_need_the_judge(tmp_path):
    r = CliRunner().invoke(app, ["train", str(write(tmp_path / "t.jsonl", TASKS)), "-o", str(tmp_path / "c"),
                                 "--algo", "rft", "--reward", "judge"])
    assert r.exit_code == 2 and "--judge-temperature go with --algo grpo" in r.output
    pae = write(tmp_path / "pae.jsonl", [PAE_TASK])
    r = CliRunner().invoke(app, ["train", str(pae), "-o", str(tmp_path / "c"), "--algo", "grpo", "--sandbox",
                                 "subprocess", "--group-size", "2", "--set", "per_device_train_batch_size=2"])
    assert last_line(r) == (f"error: {pae}: task pae-cancel has no evaluation_function: train on tasks without one "
                            "with --reward judge")
    r = CliRunner().invoke(app, ["train", str(pae), "-o", str(tmp_path / "c"), "--algo", "grpo", "--sandbox",
                                 "subprocess", "--group-size", "2", "--set", "per_device_train_batch_size=2",
                                 "--judge-model", "big"])
    assert "go with reward=judge" in last_line(r)


def _judging(turn, conv):
    """A judge that reads the episode it is shown: SUCCESS when the customer's order was cancelled."""
    return "VERDICT: SUCCESS" if "[FINAL ANSWER] Your order is cancelled." in conv[1]["content"] else "VERDICT: FAILURE"


@pytest.mark.parametrize("flags, judge, done", [([], "policy", True), (["--judge-model", "judge-m"], "judge-m", True),
                                               (["--judge-model", "judge-m"], "judge-m", False)],
                         ids=["policy-judges", "own-judge", "not-done"])
def test_grpo_rewards_an_instruction_only_task_by_the_judges_verdict(tmp_path, monkeypatch, flags, judge, done):
    """`sca train --algo grpo --reward judge` up to one generation batch (a stand-in trainer at the edge, as in
    _grpo_user): the episodes are judged (all of the batch in one generate call), by the model in training
    unless --judge-model names another, and the verdicts are the rewards TRL gets."""
    import trl

    from sca.agent.judge import SYSTEM_PROMPT
    from sca.inference.config import ModelConfig
    from sca.training.grpo import EpisodeRollouts

    doubles = {}

    class Roles(ScriptedRoles):  # the executor and user as in _grpo_user, and a judge that reads its prompt
        judged = ()

        def generate(self, conversations, sampling, tools=None):
            if conversations and conversations[0][0]["content"] == SYSTEM_PROMPT:
                self.judged = [*self.judged, len(conversations)]  # the episodes of each judge call
            return super().generate(conversations, sampling, tools)

        def _route(self, turn, conv):
            return _judging(turn, conv) if conv[0]["content"] == SYSTEM_PROMPT else super()._route(turn, conv)

    monkeypatch.setattr(ModelConfig, "load", lambda self, **kw: doubles.setdefault(self.model, Roles(_reply, _customer)))
    policy = Roles(_reply if done else (lambda turn, conv: "THOUGHT: no END THOUGHT\nI cannot do that."), _customer)
    monkeypatch.setattr(EpisodeRollouts, "_policy", lambda self, trainer, episodes: policy)
    got: dict = {}

    monkeypatch.setattr(trl, "GRPOTrainer", one_batch_trainer(got))
    tasks = write(tmp_path / "pae.jsonl", [PAE_TASK])
    r = CliRunner().invoke(app, ["train", str(tasks), "-o", str(tmp_path / "ckpt"), "--algo", "grpo", "--group-size", "2",
                                 "--sandbox", "subprocess", "--set", "per_device_train_batch_size=2",
                                 "--set", "episode_max_steps=2", "--reward", "judge", *flags])
    assert isinstance(r.exception, StopTraining), r.output
    judges = {name: d.judged for name, d in [("policy", policy), *doubles.items()] if d.judged}
    assert judges == {judge: [2]}  # both episodes of the group, in one call
    assert got["sca_reward"] == ([1.0, 1.0] if done else [0.0, 0.0])
