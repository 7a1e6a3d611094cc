"""What each algorithm trains on: the trajectories an offline algorithm picks from the records,
and the tasks GRPO plays episodes of.

* ``rft``, the paper's self-improvement (rejection fine-tuning, i.e. REINFORCE with a 0/1
  reward): the trajectories with reward 1.
* ``sft``, distillation: every trajectory whose reward is 0 or 1. Trajectories with a null
  reward (an infrastructure failure: a sandbox or inference error, see docs/TRAJECTORY.md) are
  left out, since their conversation is broken by something that was not the model's doing.
* ``dpo``: pairs of trajectories of the same ``task_id``: one with reward 1 (chosen) against one
  with reward 0 (rejected). Every trajectory of a task is used: the i-th pair of a task takes the
  i-th chosen and the i-th rejected trajectory, in trial order, cycling the shorter side, so a
  task with C chosen and R rejected gives max(C, R) pairs (at most ``max_pairs_per_task``).
  Tasks with only one side are counted and skipped.
* ``grpo``: the CaT tasks of its input, less, with ``skip_uniform_from``, those an earlier rollout
  solved in none or all of its trials (their groups would teach nothing).

Selecting needs no tokenizer and no TRL, so bad input fails before any slow import.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sca.records import CAT_TASK
from sca.records.io import InputError, StreamedInput


@dataclass
class Selection:
    """What an algorithm takes from the records: single examples (SFT) or pairs (DPO)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> count, for the summary
    notes: dict[str, int] = field(default_factory=dict)


def _by_reward(records: list[dict[str, Any]]) -> Counter:
    return Counter({1: "reward 1", 0: "reward 0", None: "reward null"}[r["reward"]] for r in records)


def select_rft(records: list[dict[str, Any]], config: Any = None) -> Selection:
    sel = Selection(records=[r for r in records if r["reward"] == 1])
    counts = _by_reward(records)
    for reason in ("reward 0", "reward null"):
        if counts[reason]:
            sel.skipped[reason] = counts[reason]
    if not sel.records:
        raise InputError(f"no trajectory with reward 1 to train on ({_describe_rewards(counts)})")
    return sel


def select_sft(records: list[dict[str, Any]], config: Any = None) -> Selection:
    sel = Selection(records=[r for r in records if r["reward"] is not None])
    counts = _by_reward(records)
    if counts["reward null"]:
        sel.skipped["reward null"] = counts["reward null"]
    if not sel.records:
        raise InputError(f"no trajectory with a reward (0 or 1) to train on ({_describe_rewards(counts)})")
    return sel


def select_dpo(records: list[dict[str, Any]], config: Any = None) -> Selection:
    limit = getattr(config, "max_pairs_per_task", None)
    tasks: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: {0: [], 1: []})
    sel = Selection()
    for r in records:
        if r["reward"] is None:
            sel.skipped["reward null"] += 1
        else:
            tasks[r["task_id"]][r["reward"]].append(r)
    for sides in tasks.values():
        chosen = sorted(sides[1], key=_trial_key)
        rejected = sorted(sides[0], key=_trial_key)
        if not chosen or not rejected:
            sel.skipped["task with no reward-0 trajectory" if chosen else "task with no reward-1 trajectory"] += 1
            continue
        n = max(len(chosen), len(rejected))
        if limit is not None:
            n = min(n, limit)
        sel.pairs += [(chosen[i % len(chosen)], rejected[i % len(rejected)]) for i in range(n)]
    sel.notes["tasks paired"] = sum(1 for s in tasks.values() if s[0] and s[1])
    if not sel.pairs:
        raise InputError(
            f"no DPO pair: no task has both a trajectory with reward 1 and one with reward 0 "
            f"({len(tasks)} tasks; {_describe_rewards(_by_reward(records))})"
        )
    return sel


def _trial_key(r: dict[str, Any]) -> tuple[int, str]:
    trial = r.get("trial")
    return (trial if isinstance(trial, int) else 0, r["id"])


def _describe_rewards(counts: Counter) -> str:
    total = sum(counts.values())
    parts = [f"{counts[k]} {k}" for k in ("reward 1", "reward 0", "reward null") if counts[k]]
    return f"{total} records" + (": " + ", ".join(parts) if parts else "")


# -- GRPO: the tasks ---------------------------------------------------------------------------------------


def read_tasks(path: str) -> StreamedInput:
    """The CaT task file, every line checked (one-line error at the first bad one); standard input (``-``)
    is read once and held, so later passes over it see the same tasks."""
    return StreamedInput(path, CAT_TASK).scan()


def load_tasks(source: str | StreamedInput, skip_uniform_from: str | None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The CaT tasks to train on (a path, or a :func:`read_tasks` input), and what was left out and why."""
    if not isinstance(source, StreamedInput):
        source = read_tasks(source)
    path = source.name
    tasks = list(source)
    notes: dict[str, int] = {}
    if skip_uniform_from:
        tallies: dict[str, list[int]] = {}
        p = Path(skip_uniform_from)
        if not p.exists():
            raise InputError(f"{skip_uniform_from}: no such file")
        with open(p, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    r = json.loads(raw)
                    reward = r.get("reward")
                    task_id = r["task_id"]
                except (ValueError, KeyError, AttributeError):
                    raise InputError(f"{skip_uniform_from}:{lineno}: not a trajectory record") from None
                if reward is None:
                    continue
                t = tallies.setdefault(task_id, [0, 0])
                t[0] += 1
                t[1] += int(reward == 1)
        uniform = {tid for tid, (n, c) in tallies.items() if n and c in (0, n)}
        kept = [t for t in tasks if t["id"] not in uniform]
        notes["left out: solved by none or all trials of the earlier rollout"] = len(tasks) - len(kept)
        tasks = kept
    if not tasks:
        raise InputError(f"{path}: no task to train on" + (" after leaving out uniform ones" if skip_uniform_from else ""))
    return tasks, notes
