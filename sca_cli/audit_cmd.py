"""`sca audit`: how often would a reward of 1 not mean the task was done? Mutants, or hand labels."""

from __future__ import annotations

from typing import Any

import typer

from sca.audit.config import AuditConfig
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
    fail,
    flag,
    output_or_default,
    sandbox_config,
    stage_errors,
    warn,
)

EXAMPLES = examples(
    "sca audit tasks.jsonl -o tasks.audited.jsonl",
    "sca audit tasks.jsonl -o tasks.audited.jsonl --sandbox bwrap --max-mutants 20",
    "sca audit --sheet 100 trajectories.jsonl --tasks tasks.jsonl -o sheet.csv",
    "sca audit --labels sheet.csv -o rates.json",
)


def _interval(value: Any) -> str:
    if not value:
        return "-"
    est, lo, hi = value
    return f"{100 * est:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def audit(
    input: str | None = typer.Argument(
        None, help="Tasks (JSONL) to audit; with --sheet, trajectories; - for stdin. Not with --labels."),
    output: str | None = typer.Option(None, "-o", "--output", help=(
        "Audited tasks (JSONL); with --sheet, the sheet (CSV); with --labels, the rates (JSON). - for stdout "
        "[default: runs/audit-INPUT-TIME.jsonl, audit-sheet-INPUT-TIME.csv, audit-labels-SHEET-TIME.json]")),
    sheet: int | None = typer.Option(None, "--sheet", min=1, help=(
        "Write a labelling sheet of this many trajectories, stratified by reward, instead of auditing tasks.")),
    tasks: str | None = typer.Option(None, "--tasks", help="With --sheet: the tasks, for their evaluate()."),
    labels: str | None = typer.Option(None, "--labels", help=(
        "A labelled sheet (CSV): write its TP/FP/TN/FN and rates per task format instead of auditing tasks.")),
    max_mutants: int = flag(AuditConfig, "max_mutants", "--max-mutants"),
    alternatives: int = flag(AuditConfig, "alternatives_per_argument", "--alternatives"),
    n_boot: int = flag(AuditConfig, "n_boot", "--n-boot"),
    seed: int = flag(AuditConfig, "seed", "--seed"),
    episode_chars: int = flag(AuditConfig, "episode_chars", "--episode-chars"),
    sandbox: str = SANDBOX,
    workers: int | None = WORKERS,
    timeout: float = TIMEOUT,
    memory_mb: int = MEMORY_MB,
    max_tool_calls: int = MAX_TOOL_CALLS,
    max_tool_bytes: int = MAX_TOOL_BYTES,
    skip_invalid: bool = SKIP_INVALID,
    overwrite: bool = OVERWRITE,
) -> None:
    """Measure verifier quality: mutation-test each task's evaluate() with variants of its own solution
    (a write dropped, an argument changed, a write repeated, two swapped, the answer changed); or write a
    labelling sheet (--sheet), or read one back (--labels)."""
    if sheet is not None and labels is not None:
        fail("--sheet and --labels are two different commands: give one")
    if labels is not None and input is not None:
        fail(f"--labels reads the sheet {labels}: give no other input (got {input})")
    if labels is None and input is None:
        fail("give the tasks to audit (or, with --sheet, the trajectories), or --labels SHEET.csv")
    if tasks is not None and sheet is None:
        fail("--tasks goes with --sheet")
    config = configured(AuditConfig, sandbox_config(sandbox, workers, timeout, memory_mb, max_tool_calls,
                                                    max_tool_bytes), max_mutants=max_mutants,
                        alternatives_per_argument=alternatives, n_boot=n_boot, seed=seed,
                        episode_chars=episode_chars)
    if labels is not None:
        _labels(labels, output_or_default(output, "audit-labels", labels, ".json"), config)
    elif sheet is not None:
        _sheet(input, output_or_default(output, "audit-sheet", input, ".csv"), sheet, tasks, config, skip_invalid)
    else:
        _audit(input, output_or_default(output, "audit", input), config, skip_invalid, overwrite)


def _audit(input: str, output: str, config: AuditConfig, skip_invalid: bool, overwrite: bool) -> None:
    from stages.audit import audit_file

    with stage_errors():
        summary = audit_file(input, output, config=config, skip_invalid=skip_invalid, overwrite=overwrite,
                             on_skip=lambda msg: warn(f"skipped {msg}"))

    from rich.table import Table

    table = Table(title="sca audit: lax verifiers (a mutant of the solution with another outcome passes)",
                  title_justify="left")
    for name, justify in (("pool", "left"), ("tasks", "right"), ("audited", "right"), ("skipped", "right"),
                          ("lax", "right"), ("mutants", "right"), ("lax rate [95% CI]", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    pools = {**{f"format {k}": v for k, v in summary.rates["by_format"].items()}, "all": summary.rates["all"]}
    for name, p in pools.items():
        table.add_row(name, str(p["tasks"]), str(p["audited"]), str(p["skipped"]), str(p["lax"]),
                      str(p["mutants"]), _interval(p["lax_rate"]))
    if summary.total_input == 0:
        err_console.print("found 0 records")
    err_console.print(table)
    err_console.print(f"{summary.audited} audited now, {summary.resumed} resumed, "
                      f"{summary.skipped_invalid} invalid lines skipped; {summary.seconds:.1f} s "
                      f"({summary.rate:.2f} tasks/s, sandbox {summary.sandbox or '-'})")


def _sheet(input: str, output: str, n: int, tasks: str | None, config: AuditConfig, skip_invalid: bool) -> None:
    from stages.audit import sheet_file

    with stage_errors():
        s = sheet_file(input, output, n, tasks_path=tasks, config=config, skip_invalid=skip_invalid,
                       on_skip=lambda msg: warn(f"skipped {msg}"))
    if s["rows"] < n:
        warn(f"{s['rows']} trajectories with a reward, fewer than the {n} asked for")
    if s["without_evaluate"]:
        warn(f"{s['without_evaluate']} rows without evaluate(): pass the tasks with --tasks")
    err_console.print(f"sheet: {s['rows']} rows ({s['reward_1']} with reward 1, {s['reward_0']} with reward 0) "
                      f"to {output}; write 1 (done) or 0 (not done) in the label column, then "
                      f"`sca audit --labels {output} -o rates.json`")


def _labels(sheet: str, output: str, config: AuditConfig) -> None:
    from stages.audit import labels_file

    with stage_errors():
        rates = labels_file(sheet, output, config=config)

    from rich.table import Table

    table = Table(title="sca audit --labels: reward against the hand labels (Figure 4)", title_justify="left")
    for name in ("format", "n", "TP", "FP", "TN", "FN", "FP rate", "FN rate", "precision", "recall"):
        table.add_column(name, justify="left" if name == "format" else "right")
    for fmt, p in {**rates["by_format"], "all": rates["all"]}.items():
        table.add_row(fmt, str(p["n"]), str(p["tp"]), str(p["fp"]), str(p["tn"]), str(p["fn"]),
                      *(_interval(p[k]) for k in ("false_positive_rate", "false_negative_rate", "precision",
                                                  "recall")))
    err_console.print(table)
    if rates["unlabelled"]:
        warn(f"{rates['unlabelled']} rows without a label were left out")
