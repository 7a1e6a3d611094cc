"""Data and helpers of the two M3ToolEval environments (``calculation``, ``web_browsing``).

- ``arith``: the safe arithmetic parser behind every ``calculator`` tool;
- ``scoring``: :func:`answers_match`, the tolerant answer comparison;
- ``toolkit``: tools as documented methods, argument checks;
- ``benchmark``: our own task sets (JSONL files here) as ``BenchmarkTask`` objects,
  and the runner of their reference solutions;
- ``official``: loader of the official M3ToolEval tasks from a CodeAct checkout: the
  checkout's task modules run in the sandbox, only their JSON results come back.
"""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
