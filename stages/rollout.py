"""`sca rollout`: the executor solves CaT tasks, k trials each, every trajectory scored by the task's code.

For each task of the input (streamed: a million-task file is never held in memory) and each
trial, one :class:`~sca.agent.executor.ExecutorEpisode` runs on the shared episode engine: the
executor (and, in retail and airline, the simulated user, which may be another model on
another backend) generate in batches, actions run in the sandbox against the episode's own
environment state, and at the end the task's ``evaluate`` runs on the final state. Each
finished trial is one trajectory record (docs/TRAJECTORY.md), written as it finishes;
a rerun resumes per (task, trial); ``retry_failed`` reruns the infrastructure failures.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from sandbox.config import SandboxConfig
from sca.records.io import InputError, StreamedInput, scan_jsonl
from sca.agent.engine import Role, run_episodes
from sca.agent.executor import (
    AGENT,
    USER,
    ExecutorConfig,
    ExecutorEpisode,
    drop_infra_failures,
    evaluate_scorer,
    executor_stop,
    models_info,
)
from sca.inference.config import ModelConfig, executor_defaults
from sca.records import CAT_TASK
from sca.records.stage_run import StageRun, progress


@dataclass
class RolloutConfig:
    """Options of `sca rollout` (the CLI flags and their defaults)."""

    k: int = 16  # trials per task (the paper: 12k trajectories for 800 tasks, about 15 each)
    concurrency: int = 8  # episodes live at once
    seed: int = 0
    executor: ModelConfig = field(default_factory=executor_defaults)
    user: ModelConfig | None = None  # the simulated user; None: the executor's model and settings
    episode: ExecutorConfig = field(default_factory=ExecutorConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    retry_failed: bool = False  # rerun the trials recorded as infrastructure failures

    def __post_init__(self) -> None:
        if self.k < 1 or self.concurrency < 1:
            raise ValueError("k and concurrency must be >= 1")

    @property
    def user_model(self) -> ModelConfig:
        return self.user or self.executor


@dataclass
class TaskTally:
    """Trials and successes of one task (infrastructure failures excluded)."""

    n: int = 0
    c: int = 0


@dataclass
class RolloutSummary:
    """What a rollout did, from the run's counts and per-task tallies (resumed records included)."""

    trajectories: int = 0
    resumed: int = 0
    scored: int = 0
    rewarded: int = 0
    infra_failures: int = 0
    tasks: int = 0
    solved_none: int = 0
    solved_some: int = 0
    solved_all: int = 0
    pass1: float = 0.0
    pass_k: float = 0.0
    k: int = 0
    terminations: dict[str, int] = field(default_factory=dict)
    infra: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    generate_s: float = 0.0
    sandbox_s: float = 0.0

    @property
    def mean_reward(self) -> float:
        return self.rewarded / self.scored if self.scored else 0.0

    @classmethod
    def build(cls, counts: dict[str, Any], tallies: dict[str, TaskTally], k: int) -> RolloutSummary:
        from sca.metrics import pass_at_k

        s = cls(trajectories=counts.get("trajectories", 0), resumed=counts.get("resumed", 0),
                infra_failures=counts.get("infra", 0), k=k, seconds=counts.get("seconds", 0.0),
                generate_s=counts.get("generate_s", 0.0), sandbox_s=counts.get("sandbox_s", 0.0))
        s.terminations = {key.split(":", 1)[1]: v for key, v in counts.items() if key.startswith("termination:")}
        s.infra = {key.split(":", 1)[1]: v for key, v in counts.items() if key.startswith("infra:")}
        s.tokens = {key.split(":", 1)[1]: v for key, v in counts.items() if key.startswith("tokens:")}
        p1 = pk = 0.0
        for t in tallies.values():
            if t.n == 0:
                continue
            s.tasks += 1
            s.scored += t.n
            s.rewarded += t.c
            s.solved_none += t.c == 0
            s.solved_all += t.c == t.n
            s.solved_some += 0 < t.c < t.n
            p1 += t.c / t.n
            pk += pass_at_k(t.n, t.c, min(k, t.n))
        if s.tasks:
            s.pass1, s.pass_k = p1 / s.tasks, pk / s.tasks
        return s


def _tally_existing(path: str, tallies: dict[str, TaskTally], counts: Counter, task_ids: set[str], k: int) -> None:
    """Per-task tallies and counts of the trajectories an earlier run wrote (streamed), for this
    run's tasks and trials only: the file may also hold other tasks, or more trials, of earlier runs."""
    for r in scan_jsonl(path):
        try:
            trial = r["trial"]
            if r["task_id"] in task_ids and isinstance(trial, int) and 0 <= trial < k:
                _count(r, tallies, counts)
        except (AttributeError, TypeError, KeyError):
            continue


def _count(record: dict[str, Any], tallies: dict[str, TaskTally], counts: Counter) -> None:
    tally = tallies.setdefault(record["task_id"], TaskTally())
    counts[f"termination:{record.get('termination') or 'unknown'}"] += 1
    if record.get("reward") is None:
        counts["infra"] += 1
        counts[f"infra:{(record.get('infra_error') or {}).get('kind', 'unknown')}"] += 1
        return
    tally.n += 1
    tally.c += int(record["reward"] == 1)


def run_rollout(tasks: Iterator[dict[str, Any]], config: RolloutConfig, executor: Any, user: Any | None, sandbox: Any, *,
                done_ids: set[str], on_record: Any, counts: Counter, tallies: dict[str, TaskTally],
                tools: list[dict] | None = None, advance: Any = lambda n=1: None) -> None:
    """Run every pending (task, trial) of `tasks`; hand each trajectory record to `on_record`.

    `tools`: the OpenAI schemas of the environment's tools, offered natively to the executor
    (``--action-format json``: the tasks are then of one environment)."""
    from envs import make_env

    models = models_info(config.executor, config.user_model, config.episode, executor, user)

    def episodes() -> Iterator[ExecutorEpisode]:
        for task in tasks:
            scorer = evaluate_scorer(task["evaluation_function"])
            for trial in range(config.k):
                if f"{task['id']}#{trial}" in done_ids:
                    continue
                yield ExecutorEpisode.start(task_id=task["id"], trial=trial, instruction=task["instruction"],
                                            env=make_env(task["env"]), sandbox=sandbox, config=config.episode,
                                            scorer=scorer)

    source = episodes()

    def finish(ep: ExecutorEpisode) -> None:
        record = ep.record(models)
        counts["generate_s"] += record["timings"]["generate_s"] + record["timings"]["user_s"]
        counts["sandbox_s"] += record["timings"]["sandbox_s"]
        for role, t in record["tokens"].items():
            counts[f"tokens:{role}_prompt"] += t["prompt"]
            counts[f"tokens:{role}_completion"] += t["completion"]
        _count(record, tallies, counts)
        on_record(record)
        advance(1)

    roles = {AGENT: Role(AGENT, executor, config.executor.sampling(executor_stop(config.episode)), tools=tools),
             USER: Role(USER, user if user is not None else executor, config.user_model.sampling())}
    run_episodes(lambda: next(source, None), roles, concurrency=config.concurrency, on_finish=finish,
                 workers=max(1, getattr(sandbox, "workers", 1)), seed=config.seed * 7919)


def rollout_file(
    tasks_path: str,
    output: str,
    config: RolloutConfig | None = None,
    *,
    executor_model: Any = None,
    user_model: Any = None,
    overwrite: bool = False,
    skip_invalid: bool = False,
    show_progress: bool | None = None,
    on_skip: Any = None,
) -> RolloutSummary:
    """`sca rollout`: trajectories of every task of `tasks_path`, `config.k` trials each, to `output`.

    `executor_model` / `user_model`: ChatModels already open (test doubles, or shared with other
    work); by default the ones the config names are loaded (one copy when both roles name the
    same model) and closed at the end.
    """
    from envs import make_env

    config = config or RolloutConfig()
    source = StreamedInput(tasks_path, CAT_TASK, skip_invalid=skip_invalid, on_skip=on_skip).scan()
    envs_used: set[str] = set()
    task_ids: set[str] = set()
    for task in source:
        envs_used.add(task["env"])
        task_ids.add(task["id"])
    for name in sorted(envs_used):
        make_env(name)  # every environment loads before any model does
    tools = None
    if config.episode.action_format == "json" and envs_used:
        if len(envs_used) > 1:
            raise InputError(f"{source.name}: --action-format json needs tasks of one environment, not "
                             f"{', '.join(sorted(envs_used))}")
        tools = [t.openai_schema() for t in make_env(next(iter(envs_used))).tools()]
    if config.retry_failed and not overwrite:
        retried = drop_infra_failures(output)
    else:
        retried = 0
    needs_user = any(make_env(name).user_facing for name in envs_used)
    own = []
    try:
        if executor_model is None:
            executor_model = config.executor.load()
            own.append(executor_model)
        if needs_user and user_model is None:
            if config.user is None or config.user.same_model(config.executor):
                user_model = executor_model
            else:
                user_model = config.user.load()
                own.append(user_model)
        settings = {**asdict(config), "retried_infra_failures": retried}
        tallies: dict[str, TaskTally] = {}
        with StageRun("rollout", {"trajectories": output}, inputs=[source], settings=settings,
                      overwrite=overwrite) as run:
            counts = run.counts
            if not overwrite:
                _tally_existing(output, tallies, counts, task_ids, config.k)
            counts["retried"] = retried
            todo = sum(f"{task_id}#{trial}" not in run.done_ids for task_id in task_ids for trial in range(config.k))
            if todo > 0:
                with config.sandbox.build(workers=min(config.sandbox.workers, config.concurrency)) as sandbox:
                    run.meta.data["settings"]["sandbox_backend"] = sandbox.backend_name
                    run.meta.data["settings"]["models"] = models_info(
                        config.executor, config.user_model, config.episode, executor_model,
                        user_model if needs_user else None)
                    with progress(todo, "rollout", show_progress) as advance:
                        run_rollout(iter(source), config, executor_model, user_model if needs_user else None,
                                    sandbox, done_ids=run.done_ids, on_record=lambda r: run.write("trajectories", r),
                                    counts=counts, tallies=tallies, tools=tools, advance=advance)
            final = dict(counts)
            final["seconds"] = run.elapsed
            summary = RolloutSummary.build(final, tallies, config.k)
            run.counts.update({"tasks": summary.tasks, "scored": summary.scored, "rewarded": summary.rewarded,
                               "solved_none": summary.solved_none, "solved_some": summary.solved_some,
                               "solved_all": summary.solved_all})
            run.meta.data["summary"] = {"mean_reward": summary.mean_reward, "pass1": summary.pass1,
                                        f"pass{config.k}": summary.pass_k}
    finally:
        for model in own:
            model.close()
    return summary
