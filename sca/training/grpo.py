"""GRPO on CaT tasks (``grpo``): TRL's GRPOTrainer, its rollouts produced by our episode engine.

``sca train TASKS --algo grpo --group-size K``: each task of the input is a GRPO prompt; for every prompt
TRL asks for K completions, and each completion is one whole multi-turn episode of **our**
executor (the same engine, executor, simulated user, sandbox and ``evaluate`` reward as
``sca rollout``), played by the model being trained. The simulated user (retail, airline) is the
model in training as well unless ``--user-model``, ``--user-backend`` or ``--user-base-url`` name
another, and it samples as rollout's and eval's user does: from the same ``--user-*`` flags, with the
same defaults (:func:`user_settings`). TRL's ``rollout_func`` hook gets the prompts; we run the
episodes (:func:`sca.agent.run.run_executor`, as rollout and eval do: one task per prompt, whose trial is
the prompt's index in the batch, played by the model in training with GRPO's own sampling), then hand
TRL, per episode's record:

* ``prompt_ids``: the conversation's tokens up to the executor's first reply (system prompt,
  first user message, the generation prompt), rendered by the chat template;
* ``completion_ids``: everything after, with ``env_mask`` 1 exactly on the tokens the model
  generated (the assistant turns, by the same turn-by-turn encoder and checks as ``sca train
  --algo rft``, trained on the token ids the model produced) and 0 on observations, the simulated
  user's messages and the template's own tokens, so the policy gradient never touches them;
* the reward: 1 if the task's ``evaluate`` returned True on the final state, else 0; with
  ``reward=judge`` (``--reward judge``), 1 if the judge (:mod:`sca.agent.judge`) gave the verdict
  SUCCESS, else 0. The judge is the model in training unless ``--judge-model``, ``--judge-backend``
  or ``--judge-base-url`` name another (:func:`judge_settings`, the simulated user's rule); tasks
  without an ``evaluation_function`` (instruction-only) need it. An episode
  that cannot be trained on (an infrastructure failure: sandbox or inference error, so no reward;
  or nothing the model generated could be encoded) gets reward None with an all-zero mask: TRL
  turns None into NaN, leaves it out of its group's mean and std, and gives it advantage 0, so it
  neither trains nor shifts the baseline of the other episodes (a 0 would teach that a possibly
  good answer was bad). Such episodes are counted (``infra_failures``).

TRL does the rest (group-normalised advantages, clipping, KL to the reference, its loss).
Groups whose K rewards are all equal teach nothing: they are counted per generation batch over all
processes (``groups_uniform`` in the training log), and ``skip_uniform_from=ROLLOUT.jsonl`` leaves
out, before training, the tasks that an earlier rollout solved in none or all of its trials.

Generation runs on the trainer's own model through the ``hf`` backend (weights are current by
construction; the model is put back in train mode afterwards), one batch of the episodes TRL asked
for, each process sampling with its own seed. That model must be whole on each process: DeepSpeed
ZeRO-3 and FSDP shard it, so they need ``use_vllm``. With ``use_vllm`` (``colocate`` mode only) TRL
keeps its vLLM engine's weights in sync before each rollout; the engine then generates through that
vLLM engine (``sca.inference.vllm``). Our episodes hand TRL no sampling log-probabilities, so TRL's
vLLM importance-sampling correction is off (turning it on is refused), and vLLM sleep mode, which
TRL wakes only around its own generate calls, is refused.

**How an episode knows its task.** TRL 1.16 hands ``rollout_func`` only the ``prompt`` column of
its batch (``GRPOTrainer._generate`` calls ``rollout_func(prompts, trainer)`` with
``prompts = [row["prompt"] for row in inputs]``; the other dataset columns reach the reward
functions, never the rollout). So the task id travels as the prompt: each dataset row is
``{"prompt": [{"role": "user", "content": TASK_ID}]}`` (a conversational prompt, as TRL's
logging and completion decoding expect), and :meth:`EpisodeRollouts._key` reads the id back.
That message is never shown to a model: the episode renders its own conversation from the task.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from sca.inference.config import ModelConfig, executor_defaults
from sca.records.io import InputError, StreamedInput
from sca.training.algorithms import Algorithm
from sca.training.configs import env_true
from sca.training.encoding import ChatEncoder, verify_mask
from sca.training.job import Job
from sca.training.selection import load_tasks


def judge_settings(config: Any) -> tuple[ModelConfig | None, bool]:
    """The judge's ModelConfig (None: the reward is no judge's), and whether the model in training plays it.

    From GRPO's ``judge_*`` options (the ``--judge-*`` flags), by the rule of the simulated user
    (:func:`user_settings`): with none set, the model in training judges, sampling with the executor's default
    settings; each one unset takes the executor's default, and the model named is the one in training unless
    ``judge_model`` names another."""
    if getattr(config, "reward", "evaluate") != "judge":
        return None, False
    given = {"model": config.judge_model, "backend": config.judge_backend, "base_urls": config.judge_base_urls,
             "temperature": config.judge_temperature}
    if all(v is None for v in given.values()):
        return user_settings(None, None)
    return user_settings(executor_defaults().with_(**given), getattr(config, "model_name_or_path", None))


def user_settings(user_config: ModelConfig | None, trained_model: str | None) -> tuple[ModelConfig, bool]:
    """The simulated user's ModelConfig, and whether the model in training plays it.

    As in ``sca rollout``: with no ``--user-*`` flag (`user_config` None) the user is the executor's model
    (here the one in training) sampling with the executor's default settings (:func:`executor_defaults`), so
    it samples exactly as rollout's and eval's user does by default. A user config without a model means
    the model in training; one that names another model, backend or server is loaded on its own."""
    if user_config is None:
        return executor_defaults(), True
    user = user_config.with_(model=user_config.model or trained_model)
    return user, user.same_model(ModelConfig(model=trained_model))


class EpisodeRollouts:
    """TRL's ``rollout_func``: our engine plays each prompt's episode with the model in training."""

    def __init__(self, tasks: list[dict[str, Any]], tokenizer: Any, config: Any, sandbox: Any,
                 user_config: ModelConfig | None, stats: Counter, eos_ids: list[int]):
        from sca.agent.executor import ExecutorConfig

        self.tasks = {t["id"]: t for t in tasks}
        self.tokenizer = tokenizer
        self.config = config
        self.sandbox = sandbox
        self.user_config, self.user_is_policy = user_settings(user_config, getattr(config, "model_name_or_path", None))
        self.judge_config, self.judge_is_policy = judge_settings(config)
        self.stats = stats
        self.eos_ids = eos_ids
        self.episode = ExecutorConfig(max_steps=config.episode_max_steps, action_format=config.action_format)
        self.calls = 0
        self._user_model = None
        self._judge_model = None

    def _policy(self, trainer: Any, episodes: int) -> Any:
        """The model in training as a ChatModel (vLLM when TRL generates with vLLM, else transformers, in one
        batch of the `episodes` TRL asked for)."""
        from sca.inference.hf import HFChatModel

        if getattr(trainer, "use_vllm", False) and getattr(getattr(trainer, "vllm_generation", None), "llm", None):
            from sca.inference.vllm import VLLMChatModel

            return VLLMChatModel.from_llm(trainer.vllm_generation.llm, name="policy")
        model = trainer.accelerator.unwrap_model(trainer.model)
        return HFChatModel.from_objects(model, self.tokenizer, name="policy", batch_size=max(1, episodes))

    def _seed(self, trainer: Any) -> int:
        """The sampling seed of this call on this process: from the base seed, the process index and the call
        number, so that the processes of a distributed run play different episodes of the same tasks."""
        rank = int(getattr(trainer.accelerator, "process_index", 0) or 0)
        digest = hashlib.sha256(f"{self.config.seed}:{rank}:{self.calls}".encode()).digest()
        return int.from_bytes(digest[:4], "big") % (2**31 - 2**20)  # room for run_episodes' seed + k

    def _sampling(self) -> Any:
        """How the model in training samples its replies: GRPO's own temperature, top_p and reply length."""
        from sca.agent.executor import executor_stop
        from sca.inference.base import SamplingParams

        temperature = max(float(self.config.temperature), 1e-5) if self.config.temperature else 0
        return SamplingParams(temperature=temperature, top_p=float(getattr(self.config, "top_p", 1.0) or 1.0),
                              max_new_tokens=self.config.episode_max_new_tokens, stop=executor_stop(self.episode))

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        import torch

        from envs import env_spec
        from sca.agent.executor import evaluate_scorer
        from sca.agent.judge import JudgeScorer
        from sca.agent.run import ExecutorRoles, ExecutorTask, run_executor

        # one episode per prompt: TRL's sampler already repeats each task num_generations times; the prompt's
        # index is the episode's trial, so each of a group's episodes samples with seeds of its own
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        was_training = bool(getattr(unwrapped, "training", False))  # before the policy wrapper sets eval mode
        policy = self._policy(trainer, len(prompts))
        if not self.user_is_policy and self._user_model is None:
            self._user_model = self.user_config.load()
        judge = None
        if self.judge_config is not None:
            if not self.judge_is_policy and self._judge_model is None:
                self._judge_model = self.judge_config.load()
            judge = self._judge_model or policy
        roles = ExecutorRoles(policy, self._sampling(), self._user_model or policy, self.user_config.sampling(),
                              judge, self.judge_config.sampling() if judge is not None else None)
        keys = [self._key(p) for p in prompts]
        tasks = [ExecutorTask(id=key, instruction=self.tasks[key]["instruction"], env=env_spec(self.tasks[key]["env"]),
                              scorer=JudgeScorer() if judge is not None else
                              evaluate_scorer(self.tasks[key]["evaluation_function"]), trials=[i])
                 for i, key in enumerate(keys)]
        records: list[dict[str, Any]] = [{}] * len(tasks)

        def keep(task: ExecutorTask, record: dict[str, Any]) -> None:
            records[record["trial"]] = record  # as they finish; TRL wants them in the order of its prompts

        t0 = time.monotonic()
        try:
            unwrapped.eval()
            with torch.no_grad():
                run_executor(tasks, roles, self.sandbox, self.episode, concurrency=len(tasks),
                             seed=self._seed(trainer), on_record=keep)
        finally:
            if was_training:
                unwrapped.train()  # dropout and the rest of training mode back on for the update
        self.calls += 1
        out = self._to_trl(records)
        self._count_groups(keys, out["sca_reward"], trainer, [r["infra_error"] is not None for r in records])
        self.stats["rollout_s"] += time.monotonic() - t0
        return out

    @staticmethod
    def _key(prompt: Any) -> str:
        """The task id a prompt carries (see the module docstring)."""
        if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
            return str(prompt[-1].get("content", ""))
        return str(prompt)

    def _to_trl(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Each finished episode's record (docs/TRAJECTORY.md) as TRL's prompt ids, completion ids, env mask and
        reward (None: not trainable)."""
        encoder = ChatEncoder(self.tokenizer, "use", self.eos_ids)
        prompt_ids, completion_ids, masks = [], [], []
        rewards: list[float | None] = []
        for record in records:
            reward = record["reward"]  # None for an infrastructure failure
            try:
                enc = encoder.encode(record, where=f"episode {record['id']}")
                if any(enc.mask):
                    verify_mask(self.tokenizer, enc, where=f"episode {record['id']}")
            except InputError as e:
                self.stats["episodes_not_encodable"] += 1
                self.stats["last_encoding_error"] = str(e)[:300]
                enc = None
            if enc is None or not any(enc.mask):
                # nothing the model generated can be trained: the prompt, one token, masked out, and no reward
                # (None: TRL leaves it out of the group's baseline; a 0 would count it as a failed answer)
                text = self.tokenizer.apply_chat_template(record["messages"][:2], tokenize=False, add_generation_prompt=True)
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                prompt_ids.append(ids)
                completion_ids.append([encoder_pad(self.tokenizer, self.eos_ids)])
                masks.append([0])
                rewards.append(None)
                self.stats["episodes_without_trained_tokens"] += 1
                continue
            first = enc.mask.index(1)
            prompt_ids.append(enc.input_ids[:first])
            completion_ids.append(enc.input_ids[first:])
            masks.append(enc.mask[first:])
            if reward is None:  # an infrastructure failure: no reward, nothing trained
                masks[-1] = [0] * len(masks[-1])
                rewards.append(None)
            else:
                rewards.append(float(reward))
            self.stats[f"termination:{record['termination']}"] += 1
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None, "env_mask": masks,
                "sca_reward": rewards}

    def _count_groups(self, keys: list[str], rewards: list[float | None], trainer: Any = None,
                      infra: list[bool] | None = None) -> None:
        """Count this generation batch over all processes: its episodes, rewarded ones, infrastructure failures,
        episodes without a reward (None), groups (a task's episodes) and uniform groups (all their rewards
        equal: they teach nothing). A group's episodes can be spread over processes, so the (task, reward,
        infrastructure failure) of every episode of every process are gathered."""
        pairs = list(zip(keys, rewards, infra or [False] * len(keys)))
        accelerator = getattr(trainer, "accelerator", None)
        if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
            from accelerate.utils import gather_object

            pairs = gather_object(pairs)
        groups: dict[str, list[float]] = {}
        for key, reward, failed in pairs:
            self.stats["episodes"] += 1
            self.stats["infra_failures"] += int(bool(failed))
            if reward is None or math.isnan(reward):  # None / NaN: not trainable, out of the group's baseline
                self.stats["unrewarded"] += 1
                groups.setdefault(key, [])
                continue
            self.stats["rewarded"] += int(reward == 1)
            groups.setdefault(key, []).append(reward)
        for values in groups.values():
            self.stats["groups"] += 1
            if len(set(values)) <= 1:
                self.stats["groups_uniform"] += 1


def encoder_pad(tokenizer: Any, eos_ids: list[int]) -> int:
    """A token for an episode's placeholder completion (masked out): the pad token, else an end-of-turn one."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if eos_ids:
        return eos_ids[0]
    raise InputError("the tokenizer has no pad, eos or end-of-turn token")


def episode_reward(prompts: Any = None, completions: Any = None, sca_reward: list[float | None] | None = None,
                   **kwargs: Any) -> list[float | None]:
    """The reward function TRL calls: the rewards our episodes earned (forwarded by rollout_func); None for
    an episode that cannot be trained on (TRL leaves it out of its group)."""
    return list(sca_reward or [])


def check_grpo_config(config: Any) -> None:
    """Refuse, with one line, the GRPO settings our episodes cannot work with (before any model is loaded)."""
    if config.use_vllm:
        if config.vllm_mode != "colocate":
            raise InputError(f"vllm_mode={config.vllm_mode}: our episodes generate through a vLLM engine in this "
                             "process; use vllm_mode=colocate (or use_vllm=false: the trainer's own weights through "
                             "transformers)")
        if config.vllm_importance_sampling_correction:
            raise InputError("vllm_importance_sampling_correction=true: it needs the sampler's per-token "
                             "log-probabilities, which our multi-turn episodes do not hand TRL; leave it false")
        if config.vllm_enable_sleep_mode:
            raise InputError("vllm_enable_sleep_mode=true: TRL wakes its vLLM engine only around its own generate "
                             "calls, and our episodes generate through that engine; leave it false")
        return
    plugin = getattr(config, "deepspeed_plugin", None)
    stage = getattr(plugin, "zero_stage", None) if plugin is not None else None
    if stage is None and env_true("ACCELERATE_USE_DEEPSPEED"):
        try:
            stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "") or 0)
        except ValueError:
            stage = None
    sharding = "DeepSpeed ZeRO-3" if stage == 3 else None
    if getattr(config, "fsdp", None) or getattr(config, "fsdp_plugin_args", None) or env_true("ACCELERATE_USE_FSDP"):
        sharding = "FSDP"
    if sharding:
        raise InputError(f"{sharding} shards the model over the processes, and without use_vllm our episodes "
                         "generate with the training model on each process on its own; use --set use_vllm=true "
                         "(vllm_mode=colocate), or ZeRO-2 / plain data parallel")


class GRPOJob(Job):
    """``grpo``: the tasks of a CaT file, each a GRPO prompt whose completions are live episodes (see the module
    docstring), through TRL's GRPOTrainer."""

    def __init__(self, algorithm: Algorithm, source: StreamedInput, *, sandbox: Any, user_config: ModelConfig | None = None):
        super().__init__(algorithm, source)
        self.sandbox = sandbox  # a built Sandbox, entered while training: episodes run their actions and rewards there
        self.user_config = user_config  # the simulated user's (None: the model in training, as in sca rollout)
        self.stats: Counter = Counter()  # the episodes and groups of the run, for the log and the summary
        self.tasks: list[dict[str, Any]] = []
        self.notes: dict[str, int] = {}
        self.eos_ids: list[int] = []
        self._running: Any = None  # the entered sandbox

    def check(self, config: Any) -> None:
        from envs import make_env

        self.tasks, self.notes = load_tasks(self.source, config.skip_uniform_from)
        names = sorted({t["env"] for t in self.tasks})
        for name in names:
            make_env(name)
        if config.action_format == "json" and len(names) > 1:  # the executor is offered one environment's tools
            raise InputError(f"{self.source.name}: action_format=json needs tasks of one environment, not "
                             f"{', '.join(names)}")
        if getattr(config, "reward", "evaluate") == "evaluate":
            unscored = next((t["id"] for t in self.tasks if not t.get("evaluation_function")), None)
            if unscored is not None:
                raise InputError(f"{self.source.name}: task {unscored} has no evaluation_function: train on tasks "
                                 "without one with --reward judge")
        check_grpo_config(config)
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    def prepare(self, tokenizer: Any, eos_ids: list[int], config: Any) -> None:
        self.eos_ids = eos_ids  # episodes are encoded as they finish, during training

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        with self.sandbox as sb:
            self._running = sb
            yield

    def log_extra(self) -> Callable[[], dict[str, Any]]:
        return lambda: {k: self.stats[k] for k in ("groups", "groups_uniform", "episodes", "rewarded",
                                                   "infra_failures", "unrewarded")}

    def trainer(self, config: Any, model: str, tokenizer: Any, callbacks: list, peft_config: Any) -> Any:
        from datasets import Dataset
        from trl import GRPOTrainer

        # the task id as the prompt: TRL hands rollout_func nothing else of a row (see the module docstring)
        dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": t["id"]}]} for t in self.tasks])
        rollouts = EpisodeRollouts(self.tasks, tokenizer, config, self._running, self.user_config, self.stats,
                                   self.eos_ids)
        return GRPOTrainer(model=model, reward_funcs=[episode_reward], args=config, train_dataset=dataset,
                           processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks,
                           rollout_func=rollouts)

    def counts(self) -> dict[str, Any]:
        notes = dict(self.notes)
        notes.update({k: v for k, v in self.stats.items() if isinstance(v, int)})
        return {"records": len(self.tasks), "examples": self.stats["episodes"], "notes": notes}
