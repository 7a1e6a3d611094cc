"""Every setting of an agent's episodes in one place, with its default: the caps that every stage
running agents shares (:data:`MAX_STEPS`, :data:`CONCURRENCY`, :data:`OBSERVATION_LIMIT`), how the
executor plays (:class:`ExecutorConfig`) and how the challenger's episodes run (:class:`ChallengerConfig`).

The engine, the executor and the challenger read them from here, and so does the command line: a
field's ``metadata`` holds its flag's help and bounds (``sca_cli.common.flag``). Kept apart from the
roles, standard library only (with :mod:`sca.inference.config`), because ``sca --help`` imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sca.inference.config import ModelConfig, challenger_defaults
from sca.task_formats import TASK_FORMATS  # the formats a challenger writes (sca.task_formats: with their parts)

#: episodes live at once, by default, in every stage that runs agents (one batched generate per role per step)
CONCURRENCY = 8
#: replies per episode, by default, of the challenger and of the executor alike: the paper's cap
MAX_STEPS = 15
#: characters of an observation an agent is shown, by default (the challenger's and the executor's)
OBSERVATION_LIMIT = 4000
#: the executor's action formats: THOUGHT/ACTION blocks (the paper's) or native function calling
ACTION_FORMATS = ("code", "json")


@dataclass
class ExecutorConfig:
    """How the executor runs (the model settings are the stage's ModelConfigs)."""

    max_steps: int = field(default=MAX_STEPS, metadata={
        "help": "Executor replies per episode (the paper's cap is 15).", "min": 1})
    action_format: str = field(default="code", metadata={
        "help": "code (THOUGHT/ACTION blocks, as in the paper) | json (native function calling)."})
    observation_limit: int = OBSERVATION_LIMIT  # characters of an observation shown to the executor

    def __post_init__(self) -> None:
        if self.action_format not in ACTION_FORMATS:
            raise ValueError(f"action_format must be one of {', '.join(ACTION_FORMATS)}, not {self.action_format!r}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, not {self.max_steps}")


@dataclass
class ChallengerConfig:
    """How challenger episodes run (the options of `sca propose` but its checks)."""

    env: str = field(default="retail", metadata={"help": "Environment to write tasks for (see `sca envs`)."})
    n: int = field(default=800, metadata={"help": "Valid tasks wanted.", "min": 1})
    max_episodes: int | None = field(default=None, metadata={  # None: 20 * n (episode_budget)
        "help": "Give up after this many episodes [default: 20 x n].", "min": 1})
    max_steps: int = field(default=MAX_STEPS, metadata={
        "help": "Replies per episode (the paper's cap is 15).", "min": 1})
    concurrency: int = field(default=CONCURRENCY, metadata={
        "help": "Episodes stepping together (one batched generation per step).", "min": 1})
    seed: int = field(default=0, metadata={"help": "Seed of sampling and of the users sampled for tasks."})
    model: ModelConfig = field(default_factory=challenger_defaults)
    observation_limit: int = OBSERVATION_LIMIT  # characters of an observation shown to the challenger
    task_format: str = field(default=TASK_FORMATS[0], metadata={"help": (
        "cat (instruction, evaluation function, solution, failure cases: the paper's SCA) | eval-only "
        "(instruction and evaluation function, unfiltered: 'SCA no filtering') | instruction-only (PAE).")})

    def __post_init__(self) -> None:
        if self.task_format not in TASK_FORMATS:
            raise ValueError(f"task_format must be one of {', '.join(TASK_FORMATS)}, not {self.task_format!r}")

    @property
    def episode_budget(self) -> int:
        return self.max_episodes if self.max_episodes is not None else 20 * self.n
