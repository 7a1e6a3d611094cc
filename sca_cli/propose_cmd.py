"""`sca propose`: the challenger explores an environment and writes CaT tasks."""

from __future__ import annotations

from typing import List, Optional

import typer

from sca.inference.config import challenger_defaults
from sca_cli.common import (
    MAX_TOOL_BYTES,
    MAX_TOOL_CALLS,
    MEMORY_MB,
    OVERWRITE,
    SANDBOX,
    TIMEOUT,
    WORKERS,
    backend_flag,
    base_url_flag,
    err_console,
    examples,
    fail,
    max_new_tokens_flag,
    model_config,
    model_flag,
    sandbox_config,
    temperature_flag,
    top_p_flag,
)

_CHALLENGER = challenger_defaults()

EXAMPLES = examples(
    "sca propose --env retail --n 800 -o tasks.raw.jsonl --rejected episodes.failed.jsonl",
    "sca propose --env airline --n 50 -o air.jsonl --backend vllm --model meta-llama/Llama-3.1-8B-Instruct",
    "sca propose --env calculation --n 200 -o calc.jsonl --backend openai "
    "--base-url http://gpu1:8000/v1 --base-url http://gpu2:8000/v1 --model llama-3.1-8b",
    "sca propose --n 2 --max-episodes 4 --max-steps 3 -o smoke.jsonl   # bundled model, CPU",
)


def propose(
    env: str = typer.Option("retail", "--env", help="Environment to write tasks for (see `sca envs`)."),
    n: int = typer.Option(800, "--n", min=1, help="Valid tasks wanted."),
    output: str = typer.Option(..., "-o", "--output", help="Valid tasks (CaT JSONL); - for stdout."),
    rejected: Optional[str] = typer.Option(None, "--rejected", help="Failed episodes, with transcripts, go here."),
    model: Optional[str] = model_flag(),
    backend: str = backend_flag(_CHALLENGER),
    base_url: Optional[List[str]] = base_url_flag(),
    max_steps: int = typer.Option(15, "--max-steps", min=1, help="Replies per episode (the paper's cap is 15)."),
    max_episodes: Optional[int] = typer.Option(None, "--max-episodes", min=1, help="Give up after this many episodes [default: 20 x n]."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Episodes stepping together (one batched generation per step)."),
    seed: int = typer.Option(0, "--seed", help="Seed of sampling and of the users sampled for tasks."),
    temperature: float = temperature_flag(_CHALLENGER),
    top_p: float = top_p_flag(_CHALLENGER),
    max_new_tokens: int = max_new_tokens_flag(_CHALLENGER),
    sandbox: str = SANDBOX,
    workers: Optional[int] = WORKERS,
    timeout: float = TIMEOUT,
    memory_mb: int = MEMORY_MB,
    max_tool_calls: int = MAX_TOOL_CALLS,
    max_tool_bytes: int = MAX_TOOL_BYTES,
    min_failure_cases: int = typer.Option(3, "--min-failure-cases", min=0),
    overwrite: bool = OVERWRITE,
) -> None:
    """Run challenger episodes until N tasks pass every CaT check."""
    from envs import UnknownEnvironmentError, env_names
    from sandbox import SandboxUnavailable
    from sca.records.io import InputError
    from sca.inference import InferenceError
    from stages.propose import ProposeConfig, propose_file
    from sca.cat import ValidateConfig

    if env not in env_names():
        fail(f"unknown environment {env!r} (available: {', '.join(env_names())})")
    vcfg = ValidateConfig(sandbox_config(sandbox, workers, timeout, memory_mb, max_tool_calls, max_tool_bytes),
                          min_failure_cases=min_failure_cases)
    mcfg = model_config(model, backend, base_url, temperature, top_p, max_new_tokens)
    config = ProposeConfig(env=env, n=n, max_episodes=max_episodes, max_steps=max_steps, concurrency=concurrency,
                           seed=seed, model=mcfg, validate=vcfg)
    try:
        summary = propose_file(config, output, rejected=rejected, overwrite=overwrite)
    except (InputError, UnknownEnvironmentError) as e:
        fail(str(e))
    except SandboxUnavailable as e:
        fail(f"sandbox unavailable: {e}")
    except InferenceError as e:
        fail(f"model: {e}", code=1)

    from rich.table import Table

    t = Table(title=f"sca propose ({env})", title_justify="left", show_header=False)
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
