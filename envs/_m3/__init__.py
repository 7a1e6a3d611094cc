"""Data and helpers of the two M3ToolEval environments (``calculation``, ``web_browsing``).

- ``arith``: the safe arithmetic parser behind every ``calculator`` tool;
- ``toolkit``: tools as documented methods, argument checks;
- ``site.json``, ``travel.json``: the web site and the flight and hotel tables the tools read.

Their benchmark (our held-out task sets, the official M3ToolEval tasks of a CodeAct checkout, the
tolerant scorer) is :mod:`sca.benchmarks.m3`.
"""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
