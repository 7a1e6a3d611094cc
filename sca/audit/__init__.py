"""Verifier quality, measured: how often a reward of 1 does not mean the task was done.

The paper measured it by hand (Figure 4: people labelled trajectories). This package measures it
twice over:

* automatically (:mod:`sca.audit.mutants`): each task's ``evaluate()`` is mutation-tested with
  variants of the task's own example solution that the tools accept (a write dropped, an argument
  changed, a write repeated, two writes swapped, the answer changed). A variant that leaves another
  final state and still passes ``evaluate()`` shows a verifier that is lax: an executor that did the
  task wrongly in the same way would be rewarded. `sca audit TASKS -o OUT`, `sca validate --audit`.
* by hand (:mod:`sca.audit.labels`): a labelling sheet of trajectories stratified by reward, and
  Figure 4's true/false positive and negative rates from the labels. `sca audit --sheet`/`--labels`.

Standard library, the sandbox and the environments only: the stages and the report both use it. Its
modules are imported by name (`sca.audit.config` for the options, light enough for ``sca --help``;
`sca.audit.mutants`; `sca.audit.labels`): the package itself imports none of them.
"""
