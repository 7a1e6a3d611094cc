"""The options ``sca train`` adds to TRL's configs, with their defaults: each declared once, here.

They are dataclass mixins of the config classes of :mod:`sca.training.configs` (``SFTTrainConfig``
is TRL's ``SFTConfig`` plus :class:`ScaOptions`, and so on), kept apart from them because this
module imports no TRL: the command line shows their defaults in ``sca train --help`` without the
seconds TRL takes to import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sca.agent.judge import REWARD_HELP

#: what to do with the records' assistant_token_ids (``token_ids``): each policy, and what it does
TOKEN_ID_POLICIES: dict[str, str] = {
    "check": "generated token ids must match re-tokenizing",
    "use": "train on them",
    "ignore": "",
}


@dataclass
class ScaOptions:
    """Ours, in every trainer's config."""

    model_name_or_path: str | None = field(default=None, metadata={"help": (
        "Base model: a Hugging Face name (from your HF cache) or a local checkpoint; None: the bundled default "
        "model.")})
    token_ids: str = field(default="check", metadata={"help": (
        "What to do with the records' assistant_token_ids: check (re-tokenizing must reproduce them; a mismatch "
        "stops the run), use (train on them), ignore.")})
    global_batch_size: int | None = field(default=None, metadata={"help": (
        "Examples per optimizer step over all processes; sets gradient_accumulation_steps (and lowers "
        "per_device_train_batch_size if needed). None: per_device_train_batch_size x accumulation x processes.")})
    lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter (PEFT) instead of every weight."})
    merge_lora: bool = field(default=False, metadata={"help": (
        "Merge the LoRA adapter into the base model when done (implies lora).")})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default="all-linear", metadata={"help": (
        "Modules that get adapters: all-linear or a comma-separated list.")})


@dataclass
class PairOptions:
    """Ours, in DPO's config."""

    max_pairs_per_task: int | None = field(default=None, metadata={"help": (
        "At most this many DPO pairs per task (None: max(chosen, rejected)).")})


@dataclass
class EpisodeOptions:
    """Ours, in GRPO's config: the episodes played during training."""

    # The names are TRL's (num_generations) or carry `episode_` where TRL has the bare one: TRL's max_steps is the
    # number of training steps, so the episode's step budget (sca rollout's and sca eval's --max-steps, sca train's
    # --max-steps too) is episode_max_steps here. The flags use the one name every command shares.
    #: TRL's own default for GRPOConfig.num_generations, stated here so that --group-size can show it without TRL
    num_generations: int | None = field(default=8, metadata={"help": (
        "Episodes per task and step (the flag --group-size): a GRPO group, whose rewards are compared.")})
    episode_max_steps: int = field(default=15, metadata={"help": (
        "Executor replies per episode, the step budget (the flag --max-steps; the paper's cap is 15). Not TRL's "
        "max_steps, the number of training steps.")})
    action_format: str = field(default="code", metadata={"help": (
        "code (THOUGHT/ACTION blocks) | json (native function calling).")})
    episode_max_new_tokens: int = field(default=512, metadata={"help": "Tokens per executor reply at most."})
    skip_uniform_from: str | None = field(default=None, metadata={"help": (
        "A rollout file (sca rollout): leave out the tasks it solved in none or all of their trials.")})
    reward: str = field(default="evaluate", metadata={"help": REWARD_HELP})
    # the judge of reward=judge, as sca rollout's --judge-* flags: None takes the simulated user's rule (the model
    # in training, sampling with the executor's defaults) for every setting unset (sca.training.grpo.judge_settings)
    judge_model: str | None = field(default=None, metadata={"help": (
        "reward=judge: the judge's model [default: the model in training].")})
    judge_backend: str | None = field(default=None, metadata={"help": "reward=judge: the judge's backend [default: hf]."})
    judge_base_urls: list[str] | None = field(default=None, metadata={"help": (
        "reward=judge: the judge's OpenAI-compatible server(s), with judge_backend=openai.")})
    judge_temperature: float | None = field(default=None, metadata={"help": (
        "reward=judge: the judge's sampling temperature [default: the executor's default].")})
