"""`sca rollout`: the executor solves CaT tasks, k trials each, every trajectory scored by the task's code
or by a judge.

Input, library, output: the tasks of the input (streamed: a million-task file is never held in
memory), of any format (docs/CAT.md), become executor tasks scored by their own ``evaluate``
(:func:`~sca.agent.executor.evaluate_scorer`; ``reward="evaluate"``, where a task without an
``evaluation_function`` is bad input) or by a judge model (:class:`~sca.agent.judge.JudgeScorer`;
``reward="judge"``, PAE's reward), with the trials the output does not hold yet;
:func:`sca.agent.run.run_executor` runs them (the executor and, where the environment has one, the
simulated user, which may be another model on another backend, and the judge); each finished trial is one trajectory record (docs/TRAJECTORY.md), written as it
finishes, with the reward's source and the task's format, and counted for the summary; its system prompt,
the same for every task of an environment, is in the sidecar by hash unless ``keep_system_prompt``. A rerun resumes
per (task, trial), with the reward and the judge the output was made with (another is refused: its
records would mix two rewards); ``retry_failed`` reruns the infrastructure failures.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from sca.agent.engine import engine_seed
from sca.agent.executor import drop_infra_failures, evaluate_scorer
from sca.agent.judge import JudgeScorer
from sca.agent.run import ExecutorTask, open_roles, run_executor
from sca.records import CAT_TASK
from sca.records.io import STDIO, InputError, StreamedInput, scan_jsonl
from sca.records.schema import RecordError, RecordSchema, summary_first
from sca.task_formats import task_format
from sca.records.progress import progress
from sca.records.stage_run import MODEL_SETTINGS, SANDBOX_LIMITS, StageRun, refuse_other_settings, under
from stages.config import RolloutConfig


#: the settings (of RolloutConfig) that change the trajectories: a resume must keep them (sca.records.stage_run).
#: The simulated user's and the judge's are compared whole (None: the executor's), their servers aside. The
#: number of trials is not one: trial t of a task is the same whatever the count (its seeds hash the task and
#: t), and a run counts only its own trials, so a rerun may ask for more trials or fewer.
RESULT_SETTINGS = ("seed", "reward", *under("executor", MODEL_SETTINGS), "user", "judge", "episode",
                   *under("sandbox", SANDBOX_LIMITS))


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
    judge: dict[str, int] = field(default_factory=dict)  # the judge's statuses (ok, no_verdict), with --reward judge
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
        s.judge = {key.split(":", 1)[1]: v for key, v in counts.items() if key.startswith("judge:")}
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


def _count_trial(record: dict[str, Any], tallies: dict[str, TaskTally], counts: Counter) -> None:
    """A trajectory this run wrote: its time and tokens, then as :func:`_count` counts it."""
    counts["generate_s"] += record["timings"]["generate_s"] + record["timings"]["user_s"]
    counts["sandbox_s"] += record["timings"]["sandbox_s"]
    for role, t in record["tokens"].items():
        counts[f"tokens:{role}_prompt"] += t["prompt"]
        counts[f"tokens:{role}_completion"] += t["completion"]
    _count(record, tallies, counts)


def _count(record: dict[str, Any], tallies: dict[str, TaskTally], counts: Counter) -> None:
    tally = tallies.setdefault(record["task_id"], TaskTally())
    counts[f"termination:{record.get('termination') or 'unknown'}"] += 1
    if record.get("reward") is None:
        counts["infra"] += 1
        counts[f"infra:{(record.get('infra_error') or {}).get('kind', 'unknown')}"] += 1
        return
    tally.n += 1
    tally.c += int(record["reward"] == 1)
    if record.get("reward_source") == "judge":
        counts[f"judge:{(record.get('evaluation') or {}).get('status', 'unknown')}"] += 1


def _needs_evaluate(record: dict[str, Any]) -> None:
    if not record.get("evaluation_function"):
        raise RecordError("evaluation_function", "missing: a task without one is scored with --reward judge")


def task_schema(reward: str) -> RecordSchema:
    """The tasks rollout reads: CaT's record (:data:`~sca.records.CAT_TASK`) of any format; with
    ``reward="evaluate"`` each must have the ``evaluation_function`` that scores it (an instruction-only
    task has none: a judge scores it)."""
    return CAT_TASK if reward != "evaluate" else replace(CAT_TASK, extra_checks=CAT_TASK.extra_checks + (_needs_evaluate,))


def executor_tasks(tasks: Iterator[dict[str, Any]], k: int, done_ids: set[str],
                   reward: str = "evaluate") -> Iterator[ExecutorTask]:
    """The tasks of `tasks` as the executor's, scored by `reward`, each with its trials of `k` not in
    `done_ids`; each carries its format (``meta``)."""
    from envs import env_spec

    judge = JudgeScorer()
    for task in tasks:
        yield ExecutorTask(id=task["id"], instruction=task["instruction"], env=env_spec(task["env"]),
                           scorer=judge if reward == "judge" else evaluate_scorer(task["evaluation_function"]),
                           trials=[trial for trial in range(k) if f"{task['id']}#{trial}" not in done_ids],
                           meta=task_format(task))


def judge_description(config: RolloutConfig) -> dict[str, Any] | None:
    """What the sidecar says of the judge, and a resume must match: its model and backend (None: no judge)."""
    judge = config.judge_config()
    return None if judge is None else {"model": judge.model, "backend": judge.backend}


def refuse_other_reward(output: str, config: RolloutConfig) -> None:
    """Refuse to resume `output` with another reward, or another judge, than its trajectories had: the
    records' ``reward_source`` (none: ``evaluate``, as before judges) and the sidecar's ``judge``."""
    if output == STDIO:
        return
    first = next(iter(scan_jsonl(output)), None)
    if first is None:
        return
    earlier = first.get("reward_source") or "evaluate"
    if earlier != config.reward:
        raise InputError(f"{output}: its trajectories were rewarded by {earlier}, this run's reward is "
                         f"{config.reward}; write another output, or start it afresh with --overwrite")
    try:
        settings = json.loads(Path(output + ".meta.json").read_text()).get("settings") or {}
    except (OSError, ValueError, AttributeError):
        settings = {}
    before, now = settings.get("judge_model"), judge_description(config)
    if config.reward == "judge" and before is not None and before != now:
        raise InputError(f"{output}: its trajectories were judged by {before.get('model') or 'the default model'} "
                         f"({before.get('backend')}), this run's judge is {now['model'] or 'the default model'} "
                         f"({now['backend']}); write another output, or start it afresh with --overwrite")


def rollout_file(
    tasks_path: str,
    output: str,
    config: RolloutConfig | None = None,
    *,
    executor_model: Any = None,
    user_model: Any = None,
    judge_model: Any = None,
    overwrite: bool = False,
    skip_invalid: bool = False,
    show_progress: bool | None = None,
    on_skip: Any = None,
    metrics: Any = None,
) -> RolloutSummary:
    """`sca rollout`: trajectories of every task of `tasks_path`, `config.trials` trials each, to `output`.

    `executor_model` / `user_model` / `judge_model`: ChatModels already open (test doubles, or shared
    with other work); by default the ones the config names are loaded (one copy of a model that
    several roles name) and closed at the end. Bad input (a task without ``evaluation_function`` under
    ``reward="evaluate"``, a resume with another reward) is an :class:`InputError` before any model loads.
    """
    from envs import env_spec

    config = config or RolloutConfig()
    source = StreamedInput(tasks_path, task_schema(config.reward), skip_invalid=skip_invalid, on_skip=on_skip).scan()
    envs_used: set[str] = set()
    task_ids: set[str] = set()
    for task in source:
        if config.task_ids and task["id"] not in config.task_ids:
            continue
        envs_used.add(task["env"])
        task_ids.add(task["id"])
    unknown = sorted(set(config.task_ids or ()) - task_ids)
    if unknown:
        raise InputError(f"{source.name}: no task with id {', '.join(unknown)} (--task-ids)")
    specs = [env_spec(name) for name in sorted(envs_used)]
    for spec in specs:
        spec.tools()  # every environment's tools load (tau2's: its domain) before any model does
    if config.episode.action_format == "json" and len(envs_used) > 1:
        raise InputError(f"{source.name}: --action-format json needs tasks of one environment, not "
                         f"{', '.join(sorted(envs_used))}")
    settings = {**asdict(config), "judge_model": judge_description(config)}
    if not overwrite:
        refuse_other_reward(output, config)
        refuse_other_settings([output], settings, RESULT_SETTINGS)  # before the retried failures are dropped
    if config.retry_failed and not overwrite:
        retried = drop_infra_failures(output)
    else:
        retried = 0
    needs_user = any(spec.user_facing for spec in specs)
    settings["retried_infra_failures"] = retried
    tallies: dict[str, TaskTally] = {}
    with StageRun("rollout", {"trajectories": output}, inputs=[source], settings=settings, result=RESULT_SETTINGS,
                  overwrite=overwrite, system_prompt_refs=not config.keep_system_prompt) as run:  # before any model loads: a resume with other settings stops here
        with open_roles(config.executor, config.user, config.episode, needs_user=needs_user,
                        executor_model=executor_model, user_model=user_model, judge=config.judge,
                        needs_judge=config.reward == "judge", judge_model=judge_model, seed=config.seed) as roles:
            counts = run.counts
            if not overwrite:
                _tally_existing(output, tallies, counts, task_ids, config.trials)
            counts["retried"] = retried
            todo = sum(f"{task_id}#{trial}" not in run.done_ids for task_id in task_ids
                       for trial in range(config.trials))
            if todo > 0:
                with config.sandbox.build(workers=min(config.sandbox.workers, config.concurrency)) as sandbox:
                    run.meta.data["settings"]["sandbox_backend"] = sandbox.backend_name
                    run.meta.data["settings"]["models"] = roles.info()
                    with progress(todo, "rollout", show_progress, unit="trials") as advance:

                        def write(task: ExecutorTask, record: dict[str, Any]) -> None:
                            record["reward_source"] = config.reward
                            record["format"] = task.meta
                            _count_trial(record, tallies, counts)
                            run.write("trajectories", summary_first(record))  # the stage's fields in their place
                            if metrics is not None:  # --report-to: a sca.metrics_log.MetricsLog
                                metrics.trial(record)
                            advance(1)

                        chosen = (t for t in source if t["id"] in task_ids)  # --task-ids, else every task
                        run_executor(executor_tasks(chosen, config.trials, run.done_ids, config.reward), roles, sandbox,
                                     config.episode, concurrency=config.concurrency, seed=engine_seed(config.seed),
                                     on_record=write)
            final = dict(counts)
            final["seconds"] = run.elapsed
            summary = RolloutSummary.build(final, tallies, config.trials)
            run.counts.update({"tasks": summary.tasks, "scored": summary.scored, "rewarded": summary.rewarded,
                               "solved_none": summary.solved_none, "solved_some": summary.solved_some,
                               "solved_all": summary.solved_all})
            run.meta.data["summary"] = {"mean_reward": summary.mean_reward, "pass1": summary.pass1,
                                        f"pass{config.trials}": summary.pass_k}
    return summary
