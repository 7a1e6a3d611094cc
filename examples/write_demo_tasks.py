"""Print the hand-written CaT tasks of the test suite (retail and airline) as JSONL."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cat_sets import ALL_TASKS  # noqa: E402

for task in ALL_TASKS:
    print(json.dumps(task))
