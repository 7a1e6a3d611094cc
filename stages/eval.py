"""`sca eval`: the executor on the real benchmarks, scored by their official scorers.

Input, library, output: each environment's benchmark (:mod:`sca.benchmarks`) gives its tasks and
scorer; :func:`sca.agent.run.run_executor` runs them, as for ``sca rollout`` (no second agent loop);
each trial's result is written as it finishes, and the summary is computed from this run's results.
The benchmarks today:

* TauBench retail and airline: tau2's own test tasks; the simulated user gets each task's user
  scenario as tau2 defines it; every trial is scored by tau2's own evaluator
  (:mod:`sca.benchmarks.tau2`: database state against the gold actions' state, required
  information communicated, by each task's reward basis). ``drop_noop_solvable`` removes the
  tasks tau2 scores 1 when the agent does nothing (about a third of airline's test tasks), as
  the paper did; how many is reported.
* calculation and web_browsing: our held-out sets with their tolerant scorer, or, with
  ``m3tooleval_dir``, the 82 official M3ToolEval tasks (48 calculation, 34 web browsing).

Per (task, trial) one result record (a trajectory plus ``split``, ``scorer``, ``scorer_detail``; its
system prompt in the sidecar by hash unless ``keep_system_prompt``, as in ``sca rollout``), resumable; a summary JSON beside the results with Pass@1 (mean over trials), Pass@k (the
unbiased estimator from the same trials), pass^k, each with a 95% bootstrap interval over
tasks (:mod:`sca.metrics`), per environment, and the paper's Table 1 row for the same base model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sca.agent.engine import engine_seed
from sca.agent.executor import drop_infra_failures
from sca.agent.run import ExecutorTask, open_roles, run_executor
from sca.benchmarks import benchmark
from sca.records.io import STDIO, InputError, scan_jsonl, write_json_atomic
from sca.records.schema import summary_first
from sca.records.progress import progress
from sca.records.stage_run import MODEL_SETTINGS, SANDBOX_LIMITS, StageRun, refuse_other_settings, under
from stages.config import EvalConfig


#: the settings (of EvalConfig) that change the results: a resume must keep them (sca.records.stage_run); --limit
#: and --task-ids choose tasks, --trials how many trials (trial t is the same whatever the count, as in sca
#: rollout), and Pass@k's k and the bootstrap are computed afresh from this run's results
RESULT_SETTINGS = ("envs", "split", "seed", "drop_noop_solvable", "m3tooleval_dir",
                   *under("executor", MODEL_SETTINGS), "user", "episode", *under("sandbox", SANDBOX_LIMITS))


def paper_row(model_name: str | None) -> tuple[str, dict[str, tuple[float, float]]] | None:
    """The paper's zero-shot row for the base model `model_name` names, if the paper has one."""
    from sca.paper import base_model_row

    return base_model_row(model_name)


@dataclass
class BenchMeta:
    """What a result record says of its benchmark task, beside the trajectory."""

    env: str
    benchmark_task_id: str
    split: str
    scorer: str


def benchmark_tasks(config: EvalConfig) -> tuple[list[ExecutorTask], dict[str, int]]:
    """Every task to evaluate (``<env>/<benchmark id>``: unique across environments), each with all
    its trials, and per environment how many tasks were left out as solvable by doing nothing (only
    with ``drop_noop_solvable``, where the benchmark can tell)."""
    from envs import env_spec

    out: list[ExecutorTask] = []
    dropped: dict[str, int] = {}
    chosen, found = set(config.task_ids or ()), set()
    for name in config.envs:
        bench = benchmark(name)
        if config.m3tooleval_dir:
            bench = bench.from_checkout(config.m3tooleval_dir)
        tasks, left_out = bench.eval_tasks(config.split, limit=None if chosen else config.limit,
                                           drop_noop_solvable=config.drop_noop_solvable)
        if chosen:  # --task-ids: a task's id in the results (retail/12) or the benchmark's own (12); then --limit
            tasks = [t for t in tasks if {f"{name}/{t.id}", str(t.id)} & chosen]
            found |= {i for t in tasks for i in (f"{name}/{t.id}", str(t.id))}
            tasks = tasks[:config.limit]
        if left_out is not None:
            dropped[name] = left_out
        spec = env_spec(name)
        for t in tasks:
            out.append(ExecutorTask(id=f"{name}/{t.id}", instruction=t.instruction, env=spec, scorer=bench.scorer(t),
                                    trials=range(config.trials), build=lambda bench=bench, t=t: bench.make_env(t),
                                    meta=BenchMeta(name, t.id, t.split, bench.scorer_name)))
    if chosen - found:
        raise InputError(f"no task {', '.join(sorted(chosen - found))} in {', '.join(config.envs)} (split "
                         f"{config.split}{', without the no-op solvable ones' if config.drop_noop_solvable else ''})")
    return out, dropped


def paper_benchmark_envs(config: EvalConfig) -> dict[str, str | None]:
    """For each environment of the run: None where it evaluates what the paper's Table 1 did, else
    why its numbers are not comparable (:func:`sca.paper.not_comparable`)."""
    from sca.paper import not_comparable

    if config.task_ids:
        return {env: "--task-ids: a subset of the tasks" for env in config.envs}
    return {env: not_comparable(env, split=config.split, official_m3=bool(config.m3tooleval_dir),
                                drop_noop_solvable=config.drop_noop_solvable, limit=config.limit,
                                trials=config.trials) for env in config.envs}


def summarize_results(results: list[dict[str, Any]], config: EvalConfig, envs: list[str]) -> dict[str, Any]:
    """The metrics of every environment from this run's results (env, task_id, trial, reward)."""
    from sca.metrics import summarize

    by_env: dict[str, list[dict[str, Any]]] = {e: [] for e in envs}
    for r in results:
        by_env[r["env"]].append(r)
    out = {}
    for env, rs in by_env.items():
        if not any(r["reward"] is not None for r in rs):
            out[env] = {"tasks": len({r["task_id"] for r in rs}), "trials": 0,
                        "excluded": sum(r["reward"] is None for r in rs), "note": "no scored trial"}
            continue
        out[env] = summarize(rs, k=config.pass_k, n_boot=config.n_boot, seed=config.seed).to_dict()
    return out


def _earlier_results(path: str, wanted: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The results an earlier run left in `path` for the (task, trial) ids of this run (`wanted`:
    id -> environment); the file may hold other tasks, splits or trials, which are not this run's."""
    out: dict[str, dict[str, Any]] = {}
    for r in scan_jsonl(path):
        try:
            env = wanted.get(r["id"])
            if env is not None and r["task_id"] == r["id"].rsplit("#", 1)[0]:
                reward = r.get("reward")
                out[r["id"]] = {"env": env, "task_id": r["task_id"], "trial": r["trial"],
                                "reward": reward if reward in (0, 1) else None}
        except (TypeError, KeyError, AttributeError):
            continue
    return out


def eval_file(config: EvalConfig, output: str, *, executor_model: Any = None, user_model: Any = None,
              overwrite: bool = False, show_progress: bool | None = None, metrics: Any = None) -> dict[str, Any]:
    """`sca eval`: results to `output`, the summary (returned) to ``output.summary.json``."""
    tasks, dropped = benchmark_tasks(config)
    if not tasks:
        raise InputError("no benchmark task to evaluate (check --env, --split and --limit)")
    settings = {**asdict(config), "dropped_noop_solvable": dropped}
    if not overwrite:
        refuse_other_settings([output], settings, RESULT_SETTINGS)  # before the retried failures are dropped
    settings["retried_infra_failures"] = drop_infra_failures(output) if config.retry_failed and not overwrite else 0
    needs_user = any(t.env.user_facing for t in tasks)
    with StageRun("eval", {"results": output}, settings=settings, result=RESULT_SETTINGS,
                  overwrite=overwrite, system_prompt_refs=not config.keep_system_prompt) as run:  # before any model loads: a resume with other settings stops here
        with open_roles(config.executor, config.user, config.episode, needs_user=needs_user,
                        executor_model=executor_model, user_model=user_model, seed=config.seed) as roles:
            models = run.meta.data["settings"]["models"] = roles.info()
            wanted = {f"{t.id}#{trial}": t.meta.env for t in tasks for trial in t.trials}
            results = {} if overwrite else _earlier_results(output, wanted)
            for t in tasks:
                t.trials = [trial for trial in t.trials if f"{t.id}#{trial}" not in run.done_ids]
            todo = sum(len(t.trials) for t in tasks)

            def write(task: ExecutorTask, record: dict[str, Any]) -> None:
                meta: BenchMeta = task.meta
                record["env"] = meta.env
                record.update(benchmark_task_id=meta.benchmark_task_id, split=meta.split, scorer=meta.scorer,
                              scorer_detail=record.get("evaluation"))
                run.counts[f"env:{meta.env}"] += 1
                run.counts[f"termination:{record['termination']}"] += 1
                if record["reward"] is None:
                    run.counts["infra"] += 1
                run.write("results", summary_first(record))  # the benchmark's fields in their place
                if metrics is not None:  # --report-to: a sca.metrics_log.MetricsLog
                    metrics.trial(record)
                results[record["id"]] = {"env": record["env"], "task_id": record["task_id"],
                                         "trial": record["trial"], "reward": record["reward"]}
                advance(1)

            if todo:
                with config.sandbox.build(workers=min(config.sandbox.workers, config.concurrency)) as sandbox:
                    run.meta.data["settings"]["sandbox_backend"] = sandbox.backend_name
                    with progress(todo, "eval", show_progress, unit="trials") as advance:
                        if config.episode.action_format == "json" and len({t.env.name for t in tasks}) > 1:
                            raise InputError("--action-format json evaluates one environment at a time")
                        run_executor([t for t in tasks if t.trials], roles, sandbox, config.episode,
                                     concurrency=config.concurrency, seed=engine_seed(config.seed), on_record=write)
            summary = {"trials": config.trials, "k": config.pass_k, "split": config.split,
                       "model": models["executor"].get("model"), "models": models,
                       "dropped_noop_solvable": dropped, "envs": summarize_results(list(results.values()), config, config.envs)}
            paper = paper_row(models["executor"].get("model") or config.executor.model)
            if paper:
                comparable = paper_benchmark_envs(config)
                summary["paper"] = {"model": paper[0],
                                    "table1": {e: {"pass1": v[0], "pass4": v[1]} for e, v in paper[1].items()
                                               if e in comparable and comparable[e] is None},
                                    "not_comparable": {e: why for e, why in comparable.items() if why}}
            run.meta.data["summary"] = summary["envs"]
    if output != STDIO:
        write_json_atomic(f"{output}.summary.json", summary)
    return summary
