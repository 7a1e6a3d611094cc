"""The page of a report: ``OUT_DIR/README.md``, its sections in order, with the PNG plots beside it.

The sections (each present when its kind of input is): the inputs, the validation funnel (with
the rule that places a record, and the rejection reasons), rewards per task, Pass@k per
environment, training, the comparison, and the notes (what was skipped, missing or not
comparable). Every table and plot is on the page; :attr:`Report.sections` holds the same items
for the terminal. Without matplotlib the page has its tables and no plots, and says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sca.records.io import InputError
from sca.report import render
from sca.report.inputs import Source
from sca.report.render import Plot, Table
from sca.report.sections import (
    CompareRow,
    Funnel,
    PassRow,
    RewardStats,
    Sections,
    TrainCurve,
)


@dataclass
class Report:
    """What a report found and wrote: the numbers, the tables, the plots, the page."""

    out_dir: Path
    readme: Path
    sources: list[Source]
    funnels: list[Funnel] = field(default_factory=list)
    rewards: list[RewardStats] = field(default_factory=list)
    pass_rows: list[PassRow] = field(default_factory=list)
    curves: list[TrainCurve] = field(default_factory=list)
    comparisons: list[CompareRow] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: list[tuple[str, list[Any]]] = field(default_factory=list)  # (heading, [Table | Plot | str])

    @property
    def verdicts(self) -> list[str]:
        return [c.comparison.verdict for c in self.comparisons if c.comparison is not None]


FUNNEL_TEXT = (
    "Every record of a propose or validate run is one proposed task (for sca propose, one challenger episode, "
    "placed by the validation of its last answer). A record reaches **code runs** when every code string "
    "compiled and the solution, and the evaluate() after it, ran without error; **solution passes** when "
    "evaluate() also returned True for the solution, and for its answer as an executor would type it; "
    "**failure cases fail** when the task is valid. The failed check is `validation.failed_check` (else the "
    "first `checks` entry with `ok` false, else the check of its `reason`); a task rejected before its "
    "solution ran has not shown that its code runs. A propose episode without any `validation` never gave an "
    "ANSWER: it is proposed but has no code. Tasks sca propose dropped as duplicates passed every check: valid."
)


def make_dir(out_dir: str | Path) -> Path:
    """The report directory, made if missing."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot make the report directory: {e.strerror}") from None
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "run"


def write(out: Path, named: Sequence[Any], sources: list[Source], notes: list[str], numbers: Sections, *,
          plots: bool = True) -> Report:
    """Draw every section of `numbers` into `out` (tables, and plots unless `plots` is false or
    matplotlib is missing) and write ``out/README.md``; `named`: the inputs as given, for its first line."""
    rep = Report(out_dir=out, readme=out / "README.md", sources=sources, notes=list(notes),
                 funnels=numbers.funnels, rewards=[stats for _, stats in numbers.rewards],
                 pass_rows=numbers.pass_rows, curves=numbers.curves, comparisons=numbers.comparisons)
    draw = plots
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            draw = False
            rep.notes.append("matplotlib is not installed: no plots written (pip install matplotlib)")
    used_names: set[str] = set()

    def plot_path(stem: str) -> Path:
        name, i = stem, 2
        while name in used_names:
            name, i = f"{stem}_{i}", i + 1
        used_names.add(name)
        return out / f"{name}.png"

    def add_plot(section: list[Any], stem: str, caption: str, fn: Callable[[Path], None]) -> None:
        if not draw:
            return
        path = plot_path(stem)
        fn(path)
        p = Plot(path, caption)
        rep.plots.append(p)
        section.append(p)

    def add_table(section: list[Any], t: Table) -> None:
        rep.tables.append(t)
        section.append(t)

    section: list[Any] = []
    add_table(section, render.inputs_table(sources))
    rep.sections.append(("Inputs", section))

    if rep.funnels:
        section = [FUNNEL_TEXT]
        add_table(section, render.rules_table())
        for t in render.funnel_tables(rep.funnels):
            add_table(section, t)
        add_plot(section, "funnel", "Validation funnel: % of proposed tasks reaching each stage (count on each bar); "
                 "dashed: the paper's Llama-3.1-8B retail figures (47.7% / 9.5% / 5.2%).",
                 lambda p: render.plot_funnel(rep.funnels, p))
        rep.sections.append(("Validation funnel", section))

    if numbers.rewards:
        section = []
        add_table(section, render.reward_table(rep.rewards))
        for s, stats in numbers.rewards:
            if stats.tasks:
                add_plot(section, f"rewards_{_slug(s.path.stem)}",
                         f"Per-task success rates of {stats.name} ({stats.file}): {stats.tasks} tasks, "
                         f"{stats.trials} valid trials; red none, blue some, green all trials solved.",
                         lambda p, st=stats: render.plot_rewards(st, p))
            else:
                rep.notes.append(f"{stats.file}: no task has a valid trial: no reward plot")
        rep.sections.append(("Rewards per task", section))

    if any(s.kind == "eval" for s in sources):
        section = []
        rep.notes += numbers.pass_notes
        add_table(section, render.pass_table(rep.pass_rows))
        if rep.pass_rows:
            add_plot(section, "pass_at_k", "Pass@1, Pass@k and pass^k per environment and run, with 95% bootstrap "
                     "intervals; diamonds: the paper's Table 1 for Llama-3.1-8B-Instruct zero-shot.",
                     lambda p: render.plot_pass(rep.pass_rows, p))
        rep.sections.append(("Pass@k per environment", section))

    if rep.curves:
        section = []
        add_table(section, render.train_table(rep.curves))
        add_plot(section, "training", "Training curves against the step: loss (dashed: eval loss), learning rate, "
                 "grad norm, tokens/s.", lambda p: render.plot_training(rep.curves, p))
        rep.sections.append(("Training", section))

    if numbers.compared is not None:
        a, b = numbers.compared
        section = []
        add_table(section, render.compare_table(rep.comparisons, a.name, b.name))
        section += [f"* {render.verdict_line(r)}" for r in rep.comparisons]
        rep.sections.append(("Comparison", section))

    if rep.notes:
        rep.sections.append(("Notes", [f"* {n}" for n in rep.notes]))
    _write_readme(rep, named)
    return rep


def _write_readme(rep: Report, named: Sequence[Any]) -> None:
    sources = ", ".join(f"`{i}`" for i in named)
    parts = ["# sca report", "",
             f"Made by `sca report` from {sources}: {len(rep.tables)} tables, {len(rep.plots)} plots.", ""]
    for heading, items in rep.sections:
        parts += [f"## {heading}", ""]
        for item in items:
            if isinstance(item, Table):
                parts += [render.table_markdown(item), ""]
            elif isinstance(item, Plot):
                name = item.path.name
                parts += [f"![{item.caption}]({name})", "", f"*{item.caption}*", ""]
            else:
                parts += [str(item), ""]
    rep.readme.write_text("\n".join(parts).rstrip() + "\n", encoding="utf-8")
