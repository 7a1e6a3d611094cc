"""The page of a report: ``OUT_DIR/README.md``, its sections in order, with the PNG plots beside it.

The sections (each present when its kind of input is): the inputs, the validation funnel (with
the rule that places a record, and the rejection reasons), rewards per task, Pass@k per
environment, training, the comparison, the comparison across task formats (when a run has tasks
of another format than cat, or an eval run of a model trained on tasks of a format), the verifier
audit (when there is an sca audit output or hand-label rates), and the notes (what was skipped,
missing or not comparable). A part of a section without its input says "no data" and what
would give it. Every table and plot is on the page; :attr:`Report.sections` holds the same items
for the terminal. Without matplotlib the page has its tables and no plots, and says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sca.paper import REBUTTAL_ENV, REBUTTAL_RETAIL_8B
from sca.records.io import InputError
from sca.report import render
from sca.report.inputs import Source
from sca.report.render import Plot, Table
from sca.report.sections import (
    AuditPool,
    CompareRow,
    FormatFunnel,
    FormatRow,
    Funnel,
    LabelRow,
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
    format_funnels: list[FormatFunnel] = field(default_factory=list)
    format_rows: list[FormatRow] = field(default_factory=list)
    audit: list[AuditPool] = field(default_factory=list)
    labels: list[LabelRow] = field(default_factory=list)
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
                 pass_rows=numbers.pass_rows, curves=numbers.curves, comparisons=numbers.comparisons,
                 format_funnels=numbers.format_funnels, format_rows=numbers.format_rows, audit=numbers.audit,
                 labels=numbers.labels)
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

    def add_plot(section: list[Any], stem: str, caption: str, fn: Callable[[Path], list[render.Panel]]) -> None:
        if not draw:
            return
        path = plot_path(stem)
        p = Plot(path, caption, fn(path))
        rep.plots.append(p)
        section.append(p)

    def add_table(section: list[Any], t: Table) -> None:
        rep.tables.append(t)
        section.append(t)

    section: list[Any] = []
    add_table(section, render.inputs_table(sources))
    rep.sections.append(("Inputs", section))

    if rep.funnels:
        rep.notes += [f"{f.label}: no paper funnel beside it: {f.paper_not_comparable}" for f in rep.funnels
                      if f.paper_not_comparable]
        section = [FUNNEL_TEXT]
        add_table(section, render.rules_table())
        for t in render.funnel_tables(rep.funnels):
            add_table(section, t)
        add_plot(section, "funnel", "Validation funnel: % of proposed tasks reaching each stage (share and count / "
                 "proposed on each bar); dashed, where a run is comparable (retail, cat, 50 or more proposed): the "
                 "paper's Llama-3.1-8B retail figures (47.7% / 9.5% / 5.2%).",
                 lambda p: render.plot_funnel(rep.funnels, p))
        rep.sections.append(("Validation funnel", section))

    if numbers.rewards:
        section = []
        add_table(section, render.reward_table(rep.rewards))
        for s, stats in numbers.rewards:
            if stats.tasks:
                add_plot(section, f"rewards_{_slug(s.path.stem)}",
                         f"Per-task success rates of {stats.name} ({stats.file}): {stats.tasks} tasks, "
                         f"{stats.trials} valid trials; red none, blue some, green all trials solved (tasks / all "
                         "tasks on each bar).",
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
                     "intervals, the value and n tasks on each bar (no data: a run without that environment); "
                     "diamonds: the paper's Table 1 for Llama-3.1-8B-Instruct zero-shot, where comparable.",
                     lambda p: render.plot_pass(rep.pass_rows, p))
        rep.sections.append(("Pass@k per environment", section))

    if rep.curves:
        section = []
        add_table(section, render.train_table(rep.curves))
        add_plot(section, "training", "Training curves against the step: loss (dashed: eval loss), learning rate, "
                 "grad norm, tokens/s; a point per logging step (a curve of fewer than "
                 f"{render.MIN_CURVE_POINTS} says so; a panel without any says no data).",
                 lambda p: render.plot_training(rep.curves, p))
        rep.sections.append(("Training", section))

    if numbers.compared is not None:
        a, b = numbers.compared
        section = []
        add_table(section, render.compare_table(rep.comparisons, a.name, b.name))
        section += [f"* {render.verdict_line(r)}" for r in rep.comparisons]
        rep.sections.append(("Comparison", section))

    if rep.format_rows or any(f.format != "cat" for f in rep.format_funnels):
        rep.sections.append(("Comparison across task formats", _formats_section(rep, numbers, add_table, add_plot)))

    if rep.audit or rep.labels:
        rep.sections.append(("Verifier audit", _audit_section(rep, add_table, add_plot)))

    if rep.notes:
        rep.sections.append(("Notes", [f"* {n}" for n in rep.notes]))
    _write_readme(rep, named)
    return rep


NO_FORMAT_RUNS = ("No data: no eval results of a model trained on tasks of a format. A run's format is its results "
                  "file's directory (runs/ablations/<format>/, as examples/ablations.sh writes), else the format of "
                  "the trajectories its checkpoint was trained on.")
NO_FUNNEL = "No data: no propose or validate output."
NO_AUDIT = "No data: no sca audit output (sca audit TASKS -o OUT)."
NO_LABELS = "No data: no hand-label rates (sca audit --sheet N TRAJECTORIES, label it, then sca audit --labels)."


def _formats_section(rep: Report, numbers: Sections, add_table: Callable[..., None],
                     add_plot: Callable[..., None]) -> list[Any]:
    section: list[Any] = []
    rep.notes += numbers.format_notes
    if rep.format_rows:
        add_table(section, render.format_table(rep.format_rows))
        add_plot(section, "formats", "Pass@1 and Pass@k per task format the model was trained on, with 95% bootstrap "
                 "intervals and n tasks; hollow diamonds: the rebuttal's figures, where comparable.",
                 lambda p: render.plot_formats(rep.format_rows, p))
        rep.notes += [f"{r.run}, {r.env}: no rebuttal figure beside it: {r.not_comparable}" for r in rep.format_rows
                      if r.not_comparable and r.format in REBUTTAL_RETAIL_8B and r.env == REBUTTAL_ENV]
    else:
        section.append(NO_FORMAT_RUNS)
    if rep.format_funnels:
        add_table(section, render.format_funnel_table(rep.format_funnels))
        add_plot(section, "format_funnel", "Share of proposed tasks found valid, per task format and run (share and "
                 "valid / proposed on each bar); diamond: the paper's CaT yield, where a run is comparable.",
                 lambda p: render.plot_format_funnels(rep.format_funnels, p))
    else:
        section.append(NO_FUNNEL)
    return section


def _audit_section(rep: Report, add_table: Callable[..., None], add_plot: Callable[..., None]) -> list[Any]:
    section: list[Any] = []
    if rep.audit:
        add_table(section, render.audit_table(rep.audit))
        if any(p.rate is not None for p in rep.audit):
            add_plot(section, "audit", "Lax rate of each audited pool, with its 95% bootstrap interval (the rate and "
                     "lax / audited tasks beside each point; no data: a pool with no task audited).",
                     lambda p: render.plot_audit(rep.audit, p))
    else:
        section.append(NO_AUDIT)
    if rep.labels:
        add_table(section, render.labels_table(rep.labels))
        add_plot(section, "labels", "Figure 4: false-positive and false-negative rates of the rewards per task "
                 "format, from hand labels, with 95% intervals (n: the cases each rate counts); hollow diamonds: the "
                 "paper's Figure 4 (about).", lambda p: render.plot_labels(rep.labels, p))
    else:
        section.append(NO_LABELS)
    return section


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
