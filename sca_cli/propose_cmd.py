"""`sca propose`: the challenger explores an environment and writes CaT tasks."""

from __future__ import annotations

from typing import List, Optional

import typer

from sca.cat import ValidateConfig
from sca.inference.config import challenger_defaults
from sca_cli.common import (
    BASE_URL,
    MAX_TOOL_BYTES,
    MAX_TOOL_CALLS,
    MEMORY_MB,
    OVERWRITE,
    SANDBOX,
    TIMEOUT,
    WORKERS,
    configured,
    err_console,
    examples,
    fail,
    flag,
    model_config,
    model_flag,
    output_or_default,
    sandbox_config,
    stage_errors,
)
from stages.config import ProposeConfig

_CHALLENGER = challenger_defaults()

EXAMPLES = examples(
    "sca propose --env retail --n 800 -o tasks.raw.jsonl --rejected episodes.failed.jsonl",
    "sca propose --env airline --n 50 -o air.jsonl --backend vllm --model meta-llama/Llama-3.1-8B-Instruct",
    "sca propose --env calculation --n 200 -o calc.jsonl --backend openai "
    "--base-url http://gpu1:8000/v1 --base-url http://gpu2:8000/v1 --model llama-3.1-8b",
    "sca propose --n 2 --max-episodes 4 --max-steps 3 -o smoke.jsonl   # bundled model, CPU",
    "sca propose --env retail --n 800 --task-format eval-only -o tasks.eval-only.raw.jsonl   # SCA no filtering",
    "sca propose --env retail --n 800 --task-format instruction-only -o tasks.pae.jsonl   # PAE",
)


def propose(
    env: str = flag(ProposeConfig, "env", "--env"),
    n: int = flag(ProposeConfig, "n", "--n"),
    task_format: str = flag(ProposeConfig, "task_format", "--task-format"),
    output: Optional[str] = typer.Option(None, "-o", "--output", help=(
        "Valid tasks (CaT JSONL); - for stdout [default: runs/propose-ENV-TIME.jsonl]")),
    rejected: Optional[str] = typer.Option(None, "--rejected", help="Failed episodes, with transcripts, go here."),
    model: Optional[str] = model_flag(),
    backend: str = flag(_CHALLENGER, "backend", "--backend"),
    base_url: Optional[List[str]] = BASE_URL,
    max_steps: int = flag(ProposeConfig, "max_steps", "--max-steps"),
    max_episodes: Optional[int] = flag(ProposeConfig, "max_episodes", "--max-episodes"),
    concurrency: int = flag(ProposeConfig, "concurrency", "--concurrency"),
    seed: int = flag(ProposeConfig, "seed", "--seed"),
    temperature: float = flag(_CHALLENGER, "temperature", "--temperature"),
    top_p: float = flag(_CHALLENGER, "top_p", "--top-p"),
    max_new_tokens: int = flag(_CHALLENGER, "max_new_tokens", "--max-new-tokens"),
    sandbox: str = SANDBOX,
    workers: Optional[int] = WORKERS,
    timeout: float = TIMEOUT,
    memory_mb: int = MEMORY_MB,
    max_tool_calls: int = MAX_TOOL_CALLS,
    max_tool_bytes: int = MAX_TOOL_BYTES,
    min_failure_cases: int = flag(ValidateConfig, "min_failure_cases", "--min-failure-cases"),
    overwrite: bool = OVERWRITE,
) -> None:
    """Run challenger episodes until N tasks pass the checks of their format (cat: every CaT check)."""
    from envs import env_names
    from stages.propose import propose_file

    if env not in env_names():
        fail(f"unknown environment {env!r} (available: {', '.join(env_names())})")
    vcfg = configured(ValidateConfig, sandbox_config(sandbox, workers, timeout, memory_mb, max_tool_calls,
                                                     max_tool_bytes), min_failure_cases=min_failure_cases)
    mcfg = model_config(model, backend, base_url, temperature, top_p, max_new_tokens)
    config = configured(ProposeConfig, env=env, n=n, max_episodes=max_episodes, max_steps=max_steps,
                        concurrency=concurrency, seed=seed, model=mcfg, validate=vcfg, task_format=task_format)
    output = output_or_default(output, "propose", env)
    with stage_errors():
        summary = propose_file(config, output, rejected=rejected, overwrite=overwrite)

    from rich.table import Table

    t = Table(title=f"sca propose ({env}, {summary.task_format} tasks)", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_column()
    if summary.resumed_valid:
        t.add_row("valid, earlier runs", str(summary.resumed_valid), "resumed")
    t.add_row("episodes", str(summary.episodes), f"budget {config.episode_budget}")
    t.add_row("valid tasks", str(summary.valid), f"yield {100 * summary.yield_rate:.1f}%")
    t.add_row("failed episodes", str(summary.failed), "" if rejected else "(not kept: pass --rejected)")
    for reason, k in summary.reasons.items():
        t.add_row(f"  {reason}", str(k), "")
    t.add_row("tokens", f"{summary.prompt_tokens + summary.completion_tokens:,}",
              f"{summary.prompt_tokens:,} prompt, {summary.completion_tokens:,} generated")
    rate = summary.completion_tokens / summary.generate_s if summary.generate_s else 0
    t.add_row("time", f"{summary.seconds:.1f} s",
              f"generation {summary.generate_s:.1f} s ({rate:.0f} tok/s), sandbox {summary.sandbox_s:.1f} s")
    err_console.print(t)
