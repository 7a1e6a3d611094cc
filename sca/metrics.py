"""Benchmark metrics over repeated trials: Pass@1, Pass@k, pass^k, bootstrap intervals, paired comparison.

An evaluation run produces one record per (task, trial): a mapping with at
least ``task_id`` (str), ``trial`` (int) and ``reward`` (0/1 or bool). A
record whose ``reward`` is ``None`` is an infrastructure failure (the trial
could not be run or judged): it is left out of every metric and counted.

* :func:`pass_at_k` / :func:`pass_hat_k`: the per-task estimators.
* :func:`task_scores`: per-task n, c and the three metrics.
* :func:`summarize`: the means over tasks with bootstrap confidence intervals.
* :func:`compare`: a paired comparison of two runs on the same tasks, with a
  verdict in plain words.
* :func:`sign_flip_p_value`: the paired permutation test :func:`compare` uses.

Standard library only (this module is imported by the CLI, which must start fast).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from numbers import Real
from typing import Any

__all__ = [
    "METRICS",
    "Comparison",
    "Summary",
    "TaskScore",
    "TaskScores",
    "compare",
    "pass_at_k",
    "pass_hat_k",
    "sign_flip_p_value",
    "summarize",
    "task_scores",
]

#: The per-task metrics :func:`compare` can compare, as named on :class:`TaskScore`.
METRICS = ("pass1", "pass_k", "pass_hat_k")

#: Up to this many non-zero paired differences the permutation p-value is exact.
EXACT_PERMUTATION_MAX = 20


# --------------------------------------------------------------------------- argument checks


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def _check_counts(n: Any, c: Any, k: Any) -> None:
    _check_int("n", n)
    _check_int("c", c)
    _check_int("k", k)
    if n < 1:
        raise ValueError(f"n (number of trials) must be at least 1, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"c (successful trials) must be between 0 and n={n}, got c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and n={n}, got k={k}")


def _check_k(k: Any) -> int:
    _check_int("k", k)
    if k < 1:
        raise ValueError(f"k must be at least 1, got k={k}")
    return k


def _check_resampling(n_boot: Any, confidence: Any) -> None:
    _check_int("n_boot", n_boot)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if isinstance(confidence, bool) or not isinstance(confidence, Real) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number strictly between 0 and 1, got {confidence!r}")


# --------------------------------------------------------------------------- per-task estimators


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of Pass@k from ``n`` trials of which ``c`` succeeded.

    Pass@k is the chance that at least one of k trials succeeds. Chen et al.
    (2021, "Evaluating Large Language Models Trained on Code", the HumanEval
    paper) estimate it without bias from n >= k trials as
    ``1 - C(n-c, k) / C(n, k)``: one minus the chance that k trials drawn
    without replacement from the n are all failures. It is 1.0 when
    ``n - c < k`` (every draw of k contains a success).

    Computed in the paper's product form, ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``,
    so no large binomial coefficient is ever formed.

    Raises ValueError unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    _check_counts(n, c, k)
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_hat_k(n: int, c: int, k: int) -> float:
    """pass^k from ``n`` trials of which ``c`` succeeded: the chance that k trials all succeed.

    tau-bench (Yao et al. 2024) reports pass^k as the probability that k
    trials drawn without replacement from the n all succeed,
    ``C(c, k) / C(n, k)``; it measures consistency, and falls as k grows.
    It is 0.0 when ``c < k``.

    Computed as the product ``prod_{i=0}^{k-1} (c-i)/(n-i)``, never forming
    large binomials.

    Raises ValueError unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    _check_counts(n, c, k)
    if c < k:
        return 0.0
    prod = 1.0
    for i in range(k):
        prod *= (c - i) / (n - i)
    return prod


# --------------------------------------------------------------------------- per-task scores


@dataclass(frozen=True)
class TaskScore:
    """The scores of one task: ``n`` valid trials, ``c`` of them successful.

    ``k`` is the k actually used for ``pass_k`` and ``pass_hat_k``: the
    requested k, or ``n`` when the task has fewer than k valid trials.
    """

    task_id: str
    n: int
    c: int
    k: int
    pass1: float
    pass_k: float
    pass_hat_k: float


@dataclass(frozen=True)
class TaskScores:
    """What :func:`task_scores` returns."""

    scores: list[TaskScore]  # one per task with at least one valid trial, sorted by task_id
    excluded: int  # records whose reward was None (infrastructure failures), left out of every metric
    empty_tasks: tuple[str, ...] = ()  # tasks whose every record was an infrastructure failure: no score


def _reward_value(reward: Any, where: str) -> int | None:
    if reward is None:
        return None
    if isinstance(reward, bool):
        return int(reward)
    if isinstance(reward, Real) and reward in (0, 1):
        return int(reward)
    raise ValueError(f"{where}: reward must be 0, 1, a bool, or None (infrastructure failure), got {reward!r}")


def task_scores(results: Iterable[Mapping[str, Any]], k: int) -> TaskScores:
    """Per-task n, c, Pass@1 = c/n, Pass@k (:func:`pass_at_k`) and pass^k (:func:`pass_hat_k`).

    ``results`` holds one mapping per trial with ``task_id`` (str), ``trial``
    (int) and ``reward`` (0/1, 0.0/1.0 or bool). A record whose reward is
    ``None`` is an infrastructure failure: it does not count as a trial of its
    task, and it is counted in ``excluded``. A task all of whose records are
    infrastructure failures gets no score and is listed in ``empty_tasks``.

    A task with fewer than ``k`` valid trials (n < k) has its Pass@k and pass^k
    computed with k' = n, i.e. Pass@n and pass^n over the trials it has; the
    k used is recorded on each :class:`TaskScore`.

    Scores come back sorted by task_id. Raises ValueError for a record that is
    not a mapping, lacks a field, has a field of the wrong type, or repeats a
    (task_id, trial) pair already seen (retried trials must be deduplicated
    by the caller).
    """
    _check_k(k)
    counts: dict[str, list[int]] = {}  # task_id -> [n, c]
    seen: set[tuple[str, int]] = set()
    excluded = 0
    for i, rec in enumerate(results):
        where = f"record {i}"
        if not isinstance(rec, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {type(rec).__name__}")
        for key in ("task_id", "trial", "reward"):
            if key not in rec:
                raise ValueError(f"{where}: missing field {key!r}")
        task_id, trial = rec["task_id"], rec["trial"]
        if not isinstance(task_id, str):
            raise ValueError(f"{where}: task_id must be a string, got {task_id!r}")
        if isinstance(trial, bool) or not isinstance(trial, int):
            raise ValueError(f"{where}: trial must be an integer, got {trial!r}")
        if (task_id, trial) in seen:
            raise ValueError(f"{where}: duplicate record for task {task_id!r} trial {trial}")
        seen.add((task_id, trial))
        reward = _reward_value(rec["reward"], where)
        nc = counts.setdefault(task_id, [0, 0])
        if reward is None:
            excluded += 1
            continue
        nc[0] += 1
        nc[1] += reward
    scores = []
    empty = []
    for task_id in sorted(counts):
        n, c = counts[task_id]
        if n == 0:
            empty.append(task_id)
            continue
        kk = min(k, n)
        scores.append(TaskScore(task_id, n, c, kk, c / n, pass_at_k(n, c, kk), pass_hat_k(n, c, kk)))
    return TaskScores(scores, excluded, tuple(empty))


# --------------------------------------------------------------------------- resampling helpers


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile of already sorted values, interpolating linearly between order statistics."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def _bootstrap_cis(
    columns: Sequence[Sequence[float]], n_boot: int, rng: random.Random, confidence: float
) -> list[tuple[float, float]]:
    """Percentile bootstrap intervals for the means of several equally long columns.

    Each replicate draws len(rows) row indices with replacement, the same rows
    for every column (so the columns stay paired).
    """
    m = len(columns[0])
    idx = range(m)
    reps: list[list[float]] = [[] for _ in columns]
    for _ in range(n_boot):
        draw = rng.choices(idx, k=m)
        for col, out in zip(columns, reps):
            out.append(math.fsum(col[j] for j in draw) / m)
    alpha = 1.0 - confidence
    cis = []
    for out in reps:
        out.sort()
        cis.append((_quantile(out, alpha / 2), _quantile(out, 1 - alpha / 2)))
    return cis


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Summary:
    """Benchmark-level scores of one run: means over tasks, with bootstrap intervals over tasks."""

    tasks: int  # tasks with at least one valid trial
    trials: int  # valid trials (reward not None)
    excluded: int  # infrastructure failures (reward None), left out
    empty_tasks: int  # tasks with no valid trial at all, left out
    short_tasks: int  # tasks with fewer than k valid trials (scored with k' = n)
    k: int
    pass1: float
    pass_k: float
    pass_hat_k: float
    pass1_ci: tuple[float, float]
    pass_k_ci: tuple[float, float]
    pass_hat_k_ci: tuple[float, float]
    confidence: float
    n_boot: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict (intervals become two-item lists)."""
        d = asdict(self)
        for key in ("pass1_ci", "pass_k_ci", "pass_hat_k_ci"):
            d[key] = list(d[key])
        return d


def summarize(
    results: Iterable[Mapping[str, Any]],
    k: int = 4,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Summary:
    """Mean Pass@1, Pass@k and pass^k over tasks, each with a bootstrap confidence interval.

    ``pass1`` is the mean over tasks of c/n (Pass@1 averaged over trials),
    ``pass_k`` the mean of the unbiased per-task Pass@k and ``pass_hat_k`` the
    mean of per-task pass^k, all from :func:`task_scores` (whose rules on
    infrastructure failures and on tasks with fewer than k trials apply).

    The intervals are percentile bootstrap intervals over tasks: ``n_boot``
    times, draw as many tasks as there are with replacement (with
    ``random.Random(seed)``), take each mean; the interval runs from the
    (1-confidence)/2 to the (1+confidence)/2 quantile of those means. The
    same draws serve all three metrics. The result is deterministic for a
    given seed. Trials within a task are not resampled, so the interval
    reflects which tasks the benchmark happens to hold, not trial noise.

    Raises ValueError on bad arguments or when no task has a valid trial.
    """
    _check_k(k)
    _check_resampling(n_boot, confidence)
    scored = task_scores(results, k)
    scores = scored.scores
    if not scores:
        raise ValueError("no task has a valid trial: nothing to summarize")
    columns = [[getattr(s, m) for s in scores] for m in METRICS]
    cis = _bootstrap_cis(columns, n_boot, random.Random(seed), confidence)
    means = [_mean(col) for col in columns]
    return Summary(
        tasks=len(scores),
        trials=sum(s.n for s in scores),
        excluded=scored.excluded,
        empty_tasks=len(scored.empty_tasks),
        short_tasks=sum(1 for s in scores if s.n < k),
        k=k,
        pass1=means[0],
        pass_k=means[1],
        pass_hat_k=means[2],
        pass1_ci=cis[0],
        pass_k_ci=cis[1],
        pass_hat_k_ci=cis[2],
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
    )


# --------------------------------------------------------------------------- paired permutation test


def _subset_sums(values: Sequence[float]) -> list[float]:
    """The sums sum(+-v) over all 2^len(values) sign patterns."""
    sums = [0.0]
    for v in values:
        sums = [s + v for s in sums] + [s - v for s in sums]
    return sums


def sign_flip_p_value(diffs: Sequence[float], *, n_perm: int = 10000, seed: int = 0) -> tuple[float, bool]:
    """Two-sided p-value of a paired sign-flip permutation test; returns ``(p, exact)``.

    Under the null hypothesis that the two runs are exchangeable on every
    task, each paired difference is as likely to have either sign. The test
    statistic is |sum of the differences|; the p-value is the share of the
    2^m sign patterns of the m non-zero differences whose statistic is at
    least the observed one (zero differences cannot change sign and are
    left out). Ties count as at least as extreme.

    Exact (all 2^m patterns, enumerated by meeting in the middle) when
    m <= 20; otherwise Monte Carlo with ``n_perm`` random patterns from
    ``random.Random(seed)``, reported as (1 + hits) / (1 + n_perm), which
    never gives 0. With no non-zero difference p is 1.
    """
    _check_int("n_perm", n_perm)
    if n_perm < 1:
        raise ValueError(f"n_perm must be at least 1, got {n_perm}")
    nz = [float(d) for d in diffs if d != 0]
    m = len(nz)
    if m == 0:
        return 1.0, True
    observed = abs(math.fsum(nz))
    # Sums are rounded floats: a pattern whose |sum| is within rounding of the observed one is a tie.
    tol = 1e-9 * max(1.0, math.fsum(abs(d) for d in nz))
    threshold = observed - tol
    if threshold <= 0:
        return 1.0, m <= EXACT_PERMUTATION_MAX
    if m <= EXACT_PERMUTATION_MAX:
        left = _subset_sums(nz[: m // 2])
        right = sorted(_subset_sums(nz[m // 2 :]))
        hits = 0
        for s in left:
            # |s + r| >= threshold  <=>  r >= threshold - s  or  r <= -threshold - s (disjoint as threshold > 0)
            hits += len(right) - bisect_left(right, threshold - s)
            hits += bisect_right(right, -threshold - s)
        return hits / 2**m, True
    rng = random.Random(seed)
    hits = 0
    for _ in range(n_perm):
        bits = rng.getrandbits(m)
        total = math.fsum(d if (bits >> i) & 1 else -d for i, d in enumerate(nz))
        if abs(total) >= threshold:
            hits += 1
    return (1 + hits) / (1 + n_perm), False


# --------------------------------------------------------------------------- comparison


_METRIC_LABELS = {"pass1": "Pass@1", "pass_k": "Pass@{k}", "pass_hat_k": "pass^{k}"}


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of run B against run A on the tasks both ran; differences are B - A."""

    metric: str
    k: int
    name_a: str
    name_b: str
    tasks: int  # tasks paired (scored in both runs)
    dropped_a: int  # tasks scored in A only, left out
    dropped_b: int  # tasks scored in B only, left out
    excluded_a: int  # infrastructure failures in A
    excluded_b: int  # infrastructure failures in B
    score_a: float  # mean metric of A over the paired tasks
    score_b: float  # mean metric of B over the paired tasks
    mean_diff: float  # score_b - score_a (a rate: multiply by 100 for points)
    ci: tuple[float, float]  # paired bootstrap interval of mean_diff
    p_value: float  # two-sided paired sign-flip permutation test
    p_exact: bool  # True when p_value was computed exactly, False when Monte Carlo
    nonzero: int  # tasks whose difference is not zero
    significant: bool  # p < 1 - confidence and the interval excludes 0
    confidence: float
    diffs: dict[str, float]  # task_id -> B - A
    verdict: str
    short_tasks: int = 0  # pass_k / pass_hat_k: paired tasks with fewer than k valid trials in a run,
    #                       compared at k' = the fewer trials, on both sides

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict (the interval becomes a two-item list)."""
        d = asdict(self)
        d["ci"] = list(d["ci"])
        return d


def _points(x: float) -> str:
    s = f"{x * 100:.1f}"
    return "0.0" if s == "-0.0" else s


def _format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _alpha(confidence: float) -> float:
    """The p-value at and above which a difference is within the noise: 1 - confidence, rounded, so
    that p = 0.05 at 95% is (1 - 0.95 is 0.050000000000000044 in floating point)."""
    return round(1.0 - confidence, 12)


def _verdict(
    name_a: str, name_b: str, label: str, diff: float, ci: tuple[float, float],
    p: float, tasks: int, confidence: float,
) -> str:
    pct = f"{confidence * 100:g}%"
    stats = f"{pct} CI {_points(ci[0])} to {_points(ci[1])}; paired permutation {_format_p(p)}, {tasks} tasks"
    if diff == 0:
        head = f"{name_a} and {name_b} score the same on {label} (difference 0.0 points, {stats})"
    else:
        better, worse = (name_b, name_a) if diff > 0 else (name_a, name_b)
        size = _points(abs(diff))
        by = "less than 0.1" if size == "0.0" else size
        head = f"{better} is better than {worse} on {label} by {by} points ({stats})"
    alpha = _alpha(confidence)
    if p >= alpha:
        return (f"{head}: the difference is within the noise ({_format_p(p)}); "
                "more tasks or trials are needed to tell them apart.")
    if ci[0] <= 0 <= ci[1]:
        return (f"{head}: borderline: the permutation test gives {_format_p(p)} but the bootstrap interval "
                "includes zero; more tasks or trials are needed to be sure.")
    return f"{head}: larger than the noise."


def compare(
    results_a: Iterable[Mapping[str, Any]],
    results_b: Iterable[Mapping[str, Any]],
    k: int = 4,
    metric: str = "pass1",
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    n_perm: int = 10000,
    name_a: str = "A",
    name_b: str = "B",
) -> Comparison:
    """Paired comparison of two evaluation runs on the same benchmark, with a verdict in plain words.

    Both runs are scored per task with :func:`task_scores`; tasks are paired
    by task_id, and tasks scored in only one run are dropped (and counted).
    For each paired task the difference B - A of ``metric`` ("pass1",
    "pass_k" or "pass_hat_k") is taken; Pass@k and pass^k of a task use the
    same k' = min(k, n_A, n_B) in both runs (counted in ``short_tasks`` when
    k' < k). Reported:

    * ``mean_diff``, the mean of the differences;
    * ``ci``, a paired percentile bootstrap interval of that mean (tasks
      resampled with replacement ``n_boot`` times with ``random.Random(seed)``,
      each draw keeping a task's A and B together);
    * ``p_value``, the two-sided paired sign-flip permutation test of
      :func:`sign_flip_p_value` (exact up to 20 non-zero differences, Monte
      Carlo with ``n_perm`` draws and the same seed beyond).

    The verdict calls the difference "larger than the noise" only when
    p < 1 - confidence and the interval excludes zero; "within the noise"
    when p >= 1 - confidence; "borderline" otherwise. Differences are written
    in percentage points. Raises ValueError on bad arguments or when the runs
    share no scored task.
    """
    _check_k(k)
    _check_resampling(n_boot, confidence)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    sa = task_scores(results_a, k)
    sb = task_scores(results_b, k)
    by_a = {s.task_id: s for s in sa.scores}
    by_b = {s.task_id: s for s in sb.scores}
    common = sorted(by_a.keys() & by_b.keys())
    if not common:
        raise ValueError(f"the two runs share no scored task ({len(by_a)} in A, {len(by_b)} in B)")
    if metric == "pass1":
        col_a = [by_a[t].pass1 for t in common]
        col_b = [by_b[t].pass1 for t in common]
        short = 0
    else:
        # a task with fewer valid trials in one run than k (infrastructure failures) is compared
        # at the same k' on both sides: Pass@4 against Pass@2 would favour the run with more trials
        fn = pass_at_k if metric == "pass_k" else pass_hat_k
        ks = {t: min(k, by_a[t].n, by_b[t].n) for t in common}
        col_a = [fn(by_a[t].n, by_a[t].c, ks[t]) for t in common]
        col_b = [fn(by_b[t].n, by_b[t].c, ks[t]) for t in common]
        short = sum(kk < k for kk in ks.values())
    diffs = [b - a for a, b in zip(col_a, col_b)]
    mean_diff = _mean(diffs)
    (ci,) = _bootstrap_cis([diffs], n_boot, random.Random(seed), confidence)
    p, exact = sign_flip_p_value(diffs, n_perm=n_perm, seed=seed)
    alpha = _alpha(confidence)
    label = _METRIC_LABELS[metric].format(k=k)
    return Comparison(
        metric=metric,
        k=k,
        name_a=name_a,
        name_b=name_b,
        tasks=len(common),
        dropped_a=len(by_a) - len(common),
        dropped_b=len(by_b) - len(common),
        excluded_a=sa.excluded,
        excluded_b=sb.excluded,
        score_a=_mean(col_a),
        score_b=_mean(col_b),
        mean_diff=mean_diff,
        ci=ci,
        p_value=p,
        p_exact=exact,
        nonzero=sum(1 for d in diffs if d != 0),
        significant=p < alpha and not ci[0] <= 0 <= ci[1],
        confidence=confidence,
        diffs=dict(zip(common, diffs)),
        verdict=_verdict(name_a, name_b, label, mean_diff, ci, p, len(common), confidence) + (
            f" {short} of the {len(common)} tasks had fewer than {k} valid trials in a run: each was compared "
            "at its fewer trials in both runs." if short else ""),
        short_tasks=short,
    )
