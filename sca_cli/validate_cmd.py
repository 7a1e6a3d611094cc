"""`sca validate`: keep only the CaT tasks whose code proves them sound."""

from __future__ import annotations

from typing import Optional

import typer

from sca.cat import REASONS, ValidateConfig, checks_of
from sca_cli.common import (
    MAX_TOOL_BYTES,
    MAX_TOOL_CALLS,
    MEMORY_MB,
    OVERWRITE,
    SANDBOX,
    SKIP_INVALID,
    TIMEOUT,
    WORKERS,
    configured,
    err_console,
    examples,
    flag,
    output_or_default,
    sandbox_config,
    stage_errors,
    warn,
)

EXAMPLES = examples(
    "sca validate tasks.raw.jsonl -o tasks.jsonl --rejected tasks.rejected.jsonl",
    "sca validate tasks.raw.jsonl -o tasks.jsonl --sandbox bwrap --workers 2 --timeout 5",
    "cat tasks.raw.jsonl | sca validate - -o - > tasks.jsonl",
    "sca validate tasks.raw.jsonl -o tasks.verification-only.jsonl --verification-only   # Figure 4's baseline",
)


def validate(
    input: str = typer.Argument(..., help="CaT tasks (JSONL); - for stdin."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help=(
        "Valid tasks go here (JSONL); - for stdout [default: runs/validate-INPUT-TIME.jsonl]")),
    rejected: Optional[str] = typer.Option(None, "--rejected", help="Rejected tasks, with the reason, go here."),
    sandbox: str = SANDBOX,
    workers: Optional[int] = WORKERS,
    timeout: float = TIMEOUT,
    min_failure_cases: int = flag(ValidateConfig, "min_failure_cases", "--min-failure-cases"),
    verification_only: bool = flag(ValidateConfig, "verification_only", "--verification-only"),
    audit: bool = flag(ValidateConfig, "audit", "--audit"),
    memory_mb: int = MEMORY_MB,
    max_tool_calls: int = MAX_TOOL_CALLS,
    max_tool_bytes: int = MAX_TOOL_BYTES,
    skip_invalid: bool = SKIP_INVALID,
    overwrite: bool = OVERWRITE,
) -> None:
    """Apply the checks of each task's format: cat tasks every Code-as-Task check (compile, failure cases, no-op,
    solution, failure-case runs), eval-only tasks compile, instruction-only tasks a non-empty instruction."""
    from stages.validate import validate_file

    config = configured(ValidateConfig, sandbox_config(sandbox, workers, timeout, memory_mb, max_tool_calls,
                                                       max_tool_bytes), min_failure_cases=min_failure_cases,
                        verification_only=verification_only, audit=audit)
    output = output_or_default(output, "validate", input)
    with stage_errors():
        summary = validate_file(input, output, rejected=rejected, config=config, skip_invalid=skip_invalid,
                                overwrite=overwrite, on_skip=lambda msg: warn(f"skipped {msg}"))

    from rich.table import Table

    done = summary.accepted + summary.rejected
    table = Table(title="sca validate", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()
    table.add_row("input records", str(summary.total_input), f"{summary.skipped_invalid} invalid lines skipped" if summary.skipped_invalid else "")
    if summary.resumed:
        table.add_row("already done", str(summary.resumed), "resumed from an earlier run")
    table.add_row("accepted", str(summary.accepted), f"{100 * summary.accepted / done:.1f}%" if done else "")
    table.add_row("rejected", str(summary.rejected), "" if rejected else "(not kept: pass --rejected to keep them)")
    for reason, n in summary.reasons.items():
        table.add_row(f"  {reason}", str(n), REASONS.get(reason, ""))
    for fmt, n in summary.by_format.items():
        table.add_row(f"{fmt} tasks", f"{n['accepted']}/{n['accepted'] + n['rejected']}",
                      "accepted; checks: " + ", ".join(checks_of(fmt, config)))
    table.add_row("time", f"{summary.seconds:.1f} s", f"{summary.rate:.1f} tasks/s, sandbox {summary.sandbox or '-'}")
    if summary.total_input == 0:
        err_console.print("found 0 records")
    err_console.print(table)
