"""`sca eval`: the executor on the real benchmarks, scored by their official scorers.

The same engine and executor as ``sca rollout`` (no second agent loop), on each environment's
benchmark tasks:

* TauBench retail and airline: tau2's own test tasks; the simulated user gets each task's user
  scenario as tau2 defines it; every trial is scored by tau2's own evaluator
  (:mod:`sca.benchmarks.tau2`: database state against the gold actions' state, required
  information communicated, by each task's reward basis). ``drop_noop_solvable`` removes the
  tasks tau2 scores 1 when the agent does nothing (about a third of airline's test tasks), as
  the paper did; how many is reported.
* calculation and web_browsing: our held-out sets with their tolerant scorer, or, with
  ``m3tooleval_dir``, the 82 official M3ToolEval tasks (48 calculation, 34 web browsing).

Per (task, trial) one result record (a trajectory plus ``split``, ``scorer``, ``scorer_detail``),
resumable; a summary JSON beside the results with Pass@1 (mean over trials), Pass@k (the
unbiased estimator from the same trials), pass^k, each with a 95% bootstrap interval over
tasks (:mod:`sca.metrics`), per environment, and the paper's Table 1 row for the same base model.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

from sandbox.config import SandboxConfig
from sca.records.io import STDIO, InputError, scan_jsonl, write_json_atomic
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
from sca.records.stage_run import StageRun, progress

BENCHMARK_ENVS = ("calculation", "web_browsing", "retail", "airline")
TAU_ENVS = ("retail", "airline")

def paper_row(model_name: str | None) -> tuple[str, dict[str, tuple[float, float]]] | None:
    """The paper's zero-shot row for the base model `model_name` names, if the paper has one."""
    from sca.paper import base_model_row

    return base_model_row(model_name)


@dataclass
class EvalConfig:
    """Options of `sca eval` (the CLI flags and their defaults)."""

    envs: list[str] = field(default_factory=lambda: ["retail"])
    split: str = "test"
    trials: int = 4  # the paper: Pass@1 averaged over 4 trials, Pass@4 from the same trials
    k: int | None = None  # Pass@k's k (default: trials)
    concurrency: int = 8
    seed: int = 0
    executor: ModelConfig = field(default_factory=executor_defaults)
    user: ModelConfig | None = None  # the simulated user; None: the executor's model and settings
    episode: ExecutorConfig = field(default_factory=ExecutorConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    drop_noop_solvable: bool = False
    m3tooleval_dir: str | None = None
    limit: int | None = None  # only the first N tasks of each environment (smoke runs)
    n_boot: int = 2000
    retry_failed: bool = False

    def __post_init__(self) -> None:
        if self.envs == ["all"]:
            self.envs = list(BENCHMARK_ENVS)
        unknown = [e for e in self.envs if e not in BENCHMARK_ENVS]
        if unknown:
            raise ValueError(f"no benchmark for {', '.join(unknown)} (environments with one: "
                             f"{', '.join(BENCHMARK_ENVS)}, or all)")
        if self.trials < 1:
            raise ValueError("trials must be >= 1")
        if self.k is not None and not 1 <= self.k <= self.trials:
            raise ValueError(f"k must be between 1 and trials ({self.trials})")

    @property
    def pass_k(self) -> int:
        return self.k or self.trials


@dataclass
class BenchTask:
    """One benchmark task ready to run: its instruction, a fresh environment, its scorer."""

    env_name: str
    task_id: str  # <env>/<benchmark id>: unique across environments
    benchmark_id: str
    split: str
    instruction: str
    make_env: Callable[[], Any]
    make_scorer: Callable[[], Any]
    scorer: str


def benchmark_tasks(config: EvalConfig) -> tuple[list[BenchTask], dict[str, int]]:
    """Every task to evaluate, and per environment how many tau2 tasks were dropped as solvable
    by doing nothing (only with ``drop_noop_solvable``)."""
    from envs import make_env

    out: list[BenchTask] = []
    dropped: dict[str, int] = {}
    for name in config.envs:
        env = make_env(name)
        if name in TAU_ENVS:
            from sca.benchmarks.tau2 import noop_solvable, tau2_scorer

            if config.split not in env.splits():
                raise InputError(f"{name}: no split {config.split!r} (have {', '.join(env.splits())})")
            tasks = env.tasks(split=config.split)
            if config.limit:
                tasks = tasks[:config.limit]
            if config.drop_noop_solvable:
                kept = [t for t in tasks if not noop_solvable(name, t.data)]
                dropped[name] = len(tasks) - len(kept)
                tasks = kept
            for t in tasks:
                out.append(BenchTask(name, f"{name}/{t.id}", t.id, t.split, t.instruction,
                                     lambda name=name: make_env(name),
                                     lambda name=name, data=t.data: tau2_scorer(name, data), "tau2"))
            continue
        if config.m3tooleval_dir:
            from envs._m3 import official

            tasks = [t for t in official.load_official_tasks(config.m3tooleval_dir) if t.data.get("env") == name]
            factory = official.make_env
        else:
            if config.split not in env.splits():
                raise InputError(f"{name}: no split {config.split!r} (have {', '.join(env.splits())})")
            tasks = env.tasks(split=config.split)
            factory = None
        if config.limit:
            tasks = tasks[:config.limit]
        for t in tasks:
            build = (lambda t=t, f=factory: f(t)) if factory else (lambda name=name: make_env(name))
            out.append(BenchTask(name, f"{name}/{t.id}", t.id, t.split, t.instruction, build,
                                 lambda src=t.data["evaluation_function"]: evaluate_scorer(src), "m3_tolerant"))
    return out, dropped


def paper_benchmark_envs(config: EvalConfig) -> dict[str, str | None]:
    """For each environment of the run: None where it evaluates what the paper's Table 1 did, else
    why its numbers are not comparable (:func:`sca.paper.not_comparable`)."""
    from sca.paper import not_comparable

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
              overwrite: bool = False, show_progress: bool | None = None) -> dict[str, Any]:
    """`sca eval`: results to `output`, the summary (returned) to ``output.summary.json``."""
    tasks, dropped = benchmark_tasks(config)
    if not tasks:
        raise InputError("no benchmark task to evaluate (check --env, --split and --limit)")
    retried = drop_infra_failures(output) if config.retry_failed and not overwrite else 0
    needs_user = any(t.env_name in TAU_ENVS for t in tasks)
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
        models = models_info(config.executor, config.user or config.executor, config.episode, executor_model,
                             user_model if needs_user else None)
        settings = {**asdict(config), "retried_infra_failures": retried, "dropped_noop_solvable": dropped,
                    "models": models}
        with StageRun("eval", {"results": output}, settings=settings, overwrite=overwrite) as run:
            wanted = {f"{t.task_id}#{trial}": t.env_name for t in tasks for trial in range(config.trials)}
            results = {} if overwrite else _earlier_results(output, wanted)
            todo = [(t, trial) for t in tasks for trial in range(config.trials)
                    if f"{t.task_id}#{trial}" not in run.done_ids]

            def write(record: dict[str, Any]) -> None:
                run.write("results", record)
                results[record["id"]] = {"env": record["env"], "task_id": record["task_id"],
                                         "trial": record["trial"], "reward": record["reward"]}

            if todo:
                with config.sandbox.build(workers=min(config.sandbox.workers, config.concurrency)) as sandbox:
                    run.meta.data["settings"]["sandbox_backend"] = sandbox.backend_name
                    with progress(len(todo), "eval", show_progress) as advance:
                        _run(todo, config, executor_model, user_model if needs_user else None, sandbox, models,
                             write, run.counts, advance)
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
    finally:
        for model in own:
            model.close()
    if output != STDIO:
        write_json_atomic(f"{output}.summary.json", summary)
    return summary


def _run(todo: list[tuple[BenchTask, int]], config: EvalConfig, executor: Any, user: Any | None, sandbox: Any,
         models: dict[str, Any], write: Callable[[dict[str, Any]], None], counts: Counter, advance: Any) -> None:
    tools = None
    if config.episode.action_format == "json":
        names = {t.env_name for t, _ in todo}
        if len(names) > 1:
            raise InputError("--action-format json evaluates one environment at a time")
        tools = [t.openai_schema() for t in todo[0][0].make_env().tools()]

    def episodes() -> Iterator[ExecutorEpisode]:
        for task, trial in todo:
            ep = ExecutorEpisode.start(task_id=task.task_id, trial=trial, instruction=task.instruction,
                                       env=task.make_env(), sandbox=sandbox, config=config.episode,
                                       scorer=task.make_scorer())
            ep.meta["bench"] = task
            yield ep

    source = episodes()

    def finish(ep: ExecutorEpisode) -> None:
        task: BenchTask = ep.meta["bench"]
        record = ep.record(models)
        record["env"] = task.env_name
        record.update(benchmark_task_id=task.benchmark_id, split=task.split, scorer=task.scorer,
                      scorer_detail=record.get("evaluation"))
        counts[f"env:{task.env_name}"] += 1
        counts[f"termination:{record['termination']}"] += 1
        if record["reward"] is None:
            counts["infra"] += 1
        write(record)
        advance(1)

    roles = {AGENT: Role(AGENT, executor, config.executor.sampling(executor_stop(config.episode)), tools=tools),
             USER: Role(USER, user if user is not None else executor, (config.user or config.executor).sampling())}
    run_episodes(lambda: next(source, None), roles, concurrency=config.concurrency, on_finish=finish,
                 workers=max(1, getattr(sandbox, "workers", 1)), seed=config.seed * 7919)
