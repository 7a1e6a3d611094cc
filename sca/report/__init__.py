"""Reports on the stages' outputs: what `sca report` reads, computes, draws and writes.

One module per step, each importing only the ones before it:

* :mod:`sca.report.inputs`: finding the files (a directory: its ``*.jsonl``, and the
  ``train_log.jsonl`` below it), telling what each one is (its sidecar, else its records),
  checking every record against its kind's schema (:mod:`sca.records.schema`), bringing a run's
  other outputs along, naming the runs.
* :mod:`sca.report.sections`: the numbers of each section, computed from the inputs: the
  validation funnel, rewards per task, Pass@k per environment, training curves, the paired
  comparison, the comparison across task formats (and the funnel per format), the verifier
  audit (lax rates, hand-label rates).
* :mod:`sca.report.render`: those numbers as tables (terminal and Markdown) and as PNG plots
  (matplotlib, imported only to draw), each plot returning what it drew (points, values and n,
  "no data", "too few points", the paper's figures only where comparable).
* :mod:`sca.report.page`: the page, ``OUT_DIR/README.md``, with its plots beside it.

``stages/report.py`` runs them in that order for ``sca report``.
"""
