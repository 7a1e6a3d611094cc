"""M3ToolEval, the benchmark of ``calculation`` and ``web_browsing``.

- ``scoring``: :func:`~sca.benchmarks.m3.scoring.answers_match`, the tolerant answer comparison, and
  the self-contained ``evaluate(answer)`` of a task built on it;
- ``tasks``: our own held-out task sets (the JSONL files here) as benchmark tasks, and the runner of
  their reference solutions;
- ``official``: loader of the official M3ToolEval tasks from a CodeAct checkout: the checkout's task
  modules run in the sandbox, only their JSON results come back;
- ``benchmark``: both as :class:`~sca.benchmarks.base.Benchmark` objects.
"""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
