"""The options of every stage, with their defaults: :class:`RolloutConfig`, :class:`EvalConfig`,
:class:`ProposeConfig`, :class:`ReportConfig` (``sca validate``'s is :class:`sca.cat.ValidateConfig`,
``sca train``'s are TRL's configs with :mod:`sca.training.options`).

Each stage takes its config from here, and the command line derives its flags from them: a field's
default is the flag's default, and its ``metadata`` holds the flag's help and bounds
(``sca_cli.common.flag``), as TRL's scripts derive their parsers from dataclass fields. Kept apart
from the stages, and light (the settings modules below it, and :mod:`sca.cat` for ValidateConfig),
because ``sca --help`` imports it: importing the stages would cost it tens of milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sandbox.config import SandboxConfig
from sca.agent.config import CONCURRENCY, ChallengerConfig, ExecutorConfig
from sca.agent.judge import REWARD_HELP, REWARDS
from sca.cat import ValidateConfig
from sca.inference.config import ModelConfig, executor_defaults

#: bootstrap resamples of every confidence interval (``sca eval``'s summary, ``sca report``)
N_BOOT = 2000

# The executor's stages (rollout and eval) share these flags' words.
_CONCURRENCY = {"help": "Episodes live at once (one batched generation per role per step).", "min": 1}
_RETRY_FAILED = {"help": "Rerun the trials recorded as infrastructure failures."}
# a layout, not a result: not in the stages' RESULT_SETTINGS, so a resume may change it
_KEEP_SYSTEM_PROMPT = {"help": ("Keep the system prompt's text in every record [default: once, in the sidecar "
                                "OUTPUT.meta.json, each record naming it by hash; readers of sca put it back].")}


@dataclass
class RolloutConfig:
    """Options of `sca rollout` (the CLI flags and their defaults)."""

    # one name per concept across the commands: `trials` are the episodes per task (rollout, eval), `pass_k` the
    # k of Pass@k (eval, report), `group_size` GRPO's episodes per task (train), `max_steps` the step budget
    trials: int = field(default=16, metadata={  # the paper: 12k trajectories for 800 tasks, about 15 each
        "help": "Trials per task.", "min": 1})
    task_ids: list[str] | None = field(default=None, metadata={"help": (
        "Only these tasks (their ids in the input; comma-separated or repeated) [default: every task].")})
    concurrency: int = field(default=CONCURRENCY, metadata=_CONCURRENCY)
    seed: int = field(default=0, metadata={"help": "Seed of sampling."})
    executor: ModelConfig = field(default_factory=executor_defaults)
    user: ModelConfig | None = None  # the simulated user; None: the executor's model and settings
    episode: ExecutorConfig = field(default_factory=ExecutorConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    retry_failed: bool = field(default=False, metadata=_RETRY_FAILED)
    keep_system_prompt: bool = field(default=False, metadata=_KEEP_SYSTEM_PROMPT)
    reward: str = field(default="evaluate", metadata={"help": REWARD_HELP})
    judge: ModelConfig | None = None  # the judge of --reward judge; None: the executor's model and settings

    def __post_init__(self) -> None:
        if self.trials < 1 or self.concurrency < 1:
            raise ValueError("trials and concurrency must be >= 1")
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {', '.join(REWARDS)}, not {self.reward!r}")

    def judge_config(self) -> ModelConfig | None:
        """The judge's model and settings for --reward judge (the executor's unless `judge` says), else None."""
        return (self.judge or self.executor) if self.reward == "judge" else None


@dataclass
class EvalConfig:
    """Options of `sca eval` (the CLI flags and their defaults)."""

    envs: list[str] = field(default_factory=lambda: ["retail"], metadata={"help": (
        "Benchmark environment(s): calculation, web_browsing, retail, airline, or all; repeat for several.")})
    split: str = field(default="test", metadata={"help": "Benchmark split (tau2: test, train; ours: test)."})
    trials: int = field(default=4, metadata={  # the paper: Pass@1 averaged over 4 trials, Pass@4 from the same
        "help": "Trials per task (the paper: 4).", "min": 1})
    pass_k: int | None = field(default=None, metadata={  # resolved by __post_init__: after it, never None
        "help": "The k of Pass@k and pass^k, from the same trials [default: trials].", "min": 1})
    concurrency: int = field(default=CONCURRENCY, metadata=_CONCURRENCY)
    seed: int = field(default=0, metadata={"help": "Seed of sampling and of the bootstrap."})
    executor: ModelConfig = field(default_factory=executor_defaults)
    user: ModelConfig | None = None  # the simulated user; None: the executor's model and settings
    episode: ExecutorConfig = field(default_factory=ExecutorConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    drop_noop_solvable: bool = field(default=False, metadata={
        "help": "Leave out the tau2 tasks that pass with no action (as the paper did in airline)."})
    m3tooleval_dir: str | None = field(default=None, metadata={
        "help": "The official M3ToolEval tasks from a CodeAct checkout, for calculation and web_browsing."})
    limit: int | None = field(default=None, metadata={  # smoke runs
        "help": ("Only the first N tasks of each environment, in the benchmark's order (a smoke run, not a sample: "
                 "they may all come from one domain; --task-ids chooses)."), "min": 1})
    task_ids: list[str] | None = field(default=None, metadata={"help": (
        "Only these tasks: their task_id in the results (retail/12) or the benchmark's id (12); comma-separated "
        "or repeated [default: every task].")})
    n_boot: int = N_BOOT
    retry_failed: bool = field(default=False, metadata=_RETRY_FAILED)
    keep_system_prompt: bool = field(default=False, metadata=_KEEP_SYSTEM_PROMPT)

    def __post_init__(self) -> None:
        # imported here, not above: the command line imports this module, and needs no benchmark for --help
        from sca.benchmarks import benchmark_names

        names = benchmark_names()
        if self.envs == ["all"]:
            self.envs = list(names)
        unknown = [e for e in self.envs if e not in names]
        if unknown:
            raise ValueError(f"no benchmark for {', '.join(unknown)} (environments with one: "
                             f"{', '.join(names)}, or all)")
        if self.trials < 1:
            raise ValueError("trials must be >= 1")
        if self.pass_k is None:
            self.pass_k = self.trials
        if not 1 <= self.pass_k <= self.trials:
            raise ValueError(f"pass_k (--pass-k) must be between 1 and trials ({self.trials}), got {self.pass_k}")


@dataclass
class ProposeConfig(ChallengerConfig):
    """Options of `sca propose` (the CLI flags and their defaults): the challenger's, and the CaT
    checks its answers go through."""

    validate: ValidateConfig = field(default_factory=ValidateConfig)


@dataclass
class ReportConfig:
    """Options of `sca report` (the CLI flags and the defaults of :func:`stages.report.report`)."""

    output: str = field(default="report", metadata={"help": "Directory for README.md and the PNG plots."})
    pass_k: int | None = field(default=None, metadata={
        "help": "The k of Pass@k and pass^k [default: the run's, else its most trials per task].", "min": 1})
    n_boot: int = field(default=N_BOOT, metadata={"help": "Bootstrap resamples of every confidence interval.",
                                                  "min": 1})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap and of the permutation test."})
