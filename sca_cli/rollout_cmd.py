"""`sca rollout`: the executor solves CaT tasks, several trials each, scored by each task's own code or by a judge."""

from __future__ import annotations

from typing import List, Optional

import typer

from sca.inference.config import executor_defaults
from sca_cli.common import (
    ACTION_FORMAT,
    BASE_URL,
    JUDGE_BACKEND,
    JUDGE_BASE_URL,
    JUDGE_MODEL,
    JUDGE_TEMPERATURE,
    MAX_STEPS,
    MAX_TOOL_BYTES,
    MAX_TOOL_CALLS,
    MEMORY_MB,
    OVERWRITE,
    SANDBOX,
    SKIP_INVALID,
    TIMEOUT,
    USER_BACKEND,
    USER_BASE_URL,
    USER_MODEL,
    USER_TEMPERATURE,
    WORKERS,
    configured,
    err_console,
    examples,
    executor_configs,
    fail,
    flag,
    judge_config,
    judge_flags_set,
    model_flag,
    output_or_default,
    closing_metrics,
    sandbox_config,
    split_ids,
    stage_errors,
    warn,
)
from sca.metrics_log import REPORT_TO_HELP
from stages.config import RolloutConfig

_EXECUTOR = executor_defaults()
#: old flag names, still taken (with a warning) for one release
RENAMED = {"--k": "--trials"}

EXAMPLES = examples(
    "sca rollout tasks.jsonl -o trajectories.jsonl --trials 16",
    "sca rollout tasks.jsonl -o traj.jsonl --backend vllm --model meta-llama/Llama-3.1-8B-Instruct",
    "sca rollout tasks.jsonl -o traj.jsonl --backend openai --base-url http://gpu1:8000/v1 --model llama-8b "
    "--user-backend openai --user-base-url http://gpu2:8000/v1 --user-model llama-70b",
    "sca rollout tasks.jsonl -o traj.jsonl --retry-failed      # rerun the infrastructure failures",
    "sca rollout pae_tasks.jsonl -o traj.jsonl --reward judge --judge-backend openai --judge-base-url "
    "http://gpu2:8000/v1 --judge-model llama-70b   # instruction-only tasks (PAE): a judge's verdict",
    "sca rollout tasks.jsonl -o traj.jsonl --trials 2 --max-new-tokens 64   # bundled model, CPU",
    "sca rollout tasks.jsonl -o traj.jsonl --task-ids ret-1,ret-7 --report-to tensorboard -q",
    "sca rollout tasks.jsonl -o traj.jsonl --config rollout.yaml --temperature 0   # the file, one flag changed",
)


def rollout(
    tasks: str = typer.Argument(..., help="Valid tasks of any format (JSONL, e.g. from sca validate); - for stdin."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help=(
        "Trajectories (JSONL), one per (task, trial); - for stdout [default: runs/rollout-TASKS-TIME.jsonl]")),
    trials: int = flag(RolloutConfig, "trials", "--trials"),
    task_ids: Optional[List[str]] = flag(RolloutConfig, "task_ids", "--task-ids"),
    model: Optional[str] = model_flag(what="Executor: "),
    backend: str = flag(_EXECUTOR, "backend", "--backend"),
    base_url: Optional[List[str]] = BASE_URL,
    user_model: Optional[str] = USER_MODEL,
    user_backend: Optional[str] = USER_BACKEND,
    user_base_url: Optional[List[str]] = USER_BASE_URL,
    user_temperature: Optional[float] = USER_TEMPERATURE,
    reward: str = flag(RolloutConfig, "reward", "--reward"),
    judge_model: Optional[str] = JUDGE_MODEL,
    judge_backend: Optional[str] = JUDGE_BACKEND,
    judge_base_url: Optional[List[str]] = JUDGE_BASE_URL,
    judge_temperature: Optional[float] = JUDGE_TEMPERATURE,
    action_format: str = ACTION_FORMAT,
    max_steps: int = MAX_STEPS,
    temperature: float = flag(_EXECUTOR, "temperature", "--temperature"),
    top_p: float = flag(_EXECUTOR, "top_p", "--top-p"),
    max_new_tokens: int = flag(_EXECUTOR, "max_new_tokens", "--max-new-tokens"),
    concurrency: int = flag(RolloutConfig, "concurrency", "--concurrency"),
    seed: int = flag(RolloutConfig, "seed", "--seed"),
    sandbox: str = SANDBOX,
    workers: Optional[int] = WORKERS,
    timeout: float = TIMEOUT,
    memory_mb: int = MEMORY_MB,
    max_tool_calls: int = MAX_TOOL_CALLS,
    max_tool_bytes: int = MAX_TOOL_BYTES,
    retry_failed: bool = flag(RolloutConfig, "retry_failed", "--retry-failed"),
    keep_system_prompt: bool = flag(RolloutConfig, "keep_system_prompt", "--keep-system-prompt"),
    report_to: Optional[str] = typer.Option(None, "--report-to", help=REPORT_TO_HELP),
    skip_invalid: bool = SKIP_INVALID,
    overwrite: bool = OVERWRITE,
) -> None:
    """Solve every task TRIALS times with the executor (and a simulated user where the environment has one)."""
    from dataclasses import asdict

    from sca.metrics_log import open_metrics_log
    from stages.rollout import rollout_file

    executor, user, episode = executor_configs(model, backend, base_url, temperature, top_p, max_new_tokens,
                                               user_model, user_backend, user_base_url, user_temperature,
                                               action_format, max_steps)
    if reward != "judge" and judge_flags_set(judge_model, judge_backend, judge_base_url, judge_temperature):
        fail("--judge-model, --judge-backend, --judge-base-url and --judge-temperature go with --reward judge")
    judge = judge_config(executor, judge_model, judge_backend, judge_base_url, judge_temperature)
    config = configured(RolloutConfig, trials=trials, task_ids=split_ids(task_ids), concurrency=concurrency,
                        seed=seed, executor=executor, user=user, episode=episode, retry_failed=retry_failed,
                        reward=reward, judge=judge, keep_system_prompt=keep_system_prompt,
                        sandbox=sandbox_config(sandbox, workers, timeout, memory_mb, max_tool_calls, max_tool_bytes))
    output = output_or_default(output, "rollout", tasks)
    with stage_errors():
        metrics = open_metrics_log(report_to, stage="rollout", output=output, settings=asdict(config))
        with closing_metrics(metrics):
            s = rollout_file(tasks, output, config, overwrite=overwrite, skip_invalid=skip_invalid,
                             on_skip=lambda msg: warn(f"skipped {msg}"), metrics=metrics)
    if metrics is not None:  # the run's own scalars, and the sinks closed
        metrics.finish({"pass@1": s.pass1, f"pass@{trials}": s.pass_k, "mean_reward": s.mean_reward,
                        "tokens": sum(s.tokens.values())})

    from rich.table import Table

    t = Table(title="sca rollout", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_column()
    if s.resumed:
        t.add_row("trajectories, earlier runs", str(s.resumed), "resumed")
    t.add_row("trajectories", str(s.trajectories), f"{trials} trials per task")
    t.add_row("tasks", str(s.tasks), f"solved by none {s.solved_none}, some {s.solved_some}, all {s.solved_all}")
    t.add_row("mean reward", f"{s.mean_reward:.3f}", f"{s.rewarded} of {s.scored} scored trials")
    t.add_row("Pass@1", f"{100 * s.pass1:.1f}%", "mean over tasks of the success rate")
    if trials > 1:  # with one trial Pass@k is Pass@1
        t.add_row(f"Pass@{trials}", f"{100 * s.pass_k:.1f}%", "unbiased estimator, same trials")
    t.add_row("infrastructure failures", str(s.infra_failures),
              ", ".join(f"{kind} {n}" for kind, n in sorted(s.infra.items())) + ("; rerun with --retry-failed" if s.infra_failures else ""))
    if s.judge:
        t.add_row("judge verdicts", str(s.judge.get("ok", 0)),
                  f"no verdict after asking twice: {s.judge.get('no_verdict', 0)} (scored 0)")
    for reason, n in sorted(s.terminations.items(), key=lambda kv: -kv[1]):
        t.add_row(f"  ended: {reason}", str(n), "")
    tok = s.tokens
    t.add_row("tokens", f"{sum(tok.values()):,}",
              f"executor {tok.get('executor_prompt', 0):,} prompt + {tok.get('executor_completion', 0):,} generated; "
              f"user {tok.get('user_prompt', 0):,} + {tok.get('user_completion', 0):,}")
    t.add_row("time", f"{s.seconds:.1f} s", f"generation {s.generate_s:.1f} s, sandbox {s.sandbox_s:.1f} s")
    err_console.print(t)
