"""Verifier quality by hand, as in the paper's Figure 4: a labelling sheet, and the rates its labels give.

:func:`sheet_rows` draws trajectories stratified by reward (half rewarded, half not, where there are
enough of each; the rest from the other stratum), deterministic for a seed, and lays each out for a
person: the instruction, the task's ``evaluate`` source, the episode as plain text (cut in the middle
to a bound) and the reward, with an empty ``label`` column. The labeller writes 1 where the task was
really done, 0 where it was not.

:func:`read_labels` reads the sheet back (a bad label or reward is a one-line error naming the CSV
line); :func:`label_rates` counts, per task format, the reward as the prediction and the label as the
truth: TP (reward 1, done), FP (reward 1, not done), TN (reward 0, not done), FN (reward 0, done), and
gives the false-positive rate FP / (FP + TN), the false-negative rate FN / (FN + TP), precision
TP / (TP + FP) and recall TP / (TP + FN), each with a percentile bootstrap interval over rows (null
where its denominator is 0).
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterable, Sequence
from typing import Any

from sca.audit.mutants import bootstrap
from sca.records.io import InputError
from sca.task_formats import task_format

#: the sheet's columns, in order (the labeller fills ``label``)
SHEET_COLUMNS = ("id", "task_id", "format", "env", "reward", "instruction", "evaluate", "episode", "label")
#: characters of an episode on the sheet by default (AuditConfig.episode_chars)
EPISODE_CHARS = 6000
#: the rates of :func:`label_rates`: (name, numerator cell, denominator cells)
RATES = (("false_positive_rate", "fp", ("fp", "tn")), ("false_negative_rate", "fn", ("fn", "tp")),
         ("precision", "tp", ("tp", "fp")), ("recall", "tp", ("tp", "fn")))
_LABELS = {"1": 1, "0": 0}


def _cut_middle(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = f"\n[... {len(text) - limit:,} characters cut ...]\n"
    keep = max(0, limit - len(marker))
    head = keep * 2 // 3
    return text[:head] + marker + text[len(text) - (keep - head):]


def _call_text(call: Any) -> str:
    fn = call.get("function", call) if isinstance(call, dict) else {}
    args = fn.get("arguments", "") if isinstance(fn, dict) else ""
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False)
    return f"-> {fn.get('name', '?') if isinstance(fn, dict) else '?'}({args})"


def render_episode(trajectory: dict[str, Any], limit: int = EPISODE_CHARS) -> str:
    """The conversation as text a person can read: each message after the system prompt as ``[ROLE]``
    and its text (an assistant's native tool calls as ``-> name(arguments)``), each message cut to a
    quarter of `limit` and the whole to `limit` characters (the middle goes first)."""
    per_message = max(100, limit // 4)
    parts = []
    for m in trajectory.get("messages", [])[1:]:
        if not isinstance(m, dict):
            continue
        role = {"assistant": "AGENT", "user": "USER", "tool": "TOOL"}.get(m.get("role"), str(m.get("role")).upper())
        text = m.get("content") if isinstance(m.get("content"), str) else ""
        calls = m.get("tool_calls") if isinstance(m.get("tool_calls"), list) else []
        body = "\n".join([text.strip()] * bool(text.strip()) + [_call_text(c) for c in calls])
        parts.append(f"[{role}] {_cut_middle(body, per_message)}")
    return _cut_middle("\n\n".join(parts), limit)


def sheet_rows(trajectories: Sequence[dict[str, Any]], n: int, tasks: dict[str, dict[str, Any]] | None = None,
               seed: int = 0, episode_chars: int = EPISODE_CHARS) -> list[dict[str, Any]]:
    """`n` trajectories (or all there are) laid out for labelling, stratified by reward: ``ceil(n/2)``
    rewarded and the rest unrewarded where there are enough, else the rest from the other stratum;
    drawn with ``random.Random(seed)`` from each stratum sorted by id, then shuffled together.
    Trajectories without a reward (infrastructure failures) are left out. ``evaluate`` comes from
    `tasks` (by id), else the trajectory's own ``evaluation_function``, else is empty."""
    tasks = tasks or {}
    strata = {r: sorted((t for t in trajectories if t.get("reward") == r and not isinstance(t.get("reward"), bool)),
                        key=lambda t: str(t["id"])) for r in (1, 0)}
    n1 = min(len(strata[1]), (n + 1) // 2)
    n0 = min(len(strata[0]), n - n1)
    n1 = min(len(strata[1]), n - n0)
    rng = random.Random(seed)
    picked = rng.sample(strata[1], n1) + rng.sample(strata[0], n0)
    rng.shuffle(picked)
    rows = []
    for t in picked:
        task = tasks.get(str(t.get("task_id")), {})
        evaluate = task.get("evaluation_function") or t.get("evaluation_function") or ""
        fmt = task_format(t) if "format" in t else task_format(task)
        rows.append({"id": t["id"], "task_id": t.get("task_id", ""), "format": fmt, "env": t.get("env", ""),
                     "reward": int(t["reward"]), "instruction": t.get("instruction", ""),
                     "evaluate": evaluate if isinstance(evaluate, str) else "",
                     "episode": render_episode(t, episode_chars), "label": ""})
    return rows


def sheet_csv(rows: Iterable[dict[str, Any]]) -> str:
    """The sheet as CSV text (a header, then one row each; texts quoted where they hold a comma, quote or
    line break, as spreadsheets read them)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=SHEET_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in SHEET_COLUMNS})
    return out.getvalue()


def read_labels(text: str, name: str = "<sheet>") -> tuple[list[dict[str, Any]], int]:
    """The labelled rows of a sheet's CSV `text` (``format``, ``reward`` and ``label`` as 0/1), and how
    many rows have no label yet. A missing column, a reward other than 0 or 1, or a label other than
    1, 0 or empty is an :class:`~sca.records.io.InputError` naming the line where its row starts."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{name}:1: empty file; expected the header {','.join(SHEET_COLUMNS)}") from None
    except csv.Error as e:
        raise InputError(f"{name}:1: not CSV: {e}") from None
    header = [h.strip() for h in header]
    missing = [c for c in ("reward", "label") if c not in header]
    if missing:
        raise InputError(f"{name}:1: missing column(s) {', '.join(missing)} (expected {','.join(SHEET_COLUMNS)})")
    col = {c: header.index(c) for c in header[::-1]}  # the first of a repeated name
    rows, unlabelled, line = [], 0, reader.line_num + 1
    while True:
        start = line
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise InputError(f"{name}:{start}: not CSV: {e}") from None
        line = reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        cell = {name: cells[i].strip() if i < len(cells) else "" for name, i in col.items()}
        label, reward = cell["label"], cell["reward"]
        if reward not in _LABELS:
            raise InputError(f"{name}:{start}: reward: expected 0 or 1, got {reward[:40]!r}")
        if not label:
            unlabelled += 1
            continue
        if label not in _LABELS:
            raise InputError(f"{name}:{start}: label: expected 1 (the task was done), 0 (it was not) or empty "
                             f"(not labelled yet), got {label[:40]!r}")
        rows.append({"id": cell.get("id", ""), "format": cell.get("format") or "cat", "reward": _LABELS[reward],
                     "label": _LABELS[label], "line": start})
    return rows, unlabelled


def _cells(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    c = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for r in rows:
        c[("t" if r["reward"] == r["label"] else "f") + ("p" if r["reward"] == 1 else "n")] += 1
    return c


def _rate(numerator: str, denominator: tuple[str, ...]) -> Any:
    def statistic(rows: Sequence[dict[str, Any]]) -> float | None:
        c = _cells(rows)
        d = sum(c[k] for k in denominator)
        return c[numerator] / d if d else None
    return statistic


def label_rates(rows: Sequence[dict[str, Any]], n_boot: int = 2000, seed: int = 0,
                confidence: float = 0.95) -> dict[str, Any]:
    """Figure 4's numbers per task format: ``{"by_format": {FORMAT: {"n", "tp", "fp", "tn", "fn",
    "false_positive_rate": [estimate, low, high], "false_negative_rate", "precision", "recall"}}, "all":
    {...}, "n_boot", "seed", "confidence"}`` (a rate whose denominator is 0 is null)."""
    def pool(group: Sequence[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"n": len(group), **_cells(group)}
        for name, numerator, denominator in RATES:
            out[name] = bootstrap(group, _rate(numerator, denominator), n_boot, seed, confidence)
        return out

    formats = sorted({r["format"] for r in rows})
    return {"by_format": {f: pool([r for r in rows if r["format"] == f]) for f in formats}, "all": pool(rows),
            "n_boot": n_boot, "seed": seed, "confidence": confidence}
