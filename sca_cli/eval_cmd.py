"""`sca eval`: the executor on the real benchmarks, scored by their official scorers."""

from __future__ import annotations

from typing import List, Optional

import typer

from sca.inference.config import executor_defaults
from sca_cli.common import (
    ACTION_FORMAT,
    BASE_URL,
    MAX_STEPS,
    MAX_TOOL_BYTES,
    MAX_TOOL_CALLS,
    MEMORY_MB,
    OVERWRITE,
    SANDBOX,
    TIMEOUT,
    USER_BACKEND,
    USER_BASE_URL,
    USER_MODEL,
    USER_TEMPERATURE,
    WORKERS,
    closing_metrics,
    configured,
    err_console,
    examples,
    executor_configs,
    flag,
    model_flag,
    output_or_default,
    sandbox_config,
    split_ids,
    stage_errors,
)
from sca.metrics_log import REPORT_TO_HELP
from stages.config import EvalConfig

_EXECUTOR = executor_defaults()
#: old flag names, still taken (with a warning) for one release
RENAMED = {"--k": "--pass-k"}

EXAMPLES = examples(
    "sca eval --env retail --split test --trials 4 -o results.jsonl",
    "sca eval --env all --model ckpt/ --backend vllm --trials 4 -o results.jsonl --user-backend openai "
    "--user-base-url http://judge:8000/v1 --user-model gpt-4o",
    "sca eval --env airline --drop-noop-solvable -o air.jsonl            # as the paper did",
    "sca eval --env calculation --m3tooleval-dir ~/src/code-act -o calc.jsonl   # the official 48 tasks",
    "sca eval --env calculation --limit 2 --trials 1 --max-new-tokens 64 -o smoke.jsonl   # bundled model, CPU",
    "sca eval --env retail --task-ids retail/3,retail/17 --trials 4 --pass-k 2 -o two.jsonl --report-to wandb",
)


def eval_(
    env: List[str] = flag(EvalConfig, "envs", "--env"),
    split: str = flag(EvalConfig, "split", "--split"),
    output: Optional[str] = typer.Option(None, "-o", "--output", help=(
        "Per-trial results (JSONL); a summary JSON goes beside it [default: runs/eval-ENVS-TIME.jsonl]")),
    trials: int = flag(EvalConfig, "trials", "--trials"),
    pass_k: Optional[int] = flag(EvalConfig, "pass_k", "--pass-k"),
    model: Optional[str] = model_flag(what="Executor: "),
    backend: str = flag(_EXECUTOR, "backend", "--backend"),
    base_url: Optional[List[str]] = BASE_URL,
    user_model: Optional[str] = USER_MODEL,
    user_backend: Optional[str] = USER_BACKEND,
    user_base_url: Optional[List[str]] = USER_BASE_URL,
    user_temperature: Optional[float] = USER_TEMPERATURE,
    action_format: str = ACTION_FORMAT,
    max_steps: int = MAX_STEPS,
    temperature: float = flag(_EXECUTOR, "temperature", "--temperature"),
    top_p: float = flag(_EXECUTOR, "top_p", "--top-p"),
    max_new_tokens: int = flag(_EXECUTOR, "max_new_tokens", "--max-new-tokens"),
    concurrency: int = flag(EvalConfig, "concurrency", "--concurrency"),
    seed: int = flag(EvalConfig, "seed", "--seed"),
    drop_noop_solvable: bool = flag(EvalConfig, "drop_noop_solvable", "--drop-noop-solvable"),
    m3tooleval_dir: Optional[str] = flag(EvalConfig, "m3tooleval_dir", "--m3tooleval-dir"),
    limit: Optional[int] = flag(EvalConfig, "limit", "--limit"),
    task_ids: Optional[List[str]] = flag(EvalConfig, "task_ids", "--task-ids"),
    sandbox: str = SANDBOX,
    workers: Optional[int] = WORKERS,
    timeout: float = TIMEOUT,
    memory_mb: int = MEMORY_MB,
    max_tool_calls: int = MAX_TOOL_CALLS,
    max_tool_bytes: int = MAX_TOOL_BYTES,
    retry_failed: bool = flag(EvalConfig, "retry_failed", "--retry-failed"),
    keep_system_prompt: bool = flag(EvalConfig, "keep_system_prompt", "--keep-system-prompt"),
    report_to: Optional[str] = typer.Option(None, "--report-to", help=REPORT_TO_HELP),
    overwrite: bool = OVERWRITE,
) -> None:
    """Measure Pass@1 / Pass@k on the benchmarks (tau2's evaluator, M3ToolEval's tasks), with confidence intervals."""
    from dataclasses import asdict

    from sca.metrics_log import open_metrics_log
    from stages.eval import eval_file

    executor, user, episode = executor_configs(model, backend, base_url, temperature, top_p, max_new_tokens,
                                               user_model, user_backend, user_base_url, user_temperature,
                                               action_format, max_steps)
    config = configured(EvalConfig, envs=list(env), split=split, trials=trials, pass_k=pass_k, concurrency=concurrency,
                        seed=seed, executor=executor, user=user, episode=episode,
                        sandbox=sandbox_config(sandbox, workers, timeout, memory_mb, max_tool_calls, max_tool_bytes),
                        drop_noop_solvable=drop_noop_solvable, m3tooleval_dir=m3tooleval_dir, limit=limit,
                        task_ids=split_ids(task_ids),
                        retry_failed=retry_failed, keep_system_prompt=keep_system_prompt)
    output = output_or_default(output, "eval", "+".join(config.envs))
    with stage_errors():
        metrics = open_metrics_log(report_to, stage="eval", output=output, settings=asdict(config))
        with closing_metrics(metrics):
            summary = eval_file(config, output, overwrite=overwrite, metrics=metrics)
    if metrics is not None:  # each environment's metrics, and the sinks closed
        k = summary["k"]
        metrics.finish({f"{env}/{name}": m[key] for env, m in summary["envs"].items() if "pass1" in m
                        for key, name in (("pass1", "pass@1"), ("pass_k", f"pass@{k}"), ("pass_hat_k", f"pass^{k}"))})
    print_summary(summary)


def print_summary(summary: dict) -> None:
    """One table: each environment's Pass@1 / Pass@k / pass^k with 95% intervals, and the paper's row."""
    from rich.table import Table

    k = summary["k"]
    paper = summary.get("paper")
    t = Table(title=f"sca eval: {summary.get('model')}, {summary['trials']} trials per task, split {summary['split']}",
              title_justify="left")
    # with k = 1, Pass@k and pass^k are Pass@1: one column, not three with two names for one number
    metrics = ("Pass@1", f"Pass@{k}", f"pass^{k}") if k > 1 else ("Pass@1",)
    for col in ("environment", "tasks", "trials", *metrics, "excluded"):
        t.add_column(col, justify="left" if col == "environment" else "right")
    if paper:
        t.add_column(f"paper ({paper['model']}) Pass@1 / Pass@4", justify="right")

    def pct(value, ci):
        return f"{100 * value:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"

    for env, m in summary["envs"].items():
        dropped = summary.get("dropped_noop_solvable", {}).get(env)
        name = env + (f" (-{dropped} no-op)" if dropped else "")
        if "pass1" not in m:
            row = [name, str(m.get("tasks", 0)), "0", *["-"] * len(metrics), str(m.get("excluded", 0))]
        else:
            row = [name, str(m["tasks"]), str(m["trials"]), pct(m["pass1"], m["pass1_ci"]),
                   pct(m["pass_k"], m["pass_k_ci"]), pct(m["pass_hat_k"], m["pass_hat_k_ci"])][:3 + len(metrics)]
            row.append(str(m["excluded"]))
        if paper:
            ref = paper["table1"].get(env)
            row.append(f"{ref['pass1']:.1f} / {ref['pass4']:.1f}" if ref else "-")
        t.add_row(*row)
    err_console.print(t)
    err_console.print("95% intervals: bootstrap over tasks. Excluded: infrastructure failures (reward null).")
    for env, why in (paper or {}).get("not_comparable", {}).items():
        err_console.print(f"no paper figure beside {env}: {why}")
