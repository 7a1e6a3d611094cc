"""The sections of a report drawn: tables (shown on the terminal and as Markdown) and PNG plots.

A :class:`Table` is plain text cells, so that the terminal (``sca report`` prints them with rich)
and the page show the same figures. The plots use matplotlib's Agg canvas directly (no pyplot,
no display); matplotlib is imported only inside the functions that draw, so that reading and
computing a report, and ``sca --help``, never load it. Each plot function returns what it drew,
panel by panel (:class:`Panel`: its series, their points and texts, the notes written on it), so
that what a plot shows can be checked without reading pixels (see "plots" below for its rules).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sca import metrics
from sca.paper import FIGURE4_RETAIL_8B, REBUTTAL_RETAIL_8B
from sca.report.inputs import Source
from sca.report.sections import (
    FUNNEL_RULES,
    FUNNEL_STAGES,
    PAPER_FORMAT_FUNNEL,
    PAPER_FUNNEL,
    PAPER_MODEL,
    AuditPool,
    CompareRow,
    FormatFunnel,
    FormatRow,
    Funnel,
    LabelRow,
    PassRow,
    RewardStats,
    TrainCurve,
)


@dataclass
class Table:
    """A table of the report: shown on the terminal and as Markdown."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""
    terminal: bool = True  # also shown on the terminal (the README shows every table)


@dataclass
class Plot:
    path: Path
    caption: str
    panels: list[Panel] = field(default_factory=list)  # what it drew (its plot function's description)


# =========================================================================== formatting


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(ci: Sequence[float]) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _n_pct(n: int, total: int) -> str:
    return f"{n} ({100 * n / total:.1f}%)" if total else str(n)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_markdown(t: Table) -> str:
    lines = [f"**{t.title}**", "", "| " + " | ".join(_md_cell(c) for c in t.columns) + " |",
             "|" + "|".join("---" for _ in t.columns) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    if t.note:
        lines += ["", t.note]
    return "\n".join(lines)


# =========================================================================== tables


def inputs_table(sources: list[Source]) -> Table:
    return Table("Inputs", ["file", "kind", "told by", "records", "model / run"],
                 [[s.label, s.kind or "skipped", s.told_by, str(len(s.records)), s.name or s.model or "-"]
                  for s in sources])


def rules_table() -> Table:
    return Table("Funnel stage of a validation record", ["failed check", "reasons", "furthest stage reached"],
                 [[check, reasons or "-", FUNNEL_STAGES[stage]] for check, reasons, stage in FUNNEL_RULES],
                 terminal=False)


def _paper_note(label: str, figures: str, whys: list[str | None]) -> str:
    """What a table says of the paper's figures it leaves out (none of its runs is comparable)."""
    if not whys or any(why is None for why in whys):
        return ""
    reasons = list(dict.fromkeys(w for w in whys if w))
    return (f" The paper's figures ({label}: {figures}) are not beside these runs: "
            + (reasons[0] if len(reasons) == 1 else "not comparable (the Notes say why for each)") + ".")


def funnel_tables(funnels: list[Funnel]) -> list[Table]:
    """The funnels side by side with the paper's (where one is comparable to it), then the rejection
    reasons of each."""
    label, paper = PAPER_FUNNEL
    rows = []
    for f in funnels:
        rows.append([f.label, f.model or "-", ", ".join(f.envs) or "-"]
                    + [_n_pct(f.counts[i], f.counts[0]) for i in range(len(FUNNEL_STAGES))])
    whys = [f.paper_not_comparable for f in funnels]
    if any(why is None for why in whys):
        rows.append([label, PAPER_MODEL, "retail"] + [f"{p:.1f}%" for p in paper])
    tables = [Table("Validation funnel", ["run", "model", "env"] + list(FUNNEL_STAGES), rows,
                    note="Counts, and in brackets % of proposed; each stage is a subset of the one before."
                    + _paper_note(label, " / ".join(f"{p:.1f}%" for p in paper), whys))]
    for f in funnels:
        reason_rows = [[rc.reason, str(rc.count), _pct(rc.count / f.counts[0]) if f.counts[0] else "-",
                        ", ".join(f"{c} {n}" for c, n in rc.checks.most_common()) or "-",
                        FUNNEL_STAGES[rc.stage], rc.meaning] for rc in f.reasons]
        if not reason_rows:
            reason_rows = [["(none)", "0", "-", "-", "-", "every task is valid"]]
        tables.append(Table(f"Rejection reasons: {f.label}",
                            ["reason", "count", "% of proposed", "failed check", "furthest stage", "meaning"],
                            reason_rows))
    return tables


def reward_table(stats: list[RewardStats]) -> Table:
    rows = []
    for s in stats:
        sm = s.summary
        rows.append([
            s.name, s.file, ", ".join(s.envs), str(s.k), str(s.tasks), str(s.trials),
            f"{s.excluded}" + (f" ({', '.join(f'{k} {n}' for k, n in s.infra.items())})" if s.infra else ""),
            f"{s.mean_reward:.3f}",
            f"{_pct(sm.pass1)} {_ci(sm.pass1_ci)}" if sm else "-",
            f"{_pct(sm.pass_k)} {_ci(sm.pass_k_ci)}" if sm else "-",
            f"{_pct(sm.pass_hat_k)} {_ci(sm.pass_hat_k_ci)}" if sm else "-",
            _n_pct(s.none, s.tasks), _n_pct(s.some, s.tasks), _n_pct(s.all, s.tasks),
            ", ".join(f"{t} {n}" for t, n in s.terminations.items()),
        ])
    return Table("Rewards per task", ["run", "file", "env", "k", "tasks", "valid trials", "infra failures (excluded)",
                                      "mean reward", "Pass@1 [95% CI]", "Pass@k [95% CI]", "pass^k [95% CI]",
                                      "solved by none", "some", "all", "terminations"], rows,
                 note="Tasks solved by some but not all trials are the ones that can teach something. Trials with "
                      "reward null (infrastructure failures) are excluded from every figure; tasks with no valid "
                      "trial are not scored. Intervals: 95% percentile bootstrap over tasks (sca.metrics.summarize).")


def pass_table(rows: list[PassRow]) -> Table:
    out = []
    for r in rows:
        s = r.summary
        out.append([r.run, r.env, r.split or "-", str(r.k), str(s.tasks), str(s.trials), str(s.excluded),
                    f"{_pct(s.pass1)} {_ci(s.pass1_ci)}", f"{_pct(s.pass_k)} {_ci(s.pass_k_ci)}",
                    f"{_pct(s.pass_hat_k)} {_ci(s.pass_hat_k_ci)}",
                    f"{r.paper[0]:.1f}% / {r.paper[1]:.1f}%" if r.paper else "-"])
    return Table("Pass@k per environment", ["run", "env", "split", "k", "tasks", "valid trials", "excluded",
                                            "Pass@1 [95% CI]", "Pass@k [95% CI]", "pass^k [95% CI]",
                                            "paper Pass@1 / Pass@4"], out,
                 note="Means over tasks, 95% percentile bootstrap intervals over tasks (sca.metrics.summarize); "
                      "infrastructure failures excluded. The paper's Table 1 (Llama-3.1-8B-Instruct zero-shot) is "
                      "shown beside runs of that model itself.")


def train_table(curves: list[TrainCurve]) -> Table:
    rows = []
    for c in curves:
        _, loss = c.series("loss")
        _, ev = c.series("eval_loss")
        _, lr = c.series("learning_rate")
        _, gn = c.series("grad_norm")
        _, tps = c.series("tokens_per_s")
        steps = [ln["step"] for ln in c.lines]
        elapsed = [ln["elapsed_s"] for ln in c.lines if isinstance(ln.get("elapsed_s"), (int, float))]

        def num(v: float | None, fmt: str = ".4g") -> str:
            return "-" if v is None else format(v, fmt)

        rows.append([c.name, c.model or "-", str(max(steps, default=0)), num(loss[0] if loss else None),
                     num(loss[-1] if loss else None), num(min(loss) if loss else None),
                     num(ev[-1] if ev else None), num(lr[-1] if lr else None),
                     num(sum(gn) / len(gn) if gn else None), num(sum(tps) / len(tps) if tps else None, ".1f"),
                     num(max(elapsed) if elapsed else None, ".1f")])
    return Table("Training", ["checkpoint", "model", "steps", "first loss", "final loss", "min loss",
                              "final eval loss", "final learning rate", "mean grad norm", "mean tokens/s",
                              "elapsed s"], rows)


def compare_table(rows: list[CompareRow], name_a: str, name_b: str) -> Table:
    out = []
    for r in rows:
        c = r.comparison
        env = r.env + (f" ({r.split})" if r.split else "")
        if c is None:
            out.append([env, r.metric, "-", "-", "-", "-", "-", "-", r.note])
            continue
        label = "Pass@1" if c.metric == "pass1" else f"Pass@{c.k}"
        out.append([env, label, str(c.tasks), _pct(c.score_a), _pct(c.score_b), f"{100 * c.mean_diff:+.1f}",
                    f"[{100 * c.ci[0]:+.1f}, {100 * c.ci[1]:+.1f}]",
                    f"{c.p_value:.3g}" + ("" if c.p_exact else " (MC)"), _short_verdict(c)])
    return Table(f"Comparison: B = {name_b} against A = {name_a}",
                 ["env", "metric", "paired tasks", "A", "B", "B - A (points)", "95% CI", "p", "verdict"], out,
                 note="Paired by task (sca.metrics.compare): tasks scored in only one run are left out; the interval "
                      "is a paired bootstrap over tasks, p a two-sided paired sign-flip permutation test.")


def _short_verdict(c: metrics.Comparison) -> str:
    if c.significant:
        return "larger than the noise"
    return "within the noise" if c.p_value >= 1 - c.confidence else "borderline"


def verdict_line(r: CompareRow) -> str:
    """The comparison of one environment and metric as a sentence (its verdict, or why there is none)."""
    env = r.env + (f" ({r.split})" if r.split else "")
    return f"{env}: {r.comparison.verdict}" if r.comparison is not None else f"{env}, {r.metric}: {r.note}"


def _method(fmt: str) -> str:
    """The name the rebuttal gives the method trained on tasks of this format."""
    return REBUTTAL_RETAIL_8B[fmt][0] if fmt in REBUTTAL_RETAIL_8B else "-"


def format_table(rows: list[FormatRow]) -> Table:
    out = []
    for r in rows:
        s = r.summary
        out.append([r.format, _method(r.format), r.run, r.told_by, r.base_model or "-", r.env, r.split or "-",
                    str(r.k), str(s.tasks), str(s.trials), f"{_pct(s.pass1)} {_ci(s.pass1_ci)}",
                    f"{_pct(s.pass_k)} {_ci(s.pass_k_ci)}",
                    f"{r.paper[1][0]:.1f}% / {r.paper[1][1]:.1f}%" if r.paper else "-"])
    return Table("Comparison across task formats", [
        "trained on", "method", "run", "format told by", "base model", "env", "split", "k", "tasks", "valid trials",
        "Pass@1 [95% CI]", "Pass@k [95% CI]", "paper Pass@1 / Pass@4"], out,
        note="Each eval run of a model trained on tasks of one format (zero-shot: not trained), as the rebuttal's "
             "filtering ablation: PAE = instruction-only tasks with a judge reward, SCA no filtering = eval-only, "
             "SCA = cat. Means over tasks, 95% percentile bootstrap intervals over tasks. The rebuttal's figures "
             "(retail, Llama-3.1-8B-Instruct, rejection fine-tuning) sit beside a run only where it measured the "
             "same: that model (or a checkpoint trained from it with --algo rft), on Table 1's benchmark.")


def format_funnel_table(funnels: list[FormatFunnel]) -> Table:
    rows = [[f.label, f.format, f.model or "-", ", ".join(f.envs) or "-", str(f.proposed),
             _n_pct(f.valid, f.proposed)] for f in funnels]
    label, _ = PAPER_FUNNEL
    whys: dict[str, list[str | None]] = {}
    for f in funnels:
        whys.setdefault(f.format, []).append(f.paper_not_comparable)
    rows += [[label, fmt, PAPER_MODEL, "retail", "100.0%", f"{pct:.1f}%"] for fmt, pct in PAPER_FORMAT_FUNNEL.items()
             if any(why is None for why in whys.get(fmt, ()))]
    left_out = "".join(_paper_note(f"{label}, {fmt}", f"{pct:.1f}% valid", whys[fmt])
                       for fmt, pct in PAPER_FORMAT_FUNNEL.items() if fmt in whys)
    return Table("Funnel per task format", ["run", "format", "model", "env", "proposed", "valid"], rows,
                 note="Records of each format in each propose or validate run, and those found valid by the checks of "
                      "their format (cat: the six CaT checks; eval-only: the code compiles and defines evaluate; "
                      "instruction-only: a non-empty instruction). The paper gives a yield for CaT only, beside a "
                      "run only where comparable (retail, cat, enough proposals to be a rate)." + left_out)


def audit_table(pools: list[AuditPool]) -> Table:
    rows = [[p.label, p.format, ", ".join(p.envs) or "-", str(p.tasks), str(p.audited), str(p.skipped),
             str(p.mutants), str(p.accepted), str(p.lax),
             f"{_pct(p.rate)} {_ci(p.rate_ci)}" if p.rate is not None and p.rate_ci else "-"] for p in pools]
    return Table("Verifier audit: lax rate per pool", [
        "pool", "format", "env", "tasks", "audited", "skipped (no solution)", "mutants run", "mutants accepted",
        "lax tasks", "lax rate [95% CI]"], rows,
        note="sca audit runs variants of each task's own solution (a write dropped, an argument changed, a write "
             "repeated, two writes swapped); a task is lax when a variant that leaves another final state still "
             "passes its evaluate(). Lax rate = lax / audited tasks; 95% percentile bootstrap interval over tasks.")


def _rate_cell(rate: list[float] | None) -> str:
    return f"{_pct(rate[0])} {_ci(rate[1:])}" if rate else "-"


def labels_table(rows: list[LabelRow]) -> Table:
    out = [[r.label, r.format, str(r.n), str(r.tp), str(r.fp), str(r.tn), str(r.fn)]
           + [_rate_cell(r.rates[key]) for key in ("false_positive_rate", "false_negative_rate", "precision", "recall")]
           for r in rows]
    out += [["paper, Figure 4 (about; retail, Llama-3.1-8B)", fmt, "-", "-", "-", "-", "-",
             "-" if fp is None else f"{fp:.0f}%", "-" if fn is None else f"{fn:.0f}%", "-", "-"]
            for fmt, (fp, fn) in FIGURE4_RETAIL_8B.items()]
    return Table("Hand-labelled rewards (Figure 4)", [
        "sheet", "format", "labelled", "TP", "FP", "TN", "FN", "false-positive rate [95% CI]",
        "false-negative rate [95% CI]", "precision [95% CI]", "recall [95% CI]"], out,
        note="From sca audit --labels: reward 1 is a predicted success, label 1 a task really done. False-positive "
             "rate = FP / (FP + TN): how often a failed attempt got reward 1; false-negative rate = FN / (FN + TP). "
             "Intervals: bootstrap 95%, as sca audit wrote them. The paper's figures are read off its Figure 4.")


# =========================================================================== plots
#
# A plot says what it shows and what it lacks: a line carries its points; every bar its value and its
# n; a panel with nothing to draw says "no data" instead of showing an empty frame, and so does the
# place of a bar that has no data (a bar at 0% shows "0.0%"); a curve of fewer than MIN_CURVE_POINTS
# points is drawn as its points with a "too few points" note; the paper's figures sit only beside a run
# that measured the same (sca.paper's rules, applied in sca.report.sections). Each plot function
# returns a description of what it drew, panel by panel (Plot.panels): what the tests read, not pixels.

#: the fewest points of a curve that show a trend; with fewer it is drawn as points, with a note
MIN_CURVE_POINTS = 3
NO_DATA = "no data"


@dataclass
class Series:
    """One thing drawn on a panel: bars, a line (through its points), points, or the paper's figures."""

    label: str
    kind: str  # "bars" | "line" | "points" | "reference" (the paper's figures)
    points: list[tuple[Any, float]]
    texts: list[str] = field(default_factory=list)  # written at the points: the value and its n
    marker: str | None = None  # the marker drawn at each point (lines and points), as matplotlib names it


@dataclass
class Panel:
    """What one panel of a plot drew: its series and the words written on it."""

    title: str
    series: list[Series] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # "no data", "too few points ...", "the paper's ... left out"

    @property
    def data(self) -> list[Series]:
        return [s for s in self.series if s.kind != "reference"]

    @property
    def references(self) -> list[Series]:
        return [s for s in self.series if s.kind == "reference"]

    def texts(self) -> list[str]:
        return [t for s in self.series for t in s.texts]


class _Panel:
    """An axes of a figure that records what is drawn on it (:class:`Panel`)."""

    def __init__(self, ax: Any, title: str, fontsize: float | None = None) -> None:
        self.ax = ax
        self.desc = Panel(title)
        ax.set_title(title, **({"fontsize": fontsize} if fontsize else {}))

    def bars(self, xs: list[float], ys: list[float], texts: list[str], *, label: str = "",
             tops: list[float] | None = None, **kw: Any) -> None:
        """Bars, each with its text (value and n) above it, or above `tops` (an error bar's end)."""
        self.ax.bar(xs, ys, label=label or None, **kw)
        for x, y, t in zip(xs, tops or ys, texts):
            self.ax.annotate(t, (x, y), textcoords="offset points", xytext=(0, 2), ha="center", va="bottom",
                             fontsize=7)
        self.desc.series.append(Series(label, "bars", list(zip(xs, ys)), list(texts)))

    def curve(self, xs: list[float], ys: list[float], *, label: str, style: str = "-") -> None:
        """A line with a marker at each point; with fewer than MIN_CURVE_POINTS, a note says so."""
        (line,) = self.ax.plot(xs, ys, style, marker="o", markersize=4, label=label)
        kind = "line"
        if len(xs) < MIN_CURVE_POINTS:
            kind = "points"
            self.note(f"too few points for a curve: {label} has {len(xs)}")
        self.desc.series.append(Series(label, kind, list(zip(xs, ys)), marker=str(line.get_marker())))

    def point(self, x: float, est: float, ci: Sequence[float], *, label: str, color: Any, text: str,
              legend: bool = True) -> None:
        """One estimate with its interval (all in [0, 1]) drawn in percent, `text` (value and n) beside it."""
        drawn = self.ax.errorbar([x], [100 * est], yerr=[[max(0.0, 100 * (est - ci[0]))],
                                                          [max(0.0, 100 * (ci[1] - est))]],
                                 fmt="o", capsize=4, color=color, label=label if legend else None)
        self.ax.annotate(text, (x, 100 * est), textcoords="offset points", xytext=(6, 0), fontsize=7, va="center")
        self.desc.series.append(Series(label, "points", [(x, 100 * est)], [text], marker=str(drawn.lines[0].get_marker())))

    def reference(self, xs: list[float], ys: list[float], *, label: str, style: str, legend: bool = True,
                  **kw: Any) -> None:
        (line,) = self.ax.plot(xs, ys, style, label=label if legend else None, **kw)
        self.desc.series.append(Series(label, "reference", list(zip(xs, ys)), marker=str(line.get_marker())))

    def missing(self, x: float, what: str) -> None:
        """No data where a bar or point of `what` would be: said there, not left blank."""
        self.ax.annotate(NO_DATA, (x, 0), textcoords="offset points", xytext=(0, 4), ha="center", va="bottom",
                         fontsize=7, rotation=90, color="0.4")
        self.desc.notes.append(f"{NO_DATA}: {what}")

    def note(self, text: str) -> None:
        """Words on the panel, top left, one line under another."""
        self.ax.text(0.01, 0.99 - 0.06 * len([n for n in self.desc.notes if not n.startswith(NO_DATA + ":")]),
                     text, transform=self.ax.transAxes, ha="left", va="top", fontsize=7, color="0.3",
                     bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
        self.desc.notes.append(text)

    def finish(self, legend: bool = True) -> Panel:
        """"no data" across a panel that drew nothing; the legend of what it drew."""
        if not self.desc.data:
            self.ax.text(0.5, 0.5, NO_DATA, transform=self.ax.transAxes, ha="center", va="center", fontsize=14,
                         color="0.5")
            self.desc.notes.insert(0, NO_DATA)
        if legend and self.ax.get_legend_handles_labels()[0]:
            self.ax.legend(fontsize=8)
        return self.desc


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png")


def _legend_name(name: str, width: int = 40) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _paper_left_out(pan: _Panel, whys: list[tuple[str, str | None]]) -> None:
    """A note on a panel where the paper's figures are left out beside every run (`whys`: (run, why))."""
    if whys and all(why is not None for _, why in whys):
        reasons = list(dict.fromkeys(why for _, why in whys))
        pan.note("the paper's figures left out: " + (reasons[0] if len(reasons) == 1 else "not comparable (see Notes)"))


def plot_funnel(funnels: list[Funnel], path: Path) -> list[Panel]:
    fig, axes = _figure(8, 4.5)
    pan = _Panel(axes[0][0], "Validation funnel")
    x = list(range(len(FUNNEL_STAGES)))
    width = 0.8 / max(1, len(funnels))
    for i, f in enumerate(funnels):
        xs = [xi - 0.4 + width * (i + 0.5) for xi in x]
        pan.bars(xs, [f.percent(j) for j in x], [f"{f.percent(j):.1f}%\n{f.counts[j]}/{f.counts[0]}" for j in x],
                 label=_legend_name(f"{f.label} (n={f.counts[0]})", 60), width=width)
    label, paper = PAPER_FUNNEL
    if any(f.paper_not_comparable is None for f in funnels):
        pan.reference(x, list(paper), label=label, style="k--o")
    _paper_left_out(pan, [(f.label, f.paper_not_comparable) for f in funnels])
    pan.ax.set_xticks(x, [s.replace(" (valid)", "\n(valid)") for s in FUNNEL_STAGES])
    pan.ax.set_ylabel("% of proposed tasks")
    pan.ax.set_ylim(0, 125)
    panel = pan.finish()
    _save(fig, path)
    return [panel]


def plot_rewards(stats: RewardStats, path: Path) -> list[Panel]:
    fig, axes = _figure(7, 4)
    ax = axes[0][0]
    s = stats.summary
    head = f"{_legend_name(stats.name)}: Pass@1 {_pct(s.pass1)}, Pass@{stats.k} {_pct(s.pass_k)}" if s else stats.name
    pan = _Panel(ax, f"{head}\nsolved by none {stats.none} (red), some {stats.some} (blue), all {stats.all} (green)",
                 fontsize=10)
    n = stats.tasks
    some = Counter(round(r, 6) for r in stats.rates if 0 < r < 1)
    if len(some) > 19:  # too many distinct rates for a bar each: 18 bins over (0.05, 0.95), the ends in the edge bins
        binned: Counter = Counter(min(17, max(0, int((r - 0.05) / 0.05))) for r in stats.rates if 0 < r < 1)
        some = Counter({round(0.075 + 0.05 * b, 6): c for b, c in binned.items()})
        width = 0.04
    xs = sorted(some)
    if len(some) <= 19 and xs:
        width = min(0.8 * min((b - a for a, b in zip([0.0] + xs, xs + [1.0]))), 0.05)
    elif not xs:
        width = 0.05
    if xs:
        pan.bars(xs, [some[v] for v in xs], [f"{some[v]}/{n}" for v in xs], label="solved by some",
                 width=width, color="tab:blue")
    pan.bars([0.0], [stats.none], [f"{stats.none}/{n}"], label="solved by none", width=width, color="tab:red")
    pan.bars([1.0], [stats.all], [f"{stats.all}/{n}"], label="solved by all", width=width, color="tab:green")
    ax.set_xlim(-0.06, 1.06)
    ax.set_ylim(0, max([stats.none, stats.all, *some.values(), 1]) * 1.2)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("success rate of a task over its trials (c / n)")
    ax.set_ylabel("tasks")
    panel = pan.finish(legend=False)  # the title names the colours
    _save(fig, path)
    return [panel]


def plot_pass(rows: list[PassRow], path: Path) -> list[Panel]:
    runs = list(dict.fromkeys(r.run for r in rows))
    groups = list(dict.fromkeys(r.env + (f" ({r.split})" if r.split else "") for r in rows))
    ks = sorted({r.k for r in rows})
    k_label = f"k={ks[0]}" if len(ks) == 1 else "k per run"
    metrics_ = (("pass1", "Pass@1"), ("pass_k", f"Pass@k ({k_label})"), ("pass_hat_k", f"pass^k ({k_label})"))
    fig, axes = _figure(5 * len(metrics_), 4.5, ncols=len(metrics_))
    width = 0.8 / max(1, len(runs))
    by = {(r.run, r.env + (f" ({r.split})" if r.split else "")): r for r in rows}
    panels = []
    for p, (metric, title) in enumerate(metrics_):
        pan = _Panel(axes[0][p], title)
        paper_drawn = False
        for i, run in enumerate(runs):
            xs, ys, lo, hi, texts = [], [], [], [], []
            for g, group in enumerate(groups):
                x = g - 0.4 + width * (i + 0.5)
                row = by.get((run, group))
                if row is None:
                    pan.missing(x, f"{run} on {group}")
                    continue
                mean = getattr(row.summary, metric)
                ci = getattr(row.summary, f"{metric}_ci")
                xs.append(x)
                ys.append(100 * mean)
                lo.append(max(0.0, 100 * (mean - ci[0])))
                hi.append(max(0.0, 100 * (ci[1] - mean)))
                texts.append(f"{_pct(mean)}\nn={row.summary.tasks}")
                if row.paper and (metric == "pass1" or metric == "pass_k" and row.k == 4):
                    ref = row.paper[0] if metric == "pass1" else row.paper[1]
                    pan.reference([x], [ref], label="paper Table 1 (Pass@1, Pass@4)", style="kD", legend=not paper_drawn,
                                  markersize=6, markerfacecolor="none")
                    paper_drawn = True
            if xs:
                pan.bars(xs, ys, texts, label=_legend_name(run), tops=[y + h for y, h in zip(ys, hi)], width=width,
                         yerr=[lo, hi], capsize=3, color=f"C{i}")
        pan.ax.set_xticks(range(len(groups)), groups, rotation=15)
        pan.ax.set_xlim(-0.5, len(groups) - 0.5)  # every group's place in sight, a missing bar's "no data" too
        pan.ax.set_ylim(0, 125)
        pan.ax.set_ylabel("%")
        panels.append(pan.finish(legend=p == 0))
    _save(fig, path)
    return panels


def plot_training(curves: list[TrainCurve], path: Path) -> list[Panel]:
    fig, axes = _figure(11, 7, ncols=2, nrows=2)
    layout = ((axes[0][0], ("loss", "eval_loss"), "loss"), (axes[0][1], ("learning_rate",), "learning rate"),
              (axes[1][0], ("grad_norm",), "grad norm"), (axes[1][1], ("tokens_per_s",), "tokens/s"))
    panels = []
    for ax, keys, title in layout:
        pan = _Panel(ax, title)
        for c in curves:
            for key in keys:
                xs, ys = c.series(key)
                if xs:
                    pan.curve(xs, ys, label=_legend_name(c.name) + (" (eval)" if key == "eval_loss" else ""),
                              style="--" if key == "eval_loss" else "-")
        ax.set_xlabel("step")
        panels.append(pan.finish())
    _save(fig, path)
    return panels


def _ordered(values: list[str]) -> list[str]:
    order = ["zero-shot", "instruction-only", "eval-only", "cat"]
    return sorted(dict.fromkeys(values), key=lambda v: (order.index(v) if v in order else len(order), v))


def plot_formats(rows: list[FormatRow], path: Path) -> list[Panel]:
    """Pass@1 and Pass@k per format (points with 95% intervals, value and n tasks beside each), one colour
    per environment; hollow diamonds: the rebuttal's figures where comparable."""
    formats = _ordered([r.format for r in rows])
    groups = list(dict.fromkeys(r.env + (f" ({r.split})" if r.split else "") for r in rows))
    fig, axes = _figure(11, 4.5, ncols=2)
    colors = {g: f"C{i}" for i, g in enumerate(groups)}
    ks = " (k per run)" if len({r.k for r in rows}) > 1 else f" (k={rows[0].k})" if rows else ""
    panels = []
    for p, (metric, title) in enumerate((("pass1", "Pass@1"), ("pass_k", "Pass@k"))):
        pan = _Panel(axes[0][p], title + ks)
        seen: set[str] = set()
        paper_drawn = False
        runs_at: Counter = Counter()
        for r in rows:
            group = r.env + (f" ({r.split})" if r.split else "")
            i = formats.index(r.format)
            x = i + 0.12 * (groups.index(group) - (len(groups) - 1) / 2) + 0.04 * runs_at[i, group]
            runs_at[i, group] += 1
            est = getattr(r.summary, metric)
            pan.point(x, est, getattr(r.summary, f"{metric}_ci"), label=group, legend=group not in seen,
                      color=colors[group], text=f"{_pct(est)} n={r.summary.tasks}")
            seen.add(group)
            if r.paper and (metric == "pass1" or r.k == 4):
                pan.reference([x], [r.paper[1][0 if metric == "pass1" else 1]], label="paper (rebuttal)", style="kD",
                              legend=not paper_drawn, markerfacecolor="none")
                paper_drawn = True
        _paper_left_out(pan, [(r.run, r.not_comparable) for r in rows if r.format in REBUTTAL_RETAIL_8B])
        pan.ax.set_xticks(range(len(formats)), [f"{f}\n{_method(f)}" if _method(f) != "-" else f for f in formats])
        pan.ax.set_xlim(-0.6, len(formats) - 0.4)
        pan.ax.set_ylim(0, 115)
        pan.ax.set_ylabel("%")
        panels.append(pan.finish())
    _save(fig, path)
    return panels


def plot_format_funnels(funnels: list[FormatFunnel], path: Path) -> list[Panel]:
    """Valid share of proposed tasks per format and run (value and valid / proposed on each bar); the
    paper's CaT yield beside a run only where comparable."""
    fig, axes = _figure(8, 4)
    pan = _Panel(axes[0][0], "Funnel per task format (diamond: the paper's CaT yield, Llama-3.1-8B on retail)",
                 fontsize=10)
    labels = [f"{f.format}\n{_legend_name(f.label, 30)}" for f in funnels]
    order = _ordered([g.format for g in funnels])
    drawn = False
    for i, f in enumerate(funnels):
        pan.bars([i], [f.percent], [f"{f.percent:.1f}%\n{f.valid}/{f.proposed}"], label=f"{f.format}: {f.label}",
                 width=0.6, color=f"C{order.index(f.format)}")
        if f.format in PAPER_FORMAT_FUNNEL and f.paper_not_comparable is None:
            pan.reference([i], [PAPER_FORMAT_FUNNEL[f.format]], label="paper (CaT yield)", style="kD",
                          legend=not drawn, markerfacecolor="none")
            drawn = True
    _paper_left_out(pan, [(f.label, f.paper_not_comparable) for f in funnels if f.format in PAPER_FORMAT_FUNNEL])
    pan.ax.set_xticks(range(len(funnels)), labels, fontsize=8)
    pan.ax.set_ylim(0, 125)
    pan.ax.set_ylabel("% of proposed tasks valid")
    panel = pan.finish(legend=False)  # each bar is named on its axis
    _save(fig, path)
    return [panel]


def plot_audit(pools: list[AuditPool], path: Path) -> list[Panel]:
    """The lax rate of each pool with its 95% interval (value and lax / audited beside it); "no data"
    at a pool with no audited task."""
    fig, axes = _figure(8, 4)
    pan = _Panel(axes[0][0], "Verifier audit: lax rate per pool (95% bootstrap interval)")
    for i, p in enumerate(pools):
        if p.rate is None or not p.rate_ci:
            pan.missing(i, f"{p.label} ({p.format}): no task audited")
            continue
        pan.point(i, p.rate, p.rate_ci, label=f"{p.label} ({p.format})", legend=False, color=f"C{i}",
                  text=f"{_pct(p.rate)} {p.lax}/{p.audited}")
    pan.ax.set_xticks(range(len(pools)), [f"{p.format}\n{_legend_name(p.label, 30)}" for p in pools], fontsize=8)
    pan.ax.set_xlim(-0.6, len(pools) - 0.4)
    pan.ax.set_ylim(-3, 110)
    pan.ax.set_ylabel("% of audited tasks lax")
    panel = pan.finish(legend=False)
    _save(fig, path)
    return [panel]


def plot_labels(rows: list[LabelRow], path: Path) -> list[Panel]:
    """Figure 4: false-positive and false-negative rates per format with intervals (value and n: the cases
    each rate counts; "no data" where there is no case); hollow diamonds: the paper's Figure 4, where it
    gives the rate."""
    fig, axes = _figure(10, 4, ncols=2)
    formats = _ordered([r.format for r in rows])
    spec = (("false_positive_rate", "false-positive rate: FP / (FP + TN)", lambda r: r.fp + r.tn, 0),
            ("false_negative_rate", "false-negative rate: FN / (FN + TP)", lambda r: r.fn + r.tp, 1))
    panels = []
    for p, (key, title, n_of, paper_i) in enumerate(spec):
        pan = _Panel(axes[0][p], title, fontsize=10)
        paper_drawn = False
        for j, r in enumerate(rows):
            x = formats.index(r.format) + 0.08 * (j - (len(rows) - 1) / 2) / max(1, len(rows))
            rate = r.rates[key]
            if rate:
                pan.point(x, rate[0], rate[1:], label=f"{r.label} ({r.format})", legend=False,
                          color=f"C{formats.index(r.format)}", text=f"{_pct(rate[0])} n={n_of(r)}")
            else:
                pan.missing(x, f"{r.label} ({r.format}): no case to count")
            ref = FIGURE4_RETAIL_8B.get(r.format, (None, None))[paper_i]
            if ref is not None:
                pan.reference([x], [ref], label="paper (about)", style="kD", legend=not paper_drawn,
                              markerfacecolor="none")
                paper_drawn = True
        pan.ax.set_xticks(range(len(formats)), formats)
        pan.ax.set_xlim(-0.6, len(formats) - 0.4)
        pan.ax.set_ylim(-3, 110)  # a rate of 0 stays in sight
        pan.ax.set_ylabel("%")
        panels.append(pan.finish())
    _save(fig, path)
    return panels
