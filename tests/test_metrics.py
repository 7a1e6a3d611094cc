"""Benchmark metrics: Pass@k, pass^k, per-task scores, bootstrap summaries and paired comparisons.

Expected values are worked out by hand in the comments, with C(a, b) the binomial coefficient.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction

import pytest

from sca import metrics
from sca.metrics import (
    Comparison,
    Summary,
    TaskScore,
    compare,
    pass_at_k,
    pass_hat_k,
    sign_flip_p_value,
    summarize,
    task_scores,
)


def records(rewards_by_task: dict[str, list]) -> list[dict]:
    """One record per trial: {"t1": [1, 0, None]} -> trials 0, 1, 2 of task t1."""
    return [
        {"task_id": t, "trial": i, "reward": r}
        for t, rewards in rewards_by_task.items()
        for i, r in enumerate(rewards)
    ]


# --------------------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (4, 1, 1, 0.25),  # 1 - C(3,1)/C(4,1) = 1 - 3/4
        (4, 1, 4, 1.0),  # n - c = 3 < k = 4: every draw of 4 holds the success
        (4, 0, 1, 0.0),  # 1 - C(4,1)/C(4,1)
        (4, 0, 4, 0.0),  # 1 - C(4,4)/C(4,4)
        (4, 4, 1, 1.0),  # n - c = 0 < 1
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 4, 5 / 6),  # 1 - C(7,4)/C(10,4) = 1 - 35/210 = 1 - 1/6
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (4, 2, 3, 1.0),  # n - c = 2 < 3
        (10, 1, 1, 0.1),  # k = 1 is c/n: 1 - C(9,1)/C(10,1) = 1 - 9/10
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_exact_binomials_on_a_grid():
    # The definition 1 - C(n-c, k)/C(n, k) in exact rational arithmetic (math.comb(a, b) = 0 when b > a).
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    # C(10**6, 1000) has thousands of digits and overflows a float; the product form does not.
    n, c, k = 10**6, 500, 1000
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    got = pass_at_k(n, c, k)
    assert math.isfinite(got)
    assert got == pytest.approx(float(exact), rel=1e-9)
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001, abs=1e-15)  # 1 - 999/1000


@pytest.mark.parametrize(
    "args, message",
    [
        ((4, 5, 1), "c (successful trials) must be between 0 and n=4"),
        ((4, -1, 1), "c (successful trials) must be between 0 and n=4"),
        ((4, 1, 0), "k must be between 1 and n=4"),
        ((4, 1, 5), "k must be between 1 and n=4"),
        ((0, 0, 1), "n (number of trials) must be at least 1"),
        ((4.0, 1, 1), "n must be an integer"),
        ((4, True, 1), "c must be an integer"),
    ],
)
def test_pass_at_k_and_pass_hat_k_reject_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pass_at_k(*args)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pass_hat_k(*args)


# --------------------------------------------------------------------------- pass^k


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (4, 2, 2, 1 / 6),  # C(2,2)/C(4,2) = 1/6
        (4, 1, 1, 0.25),  # C(1,1)/C(4,1) = 1/4: pass^1 = pass@1 = c/n
        (4, 4, 4, 1.0),  # C(4,4)/C(4,4)
        (4, 3, 4, 0.0),  # c < k: C(3,4) = 0
        (10, 3, 2, 1 / 15),  # C(3,2)/C(10,2) = 3/45
        (5, 4, 3, 0.4),  # C(4,3)/C(5,3) = 4/10
    ],
)
def test_pass_hat_k_hand_values(n, c, k, expected):
    assert pass_hat_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_hat_k_matches_exact_binomials_on_a_grid():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = Fraction(math.comb(c, k), math.comb(n, k))
                assert pass_hat_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)


# --------------------------------------------------------------------------- per-task scores

# The hand-worked set: three tasks of four trials, one trial of t2 an infrastructure failure.
HAND = records({
    "t1": [1, 0, 0, 1],  # n=4, c=2
    "t2": [True, True, None, 1],  # n=3, c=3 (the None is excluded, not a failure)
    "t3": [0, 1, 0.0, 0],  # n=4, c=1
})


def test_task_scores_hand_set_k2():
    scored = task_scores(HAND, 2)
    scores = scored.scores
    assert scored.excluded == 1
    assert [(s.task_id, s.n, s.c, s.k) for s in scores] == [("t1", 4, 2, 2), ("t2", 3, 3, 2), ("t3", 4, 1, 2)]
    # t1: pass1 = 2/4; pass@2 = 1 - C(2,2)/C(4,2) = 5/6; pass^2 = C(2,2)/C(4,2) = 1/6
    # t2: pass1 = 3/3; pass@2 = 1 (n-c = 0 < 2);      pass^2 = C(3,2)/C(3,2) = 1
    # t3: pass1 = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1/2; pass^2 = C(1,2)/C(4,2) = 0
    expected = [(0.5, 5 / 6, 1 / 6), (1.0, 1.0, 1.0), (0.25, 0.5, 0.0)]
    for s, (p1, pk, phk) in zip(scores, expected):
        assert (s.pass1, s.pass_k, s.pass_hat_k) == pytest.approx((p1, pk, phk), abs=1e-12)


def test_task_with_fewer_than_k_valid_trials_uses_k_equal_n():
    # t2 has 3 valid trials < k = 4, so it is scored with k' = 3: pass@3 = 1 (n-c = 0 < 3),
    # pass^3 = C(3,3)/C(3,3) = 1. The others keep k = 4.
    scores = task_scores(HAND, 4).scores
    t2 = scores[1]
    assert t2 == TaskScore("t2", n=3, c=3, k=3, pass1=1.0, pass_k=1.0, pass_hat_k=1.0)
    assert [s.k for s in scores] == [4, 3, 4]
    # A task with 2 valid trials out of 4, one success: k' = 2: pass@2 = 1 - C(1,2)/C(2,2) = 1; pass^2 = 0.
    scored = task_scores(records({"s": [1, None, 0, None]}), 4)
    (short,) = scored.scores
    assert (short.n, short.c, short.k, short.pass_k, short.pass_hat_k, scored.excluded) == (2, 1, 2, 1.0, 0.0, 2)


def test_task_whose_every_trial_failed_infrastructure_has_no_score():
    scored = task_scores(records({"ok": [1, 0], "down": [None, None]}), 2)
    assert [s.task_id for s in scored.scores] == ["ok"]
    assert scored.excluded == 2
    assert scored.empty_tasks == ("down",)


@pytest.mark.parametrize(
    "recs, message",
    [
        ([{"trial": 0, "reward": 1}], "record 0: missing field 'task_id'"),
        ([{"task_id": "a", "reward": 1}], "record 0: missing field 'trial'"),
        ([{"task_id": "a", "trial": 0}], "record 0: missing field 'reward'"),
        ([{"task_id": 1, "trial": 0, "reward": 1}], "record 0: task_id must be a string"),
        ([{"task_id": "a", "trial": "0", "reward": 1}], "record 0: trial must be an integer"),
        ([{"task_id": "a", "trial": 0, "reward": 0.5}], "record 0: reward must be 0, 1, a bool, or None"),
        ([{"task_id": "a", "trial": 0, "reward": "1"}], "record 0: reward must be 0, 1, a bool, or None"),
        ([{"task_id": "a", "trial": 0, "reward": 1}, {"task_id": "a", "trial": 0, "reward": None}],
         "record 1: duplicate record for task 'a' trial 0"),
        (["not a mapping"], "record 0: expected a mapping"),
    ],
)
def test_task_scores_rejects_bad_records(recs, message):
    with pytest.raises(ValueError, match=message):
        task_scores(recs, 1)


def test_task_scores_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be at least 1"):
        task_scores(HAND, 0)


# --------------------------------------------------------------------------- summarize


def test_summarize_hand_set_k4():
    s = summarize(HAND, 4)
    assert (s.tasks, s.trials, s.excluded, s.empty_tasks, s.short_tasks, s.k) == (3, 11, 1, 0, 1, 4)
    # Per task (pass1, pass@k, pass^k) with k = 4 (k' = 3 for t2):
    # t1 (n=4,c=2): 1/2, 1 (n-c = 2 < 4), 0 (c < 4)
    # t2 (n=3,c=3): 1,   1,               C(3,3)/C(3,3) = 1
    # t3 (n=4,c=1): 1/4, 1 (n-c = 3 < 4), 0
    # means: pass1 = (1/2 + 1 + 1/4)/3 = 7/12; pass@4 = 3/3 = 1; pass^4 = 1/3
    assert s.pass1 == pytest.approx(7 / 12, abs=1e-12)
    assert s.pass_k == pytest.approx(1.0, abs=1e-12)
    assert s.pass_hat_k == pytest.approx(1 / 3, abs=1e-12)


def test_summarize_hand_set_k2():
    s = summarize(HAND, 2)
    # From test_task_scores_hand_set_k2: pass1 = (1/2 + 1 + 1/4)/3 = 7/12;
    # pass@2 = (5/6 + 1 + 1/2)/3 = (14/6)/3 = 7/9; pass^2 = (1/6 + 1 + 0)/3 = 7/18
    assert (s.pass1, s.pass_k, s.pass_hat_k) == pytest.approx((7 / 12, 7 / 9, 7 / 18), abs=1e-12)
    assert s.short_tasks == 0


def test_bootstrap_ci_collapses_when_every_task_scores_the_same():
    # Every task: 2 of 4 -> pass1 = 1/2, pass@2 = 1 - C(2,2)/C(4,2) = 5/6, pass^2 = 1/6, for any resample.
    s = summarize(records({f"t{i}": [1, 0, 1, 0] for i in range(7)}), 2, n_boot=300)
    for point, ci in [(0.5, s.pass1_ci), (5 / 6, s.pass_k_ci), (1 / 6, s.pass_hat_k_ci)]:
        assert ci == pytest.approx((point, point), abs=1e-12)
    assert (s.pass1, s.pass_k, s.pass_hat_k) == pytest.approx((0.5, 5 / 6, 1 / 6), abs=1e-12)


def test_bootstrap_ci_of_two_opposite_tasks_spans_zero_to_one():
    # Tasks scoring 0 and 1: a resample of 2 tasks has mean 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4.
    # The 2.5% and 97.5% quantiles of 2000 such means are 0 and 1 (each end holds ~500 of them, far above 50).
    s = summarize(records({"lo": [0, 0, 0, 0], "hi": [1, 1, 1, 1]}), 4)
    assert s.pass1 == 0.5
    assert s.pass1_ci == (0.0, 1.0)


def test_bootstrap_ci_lies_within_task_scores_and_contains_the_mean():
    # Per-task pass1: 0, 1/4, 1/2, 3/4, 1, 1 -> mean 3.5/6 = 7/12.
    rewards = {"a": [0, 0, 0, 0], "b": [1, 0, 0, 0], "c": [1, 1, 0, 0], "d": [1, 1, 1, 0],
               "e": [1, 1, 1, 1], "f": [1, 1, 1, 1]}
    s = summarize(records(rewards), 4, n_boot=2000, seed=3)
    assert s.pass1 == pytest.approx(7 / 12)
    lo, hi = s.pass1_ci
    assert 0.0 <= lo < s.pass1 < hi <= 1.0
    assert hi - lo > 0.2  # six spread-out tasks leave real uncertainty
    # pass^4 per task: 0, 0, 0, 0, 1, 1 -> mean 1/3; the interval sits in [0, 1] around it.
    assert s.pass_hat_k == pytest.approx(1 / 3)
    assert 0.0 <= s.pass_hat_k_ci[0] < 1 / 3 < s.pass_hat_k_ci[1] <= 1.0


def test_bootstrap_resamples_the_same_tasks_for_every_metric():
    # With k = 1 every task's pass@1 and pass^1 are its c/n: the three columns are one column, so resampling the
    # same task indices for each gives the same interval three times; separate draws per column would not.
    rewards = {f"t{i}": [int(j < i % 5) for j in range(4)] for i in range(12)}  # c/n from 0 to 1 over the tasks
    s = summarize(records(rewards), 1, n_boot=40, seed=2)
    assert s.pass1_ci[1] - s.pass1_ci[0] > 0.1
    assert s.pass_k_ci == pytest.approx(s.pass1_ci, abs=1e-12)
    assert s.pass_hat_k_ci == pytest.approx(s.pass1_ci, abs=1e-12)


class ScriptedDraws:
    """The random source of a bootstrap, scripted: each replicate's drawn row indices, in turn."""

    def __init__(self, draws):
        self.draws = iter(draws)

    def choices(self, population, k):
        draw = next(self.draws)
        assert len(draw) == k and set(draw) <= set(population)
        return draw


def test_bootstrap_interval_is_the_2_5_and_97_5_percent_quantiles():
    # 200 rows, row 0 worth 1 and the others 0: a replicate that draws row 0 r times has mean r/200. 201
    # replicates (r = 0..200, in scrambled order) give the means 0, 1/200, ..., 1 once each; the 2.5% quantile
    # is the one at position 0.025 * 200 = 5 of the sorted means, 5/200, and the 97.5% one 195/200.
    m = 200
    column = [1.0] + [0.0] * (m - 1)
    order = [(r * 73) % 201 for r in range(201)]  # 73 is prime to 201: a permutation of 0..200
    draws = [[0] * r + [1] * (m - r) for r in order]
    (ci,) = metrics._bootstrap_cis([column], 201, ScriptedDraws(draws), 0.95)
    assert ci == pytest.approx((5 / 200, 195 / 200), abs=1e-12)
    # two columns: the same draws serve both (the second is twice the first)
    lo, hi = metrics._bootstrap_cis([column, [2 * x for x in column]], 201, ScriptedDraws(draws), 0.9)
    assert lo == pytest.approx((10 / 200, 190 / 200), abs=1e-12)  # the 5% and 95% quantiles
    assert hi == pytest.approx((20 / 200, 380 / 200), abs=1e-12)


def test_summarize_is_deterministic_for_a_seed():
    # 30 tasks of 8 trials whose Pass@1 runs over 3/8 .. 8/8 (an arbitrary but fixed pattern).
    rewards = {f"t{i}": [(i * j + j) % 5 < 2 + i % 3 for j in range(8)] for i in range(30)}
    # Few replicates, so that the interval depends visibly on which tasks were drawn.
    a = summarize(records(rewards), 4, n_boot=25, seed=11)
    b = summarize(records(rewards), 4, n_boot=25, seed=11)
    assert a == b
    others = {summarize(records(rewards), 4, n_boot=25, seed=s).pass1_ci for s in range(5)}
    assert len(others) > 1  # the seed does drive the resampling
    # Same seed, same draws: a wider confidence gives an interval at least as wide.
    wide = summarize(records(rewards), 4, n_boot=25, seed=11, confidence=0.99)
    assert wide.pass1_ci[0] <= a.pass1_ci[0] and a.pass1_ci[1] <= wide.pass1_ci[1]


def test_summary_to_dict_is_plain_json():
    d = summarize(HAND, 4, n_boot=50).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["pass1_ci"] == list(summarize(HAND, 4, n_boot=50).pass1_ci)
    assert set(d) >= {"tasks", "trials", "excluded", "pass1", "pass_k", "pass_hat_k",
                      "pass1_ci", "pass_k_ci", "pass_hat_k_ci", "k", "n_boot", "seed", "confidence"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "k must be at least 1"),
        ({"n_boot": 0}, "n_boot must be at least 1"),
        ({"confidence": 1.0}, "confidence must be a number strictly between 0 and 1"),
        ({"confidence": 0}, "confidence must be a number strictly between 0 and 1"),
    ],
)
def test_summarize_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        summarize(HAND, **kwargs)


def test_summarize_rejects_a_run_with_no_valid_trial():
    with pytest.raises(ValueError, match="no task has a valid trial"):
        summarize(records({"a": [None, None]}))
    with pytest.raises(ValueError, match="no task has a valid trial"):
        summarize([])


# --------------------------------------------------------------------------- sign-flip permutation test


@pytest.mark.parametrize(
    "diffs, expected",
    [
        # +-1 +-1 +-1: only +++ and --- reach |sum| >= 3: 2 of 2^3 patterns.
        ([1, 1, 1], 2 / 8),
        # Zero differences cannot flip: same as [1, 1, 1].
        ([1, 0, 1, 0, 1], 2 / 8),
        # Observed |1 + 1 - 1| = 1; every pattern sums to +-1 or +-3: all 8.
        ([1, 1, -1], 1.0),
        # Observed 1 + 0.5 - 0.25 = 1.25. Sums of +-1 +-0.5 +-0.25: +-1.75, +-1.25, +-0.75, +-0.25;
        # |sum| >= 1.25 for 4 of 8 (ties count).
        ([1, 0.5, -0.25], 4 / 8),
        ([0.25] * 4, 2 / 16),  # all four the same sign: 2 of 2^4
        ([], 1.0),
        ([0, 0], 1.0),
    ],
)
def test_sign_flip_exact_hand_values(diffs, expected):
    p, exact = sign_flip_p_value(diffs)
    assert exact
    assert p == pytest.approx(expected, abs=1e-12)


def _binomial_two_sided(m: int, plus: int) -> float:
    # m differences of +-1 with `plus` positive: |sum| = |2*plus - m|; under the null the number of + signs X
    # is Binomial(m, 1/2), and p = P(|2X - m| >= |2*plus - m|).
    obs = abs(2 * plus - m)
    return sum(math.comb(m, x) for x in range(m + 1) if abs(2 * x - m) >= obs) / 2**m


def test_sign_flip_exact_at_the_limit_matches_the_binomial():
    # 20 non-zero differences (the exact limit): 14 of +1, 6 of -1.
    p, exact = sign_flip_p_value([1] * 14 + [-1] * 6)
    assert exact
    assert p == pytest.approx(_binomial_two_sided(20, 14), abs=1e-12)  # = 0.1153...


def test_sign_flip_monte_carlo_beyond_the_limit():
    # 24 differences of +-1 (16 up, 8 down): Monte Carlo, close to the exact binomial value 0.1516.
    diffs = [1] * 16 + [-1] * 8
    p, exact = sign_flip_p_value(diffs, n_perm=20000, seed=5)
    assert not exact
    assert p == pytest.approx(_binomial_two_sided(24, 16), abs=0.01)
    assert sign_flip_p_value(diffs, n_perm=20000, seed=5) == (p, False)  # deterministic
    # All 25 the same sign: no random pattern beats it, so p = (1 + 0)/(1 + n_perm), never 0.
    assert sign_flip_p_value([1] * 25, n_perm=999) == (1 / 1000, False)


def test_sign_flip_rejects_bad_n_perm():
    with pytest.raises(ValueError, match="n_perm must be at least 1"):
        sign_flip_p_value([1], n_perm=0)


# --------------------------------------------------------------------------- compare


def run(solved: set[int], n_tasks: int = 40, trials: int = 4) -> list[dict]:
    """A run where the tasks in `solved` succeed on every trial and the rest fail on every trial."""
    return records({f"t{i:02d}": [int(i in solved)] * trials for i in range(n_tasks)})


def test_compare_identical_runs_is_within_the_noise():
    a = run(set(range(15)))
    c = compare(a, a)
    assert isinstance(c, Comparison)
    assert c.mean_diff == 0.0 and c.ci == (0.0, 0.0)
    assert c.p_value == 1.0 and c.p_exact and c.nonzero == 0
    assert not c.significant
    assert (c.tasks, c.dropped_a, c.dropped_b) == (40, 0, 0)
    assert "score the same" in c.verdict
    assert "within the noise" in c.verdict


def test_compare_twelve_more_tasks_of_forty_is_larger_than_the_noise():
    a = run(set(range(10)))
    b = run(set(range(22)))  # B also solves t10..t21: 12 differences of +1, 28 of 0
    c = compare(a, b)
    # mean difference = 12/40 = 0.3 = 30 points; exact p = 2 / 2^12 (all 12 non-zero signs alike).
    assert c.mean_diff == pytest.approx(0.3)
    assert (c.score_a, c.score_b) == pytest.approx((10 / 40, 22 / 40))
    assert c.p_value == pytest.approx(2 / 4096) and c.p_exact and c.nonzero == 12
    assert c.p_value < 0.01
    assert 0 < c.ci[0] < 0.3 < c.ci[1] <= 12 / 40 * 2
    assert c.significant
    assert c.verdict.startswith("B is better than A on Pass@1 by 30.0 points (95% CI ")
    assert "paired permutation p < 0.001, 40 tasks" in c.verdict
    assert c.verdict.endswith("larger than the noise.")
    # The other way round: A is worse, by the same margin.
    r = compare(b, a)
    assert r.mean_diff == pytest.approx(-0.3) and r.p_value == c.p_value
    assert r.verdict.startswith("A is better than B on Pass@1 by 30.0 points")
    named = compare(a, b, name_a="baseline", name_b="SCA")
    assert named.verdict.startswith("SCA is better than baseline on Pass@1 by 30.0 points")


def test_compare_three_tasks_all_better_is_exact_and_within_the_noise():
    # Differences +1, +1, +1: exact two-sided p = 2/8 = 0.25; the bootstrap interval is (1, 1), but
    # with three tasks the test cannot rule out chance.
    c = compare(run(set(), 3), run({0, 1, 2}, 3))
    assert c.p_value == 0.25 and c.p_exact
    assert c.mean_diff == 1.0 and c.ci == (1.0, 1.0)
    assert not c.significant
    assert "B is better than A on Pass@1 by 100.0 points" in c.verdict
    assert "within the noise (p = 0.25); more tasks or trials are needed to tell them apart." in c.verdict


def test_compare_is_paired():
    # Twelve tasks of very different difficulty; B solves exactly one more trial of 4 than A on each.
    # Paired differences are all +1/4: p = 2/2^12, and every bootstrap resample has mean 1/4. An unpaired
    # test would drown the 25-point gain in the spread between tasks (A's scores run from 0 to 3/4).
    a, b = {}, {}
    for i in range(12):
        base = i % 4  # A solves 0..3 of 4 trials
        a[f"t{i}"] = [1] * base + [0] * (4 - base)
        b[f"t{i}"] = [1] * (base + 1) + [0] * (3 - base)
    c = compare(records(a), records(b))
    assert c.mean_diff == pytest.approx(0.25)
    assert c.p_value == pytest.approx(2 / 4096)
    assert c.ci == pytest.approx((0.25, 0.25))
    assert c.significant and c.verdict.endswith("larger than the noise.")


def test_compare_pairs_by_task_id_and_counts_dropped_tasks():
    a = records({"t0": [1, 1], "t1": [0, 0], "t2": [1, 0], "only_a": [1, 1], "down_in_b": [1, 1]})
    b = records({"t2": [1, 1], "t1": [1, 0], "t0": [1, 1], "only_b": [0, 0], "down_in_b": [None, None]})
    c = compare(a, b, k=2)
    # Paired: t0, t1, t2. A alone scores only_a and down_in_b (B has no valid trial there); B alone only_b.
    assert (c.tasks, c.dropped_a, c.dropped_b, c.excluded_a, c.excluded_b) == (3, 2, 1, 0, 2)
    # pass1 differences B - A: t0 1 - 1 = 0; t1 1/2 - 0 = 1/2; t2 1 - 1/2 = 1/2 -> mean 1/3
    assert c.diffs == pytest.approx({"t0": 0.0, "t1": 0.5, "t2": 0.5})
    assert c.mean_diff == pytest.approx(1 / 3)
    # Two non-zero differences of +1/2: exact p = 2/4.
    assert c.p_value == pytest.approx(0.5)


def test_compare_other_metrics():
    # k = 2. A: "x" [1,0,0,0], B: "x" [1,1,0,0]; A: "y" [0,0,0,0], B: "y" [1,0,0,0].
    # pass@2: A x = 1 - C(3,2)/C(4,2) = 1/2, B x = 1 - C(2,2)/C(4,2) = 5/6; A y = 0, B y = 1/2.
    # pass^2: A x = 0, B x = C(2,2)/C(4,2) = 1/6; A y = 0, B y = 0.
    a = records({"x": [1, 0, 0, 0], "y": [0, 0, 0, 0]})
    b = records({"x": [1, 1, 0, 0], "y": [1, 0, 0, 0]})
    ck = compare(a, b, k=2, metric="pass_k")
    assert ck.diffs == pytest.approx({"x": 5 / 6 - 1 / 2, "y": 1 / 2})
    assert ck.mean_diff == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert "on Pass@2 by 41.7 points" in ck.verdict  # (1/3 + 1/2)/2 = 5/12 = 41.67 points
    ch = compare(a, b, k=2, metric="pass_hat_k")
    assert ch.diffs == pytest.approx({"x": 1 / 6, "y": 0.0})
    assert "on pass^2 by 8.3 points" in ch.verdict  # (1/6)/2 = 1/12 = 8.33 points
    assert ch.p_value == 1.0  # one non-zero difference: both of its 2 signs reach |1/6|


def test_compare_monte_carlo_when_many_tasks_differ_and_is_deterministic():
    # 25 tasks, B solves all, A none: 25 non-zero differences > 20, so Monte Carlo:
    # no sign pattern but the observed one (and its mirror) reaches 25, so p = 1/(1 + n_perm).
    a, b = run(set(), 25), run(set(range(25)), 25)
    c = compare(a, b, n_perm=999, seed=7)
    assert not c.p_exact and c.p_value == pytest.approx(1 / 1000)
    assert compare(a, b, n_perm=999, seed=7) == c
    # A mixed case: 15 up, 10 down of 30 tasks. Same seed, same answer; the exact value is P(|2X-25| >= 5).
    mixed_b = run(set(range(15)) | set(range(25, 30)), 30)
    mixed_a = run(set(range(15, 30)), 30)
    c1 = compare(mixed_a, mixed_b, n_perm=5000, seed=1)
    assert c1 == compare(mixed_a, mixed_b, n_perm=5000, seed=1)
    assert c1.p_value == pytest.approx(_binomial_two_sided(25, 15), abs=0.02)  # about 0.42
    assert "within the noise" in c1.verdict


def test_comparison_to_dict_is_plain_json():
    c = compare(run(set(range(5)), 10), run(set(range(8)), 10), n_boot=100)
    d = c.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["ci"] == list(c.ci) and d["verdict"] == c.verdict


def test_verdict_borderline_when_test_and_interval_disagree():
    # p below 0.05 but an interval touching zero: neither "larger" nor "within the noise".
    v = metrics._verdict("A", "B", "Pass@1", 0.05, (-0.01, 0.11), 0.03, 40, 0.95)
    assert v.startswith("B is better than A on Pass@1 by 5.0 points (95% CI -1.0 to 11.0; paired permutation p = 0.03")
    assert "borderline" in v and "larger than the noise" not in v and "within the noise" not in v


@pytest.mark.parametrize("ci", [(0.0, 0.11), (-0.11, 0.0)])
def test_verdict_is_borderline_when_the_interval_ends_at_zero(ci):
    # An interval whose end is 0 includes 0: the bootstrap does not rule out "no difference".
    v = metrics._verdict("A", "B", "Pass@1", 0.05 if ci[1] else -0.05, ci, 0.03, 40, 0.95)
    assert "borderline: the permutation test gives p = 0.03 but the bootstrap interval includes zero" in v
    assert "larger than the noise" not in v


def test_compare_is_not_significant_when_its_interval_ends_at_zero():
    # Six of twelve tasks better, none worse: exact p = 2/64. With one bootstrap draw (seed 5865 draws only
    # tasks without a difference) the interval is [0, 0]: it includes 0, so the flag agrees with the verdict.
    a = [{"task_id": f"t{i:02d}", "trial": 0, "reward": 0} for i in range(12)]
    b = [{"task_id": f"t{i:02d}", "trial": 0, "reward": int(i < 6)} for i in range(12)]
    c = compare(a, b, k=1, n_boot=1, seed=5865)
    assert (c.ci, c.p_value, c.p_exact) == ((0.0, 0.0), 2 / 64, True)
    assert c.significant is False and "borderline" in c.verdict


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"metric": "pass2"}, "metric must be one of pass1, pass_k, pass_hat_k"),
        ({"k": 0}, "k must be at least 1"),
        ({"n_boot": 0}, "n_boot must be at least 1"),
        ({"confidence": 1.5}, "confidence must be a number strictly between 0 and 1"),
        ({"n_perm": 0}, "n_perm must be at least 1"),
    ],
)
def test_compare_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compare(HAND, HAND, **kwargs)


def test_compare_rejects_runs_without_common_tasks():
    with pytest.raises(ValueError, match="share no scored task"):
        compare(records({"a": [1]}), records({"b": [1]}))


def test_metrics_module_does_not_import_numpy():
    code = "import sys, sca.metrics; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_summary_fields():
    s = summarize(HAND, 4, n_boot=10, seed=3, confidence=0.9)
    assert isinstance(s, Summary)
    d = s.to_dict()
    assert set(d) == {"tasks", "trials", "excluded", "empty_tasks", "short_tasks", "k", "pass1", "pass_k",
                      "pass_hat_k", "pass1_ci", "pass_k_ci", "pass_hat_k_ci", "confidence", "n_boot", "seed"}
    assert (d["n_boot"], d["seed"], d["confidence"], d["k"]) == (10, 3, 0.9, 4)
    for key in ("pass1", "pass_k", "pass_hat_k"):
        lo, hi = d[f"{key}_ci"]
        assert 0 <= lo <= d[key] <= hi <= 1


def test_compare_pass_k_uses_the_same_k_on_both_sides():
    # "x" has 4 trials in A, 2 in B (two infrastructure failures): Pass@4 of A (1 - 0 = 1 with one
    # success among 4) against Pass@2 of B would be unfair; both are compared at k' = 2.
    # A x [1,0,0,0]: pass@2 = 1 - C(3,2)/C(4,2) = 1/2; B x [1,0]: pass@2 = 1 - C(1,2)/C(2,2) = 1.
    # pass^2: A x = 0 (c < 2), B x = 0. "y" 4 trials in both: A [0,0,0,0], B [1,1,1,1] at k = 4.
    a = records({"x": [1, 0, 0, 0], "y": [0, 0, 0, 0]})
    b = records({"x": [1, 0, None, None], "y": [1, 1, 1, 1]})
    ck = compare(a, b, k=4, metric="pass_k")
    assert ck.diffs == pytest.approx({"x": 1 - 1 / 2, "y": 1.0})
    assert ck.short_tasks == 1 and ck.verdict.endswith(
        "1 of the 2 tasks had fewer than 4 valid trials in a run: each was compared at its fewer trials in both runs.")
    ch = compare(a, b, k=4, metric="pass_hat_k")
    assert ch.diffs == pytest.approx({"x": 0.0, "y": 1.0}) and ch.short_tasks == 1
    assert compare(a, b, k=4).short_tasks == 0  # Pass@1 needs no k'



def test_a_p_value_of_exactly_one_minus_the_confidence_is_within_the_noise():
    """1 - 0.95 is 0.050000000000000044 in floating point: a permutation p of 500/10,000 once counted
    as larger than the noise."""
    from sca.metrics import _verdict

    text = _verdict("a", "b", "Pass@1", 0.1, (0.02, 0.2), 500 / 10_000, 40, 0.95)
    assert "within the noise" in text, text
    assert "larger than the noise" in _verdict("a", "b", "Pass@1", 0.1, (0.02, 0.2), 0.0499, 40, 0.95)
