"""`sca report`: tables on the terminal, plots and one Markdown page from the stages' outputs."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import typer

from sca_cli.common import err_console, examples, flag, stage_errors, warn
from stages.config import ReportConfig

#: old flag names, still taken (with a warning) for one release
RENAMED = {"--k": "--pass-k"}

EXAMPLES = examples(
    "sca report runs/retail/                                  # every *.jsonl in it, train logs below it",
    "sca report tasks.raw.jsonl tasks.jsonl traj.jsonl -o report/",
    "sca report eval/base.jsonl eval/rft.jsonl ckpt/rft/train_log.jsonl",
    "sca report eval/ --compare eval/base.jsonl eval/rft.jsonl   # B against A, paired by task",
    "sca report runs/ablations/      # its <format>/ directories too: the comparison across task formats",
    "sca report audit/cat.jsonl audit/rates.json   # sca audit's lax rates and hand-label rates (Figure 4)",
)


def report(
    inputs: Optional[List[str]] = typer.Argument(
        None, metavar="RUN_OR_FILE",
        help="Outputs of sca propose / validate / rollout / eval / audit, train_log.jsonl files, rates.json of "
             "sca audit --labels, or directories of them."),
    output: str = flag(ReportConfig, "output", "-o", "--output"),
    compare: Optional[Tuple[str, str]] = typer.Option(
        None, "--compare", metavar="A B", help="Two eval results files: B against A, paired by task, per environment."),
    pass_k: Optional[int] = flag(ReportConfig, "pass_k", "--pass-k"),
    n_boot: int = flag(ReportConfig, "n_boot", "--n-boot"),
    seed: int = flag(ReportConfig, "seed", "--seed"),
) -> None:
    """Report on runs: validation funnel, rewards per task, Pass@k per environment, training curves, the
    comparison across task formats, the verifier audit."""
    from sca.report.render import Table
    from stages.report import report as make_report

    with stage_errors():
        rep = make_report(list(inputs or []), output, compare=compare, k=pass_k, n_boot=n_boot, seed=seed)

    from rich.rule import Rule

    for heading, items in rep.sections:
        if heading == "Notes":
            continue  # printed below, as warnings
        err_console.print(Rule(heading, align="left"))
        for item in items:
            if isinstance(item, Table):
                if item.terminal:
                    err_console.print(_rich_table(item))
            elif isinstance(item, str) and item.startswith("* "):
                err_console.print(item[2:], soft_wrap=True, markup=False)
            elif isinstance(item, str) and item.startswith("No data"):
                err_console.print(item, soft_wrap=True, markup=False)
    for note in rep.notes:
        warn(note)
    err_console.print(f"wrote {rep.readme} ({len(rep.tables)} tables, {len(rep.plots)} plots)", soft_wrap=True,
                      markup=False)


def _rich_table(t: Any) -> Any:
    from rich.table import Table

    table = Table(title=t.title, title_justify="left", caption=t.note or None, caption_justify="left")
    for col in t.columns:
        table.add_column(col, overflow="fold")
    for row in t.rows:
        table.add_row(*[str(c) for c in row])
    return table
