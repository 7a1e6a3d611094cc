"""`sca report`: tables and plots of the stages' outputs, gathered in one Markdown page.

The stage reads its inputs (:mod:`sca.report.inputs`: the files, their kinds, their records
checked), computes every section (:mod:`sca.report.sections`: the validation funnel, rewards per
task, Pass@k per environment, training curves, the paired comparison, the comparison across task
formats, the verifier audit) and writes the page
(:mod:`sca.report.page`: ``OUT_DIR/README.md`` with its PNG plots, drawn by
:mod:`sca.report.render`). See docs/stages.md, "sca report".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sca.records.io import InputError
from sca.report import inputs, page, sections
from sca.report.page import Report
from stages.config import ReportConfig

__all__ = ["report"]


def report(
    paths: Sequence[str | Path],
    out_dir: str | Path = ReportConfig.output,
    *,
    compare: tuple[str | Path, str | Path] | None = None,
    k: int | None = ReportConfig.pass_k,
    n_boot: int = ReportConfig.n_boot,
    seed: int = ReportConfig.seed,
    plots: bool = True,
) -> Report:
    """Read the inputs, compute every section, write ``out_dir/README.md`` and its PNG plots.

    `paths`: files and directories (see :mod:`sca.report.inputs` for how each file's kind is told).
    `compare`: two eval (or rollout) files, B compared against A, paired by task, per environment.
    `k`: the k of Pass@k and pass^k (default: the run's meta ``settings.k``, else its
    ``settings.trials``, else the most trials any task has). `n_boot`, `seed`: the bootstrap of every
    interval. `plots`: draw the PNG plots (they need matplotlib). Raises
    :class:`~sca.records.io.InputError` (one line) for missing, unknown or malformed input.
    """
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise InputError(f"k must be a positive integer, got {k!r}")
    named = inputs.given(paths, compare)
    sources, notes = inputs.collect(named)
    out = page.make_dir(out_dir)
    pair = inputs.compared(sources, compare) if compare else None
    numbers = sections.compute(sources, k=k, pair=pair, n_boot=n_boot, seed=seed)
    return page.write(out, named, sources, notes, numbers, plots=plots)
