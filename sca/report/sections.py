"""The numbers of each section of a report, computed from its inputs (:mod:`sca.report.inputs`).

* **Validation funnel** (propose and validate outputs), as in the paper: proposed, code runs,
  solution passes, failure cases fail (valid); the paper's Llama-3.1-8B retail figures
  (47.7% / 9.5% / 5.2%) beside a run only where it measured the same
  (:func:`sca.paper.funnel_not_comparable`: retail, CaT, enough proposals to be a rate), and the
  rejection reasons.
* **Rewards per task** (rollout outputs): the per-task success rates, tasks solved by none /
  some / all trials, mean reward, Pass@1 / Pass@k / pass^k with bootstrap intervals,
  terminations and infrastructure failures (reward null: excluded from every figure, counted).
* **Pass@k per environment** (eval outputs, one run per file, named by its meta's model or
  its file name): :func:`sca.metrics.summarize` per (environment, split), the paper's Table 1
  beside runs of Llama-3.1-8B-Instruct itself, on the paper's benchmark.
* **Training** (``train_log.jsonl``): loss (and eval loss), learning rate, grad norm and
  tokens/s against the step.
* **Comparison** (``--compare A B``): B against A paired by task, per environment, with
  :func:`sca.metrics.compare` (Pass@1 and Pass@k) and its verdict sentence.
* **Task formats** (eval runs of models trained on tasks of each format, as the rebuttal's
  filtering ablation and Table 1): Pass@1 and Pass@k with intervals per format, the rebuttal's
  figures (:data:`sca.paper.REBUTTAL_RETAIL_8B`) beside a row only where the run measured what
  the paper did (:func:`format_rows`); the funnel per format, proposed -> valid.
* **Verifier audit**: the lax rate of each pool that ``sca audit`` tested, with a bootstrap
  interval; the hand-label rates of ``sca audit --labels`` as the paper's Figure 4.

The CaT funnel counts CaT tasks only: the checks of another format are not CaT's stages, so an
eval-only or instruction-only task is counted in the funnel per format alone.

The funnel. Every record of a propose or validate run is one *proposed* task (for propose
output, one challenger episode). Each is placed at the furthest stage its ``validation``
shows it reached. sca validate runs the checks of :data:`sca.cat.CHECKS` in their order and
stops at the first failure, so a task rejected by a check passed every check before it; the
check is told by :func:`sca.report.inputs.failed_check`. "Code runs" means every code string
compiled and the solution and the ``evaluate`` after it ran without error (it passed
``solution_run``, or failed it with ``solution_fails``); "solution passes" that ``evaluate``
also returned True for the solution, and for its answer as an executor would type it (it
passed ``solution_run`` and ``answer_round_trip``, CAT.md check 5); "failure cases fail" that
the task is valid. A task rejected before the solution ran has not shown that its code runs,
so it stays at "proposed"; so does a propose episode that never gave an ANSWER (no
``validation``; ``meta.reason`` says why). A propose episode is placed by the ``validation`` of
its last answer; its earlier revisions are not counted. A task that sca propose dropped as a
duplicate (``meta.status`` "duplicate") passed every check: it counts as valid in the funnel,
and the duplicates are listed among the reasons. :data:`FUNNEL_RULES` spells the mapping out
for the page.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sca import metrics
from sca.cat import CHECKS, REASONS
from sca.paper import (
    FUNNEL_BY_FORMAT_8B,
    M3_ENVS,
    REBUTTAL_ALGO,
    REBUTTAL_ENV,
    REBUTTAL_MODEL,
    REBUTTAL_RETAIL_8B,
    RETAIL_FUNNEL_8B,
    TABLE1_ZERO_SHOT,
    TAU_ENVS,
    funnel_not_comparable,
    not_comparable,
    zero_shot_row,
)
from sca.report.inputs import LABEL_RATES, Source, failed_check
from sca.task_formats import TASK_FORMATS

#: the stages of the validation funnel; a record's stage is an index into this
FUNNEL_STAGES = ("proposed", "code runs", "solution passes", "failure cases fail (valid)")

#: the paper's validation funnel (Llama-3.1-8B as challenger, retail): % of proposed tasks
PAPER_FUNNEL = ("paper: Llama-3.1-8B, retail", RETAIL_FUNNEL_8B)

#: the paper's Table 1, Llama-3.1-8B-Instruct zero-shot: (Pass@1, Pass@4) in %
PAPER_MODEL = "Llama-3.1-8B-Instruct"
PAPER_TABLE1 = TABLE1_ZERO_SHOT[PAPER_MODEL]

_ENV_ORDER = ("calculation", "web_browsing", "retail", "airline")

#: what a propose episode without an answer ended on (meta.reason)
_NO_ANSWER = {
    "max_steps": "the challenger used every reply without giving an ANSWER",
    "context_limit": "the conversation outgrew the model's context before an ANSWER",
    "inference_error": "the model backend failed before an ANSWER",
    "sandbox_error": "the sandbox failed before an ANSWER",
}


# =========================================================================== the funnel


def _stage_of_rejection(check: str, reason: str | None) -> int:
    """The furthest funnel stage of a task that `check` (one of sca.cat.CHECKS) rejected for `reason`."""
    passed = CHECKS[:CHECKS.index(check)]  # the checks run in order: a rejected task passed those before
    if "solution_run" in passed and "answer_round_trip" in passed:
        return 2  # the solution passes, also as an executor would type its answer
    if "solution_run" in passed or check == "solution_run" and reason == "solution_fails":
        return 1  # the solution and the evaluate() after it ran without error
    return 0


def funnel_stage(validation: dict[str, Any] | None) -> int:
    """The furthest funnel stage (an index into :data:`FUNNEL_STAGES`) a validation object shows.

    None (a propose episode that never answered) is 0, "proposed"; a valid task is 3. For a
    rejected one the failed check decides (see the module docstring and :data:`FUNNEL_RULES`).
    Raises :class:`~sca.records.RecordError` when the failed check is unknown or cannot be told.
    """
    if validation is None:
        return 0
    if validation.get("valid") is True:
        return 3
    return _stage_of_rejection(failed_check(validation), validation.get("reason"))


def _record_stage(r: dict[str, Any]) -> int:
    """The funnel stage of a slim propose or validate record (see sca.report.inputs)."""
    if not r["has_validation"]:
        return 0
    return 3 if r["valid"] else _stage_of_rejection(r["check"], r["reason"])


#: the page's words on the reasons each check rejects for, with one reason that leads to each
#: row's stage (sca.cat.REASONS has every reason's meaning); solution_run leaves its tasks at two.
#: A check added to sca.cat.CHECKS needs its words here: FUNNEL_RULES raises KeyError until it has them
_RULE_REASONS: dict[str, tuple[tuple[str, str], ...]] = {
    "compile": (("compile", "compile"),),
    "failure_case_count": (("failure_case_count (the solution never ran)", "failure_case_count"),),
    "noop_run": (("any: noop_passes, evaluate_*, timeout, sandbox_error (the solution never ran)", "noop_passes"),),
    "solution_run": (("solution_error, timeout, sandbox_error, evaluate_writes, evaluate_not_bool, evaluate_error",
                      "solution_error"),
                     ("solution_fails", "solution_fails")),
    "answer_round_trip": (("any: answer_not_typeable, or an error of the evaluate on the typed answer",
                           "answer_not_typeable"),),
    "failure_case_runs": (("any: failure_case_passes, failure_case_error, evaluate_*, timeout, sandbox_error",
                           "failure_case_passes"),),
}

#: (failed check, reasons, furthest stage reached): the mapping the README page shows, in the order
#: of sca.cat.CHECKS, each stage as funnel_stage gives it
FUNNEL_RULES: tuple[tuple[str, str, int], ...] = (
    (("(no validation: a propose episode that never gave an ANSWER)",
      "meta.reason: max_steps, context_limit, *_error", funnel_stage(None)),)
    + tuple((check, words, _stage_of_rejection(check, reason))
            for check in CHECKS for words, reason in _RULE_REASONS[check])
    + (("none (validation.valid is true; sca propose duplicates too)", "", funnel_stage({"valid": True})),)
)


@dataclass
class ReasonCount:
    reason: str
    count: int = 0
    checks: Counter = field(default_factory=Counter)
    stage: int = 0
    meaning: str = ""


@dataclass
class Funnel:
    """The validation funnel of one propose or validate run."""

    label: str
    kind: str
    files: list[str]
    model: str | None
    envs: list[str]
    counts: tuple[int, int, int, int]  # proposed, code runs, solution passes, valid (cumulative)
    no_answer: int = 0
    duplicates: int = 0
    reasons: list[ReasonCount] = field(default_factory=list)
    paper_not_comparable: str | None = None  # why the paper's funnel is not beside it (sca.paper's rule)

    def percent(self, i: int) -> float:
        return 100.0 * self.counts[i] / self.counts[0] if self.counts[0] else 0.0


def _reason_meaning(reason: str) -> str:
    if reason in REASONS:
        return REASONS[reason]
    if reason == "duplicate":
        return ("valid, but its instruction repeats an earlier task or a benchmark test task: dropped by "
                "sca propose (counted as valid in the funnel)")
    if reason.startswith("no answer"):
        why = reason[len("no answer ("):-1] if reason.endswith(")") else ""
        return _NO_ANSWER.get(why, "the episode ended without an ANSWER") + " (proposed, no code)"
    return ""


def build_funnel(sources: list[Source]) -> Funnel:
    """The funnel of one run's sources (its accepted and rejected outputs): its CaT tasks."""
    records = [r for s in sources for r in s.records if r.get("format", "cat") == "cat"]
    stages = [0, 0, 0, 0]
    reasons: dict[str, ReasonCount] = {}
    no_answer = duplicates = 0
    for r in records:
        stage = _record_stage(r)
        for i in range(stage + 1):
            stages[i] += 1
        if r["valid"]:
            if r["status"] == "duplicate":
                duplicates += 1
                rc = reasons.setdefault("duplicate", ReasonCount("duplicate", stage=3))
                rc.count += 1
            continue
        if not r["has_validation"]:
            no_answer += 1
            key = f"no answer ({r['episode_reason'] or 'unknown'})"
            rc = reasons.setdefault(key, ReasonCount(key, stage=0))
            rc.count += 1
            rc.checks["-"] += 1
            continue
        rc = reasons.setdefault(r["reason"], ReasonCount(r["reason"]))
        rc.count += 1
        rc.checks[r["check"]] += 1
        rc.stage = max(rc.stage, stage)
    for rc in reasons.values():
        rc.meaning = _reason_meaning(rc.reason)
    primary = sources[0]
    models = sorted({r["model"] for r in records if r.get("model")})
    model = (primary.model if primary.kind == "propose" else None) or (", ".join(models) if models else None)
    envs = sorted({r["env"] for r in records})
    return Funnel(
        paper_not_comparable=funnel_not_comparable(envs, "cat", stages[0]),
        label=f"{primary.kind} {primary.label}", kind=primary.kind or "", files=[s.label for s in sources],
        model=model, envs=envs, counts=tuple(stages),  # type: ignore[arg-type]
        no_answer=no_answer, duplicates=duplicates,
        reasons=sorted(reasons.values(), key=lambda rc: (-rc.count, rc.reason)),
    )


def _runs(sources: list[Source], kinds: tuple[str, ...]) -> list[list[Source]]:
    """The sources of each run of these kinds, its primary output (the one with the meta) first."""
    groups: dict[str, list[Source]] = {}
    for s in sources:
        if s.kind in kinds:
            groups.setdefault(s.group, []).append(s)
    for members in groups.values():
        members.sort(key=lambda s: (s.detected_by != "meta", s.label))
    return list(groups.values())


def funnels(sources: list[Source]) -> list[Funnel]:
    """One CaT funnel per propose or validate run that has CaT tasks."""
    return [build_funnel(members) for members in _runs(sources, ("propose", "validate"))
            if any(r.get("format", "cat") == "cat" for s in members for r in s.records)]


@dataclass
class FormatFunnel:
    """Proposed -> valid of the tasks of one format in one propose or validate run."""

    label: str
    format: str
    model: str | None
    envs: list[str]
    proposed: int
    valid: int
    paper_not_comparable: str | None = None  # why the paper's yield is not beside it (sca.paper's rule)

    @property
    def percent(self) -> float:
        return 100.0 * self.valid / self.proposed if self.proposed else 0.0


def _format_key(fmt: str) -> int:
    order = ("zero-shot",) + TASK_FORMATS[::-1]  # the rebuttal's order: zero-shot, PAE, no filtering, SCA
    return order.index(fmt) if fmt in order else len(order)


def format_funnels(sources: list[Source]) -> list[FormatFunnel]:
    """Per run and task format: tasks proposed (records) and valid (``validation.valid``; for sca
    propose, its duplicates included, as in the CaT funnel)."""
    out = []
    for members in _runs(sources, ("propose", "validate")):
        primary = members[0]
        by_format: dict[str, list[dict[str, Any]]] = {}
        for r in (r for s in members for r in s.records):
            fmt = r.get("format", "cat")
            by_format.setdefault(f"{fmt} (verification only)" if r.get("verification_only") else fmt, []).append(r)
        for fmt, records in sorted(by_format.items(), key=lambda kv: _format_key(kv[0])):
            models = sorted({r["model"] for r in records if r.get("model")})
            envs = sorted({r["env"] for r in records})
            out.append(FormatFunnel(
                label=f"{primary.kind} {primary.label}", format=fmt,
                model=(primary.model if primary.kind == "propose" else None) or (", ".join(models) or None),
                envs=envs, proposed=len(records), valid=sum(1 for r in records if r["valid"]),
                paper_not_comparable=funnel_not_comparable(envs, fmt, len(records))))
    return out


#: the paper's share of proposed tasks found valid, per format (only CaT's is given): % of proposed
PAPER_FORMAT_FUNNEL = {fmt: funnel[-1] for fmt, funnel in FUNNEL_BY_FORMAT_8B.items()}


# =========================================================================== rewards per task


@dataclass
class RewardStats:
    """The per-task rewards of one rollout (or eval) file."""

    name: str
    file: str
    envs: list[str]
    k: int
    tasks: int  # tasks with at least one valid trial
    trials: int  # valid trials (reward 0 or 1)
    rewarded: int
    excluded: int  # infrastructure failures (reward null)
    infra: dict[str, int]
    empty_tasks: int  # tasks whose every trial was an infrastructure failure
    none: int
    some: int
    all: int
    rates: list[float]  # c/n per task
    ns: list[int]
    terminations: dict[str, int]
    summary: metrics.Summary | None

    @property
    def mean_reward(self) -> float:
        return self.rewarded / self.trials if self.trials else 0.0


def k_of(src: Source, override: int | None) -> int:
    """The k of a run's Pass@k: `override`, else its meta's k, else its most trials per task."""
    if override:
        return override
    # sca eval's pass_k (its trials unless told), sca rollout's trials; "k", either one before they were renamed
    for key in ("pass_k", "k", "trials"):
        k = src.setting(key)
        if isinstance(k, int) and not isinstance(k, bool) and k >= 1:
            return k
    per_task = Counter(r["task_id"] for r in src.records)
    return max(per_task.values(), default=1)


def build_rewards(src: Source, k: int, *, n_boot: int, seed: int) -> RewardStats:
    scored = metrics.task_scores(src.records, k)
    summary = metrics.summarize(src.records, k, n_boot=n_boot, seed=seed) if scored.scores else None
    s = scored.scores
    infra = Counter(r["infra_kind"] or "unknown" for r in src.records if r["reward"] is None)
    return RewardStats(
        name=src.name, file=src.label, envs=sorted({r["env"] for r in src.records}), k=k,
        tasks=len(s), trials=sum(t.n for t in s), rewarded=sum(t.c for t in s), excluded=scored.excluded,
        infra=dict(sorted(infra.items())), empty_tasks=len(scored.empty_tasks),
        none=sum(1 for t in s if t.c == 0), some=sum(1 for t in s if 0 < t.c < t.n),
        all=sum(1 for t in s if t.c == t.n), rates=[t.pass1 for t in s], ns=[t.n for t in s],
        terminations=dict(Counter(r["termination"] for r in src.records).most_common()), summary=summary,
    )


# =========================================================================== Pass@k per environment


@dataclass
class PassRow:
    """Pass@1 / Pass@k / pass^k of one eval run on one environment (and split)."""

    run: str
    file: str
    model: str | None
    env: str
    split: str | None
    k: int
    summary: metrics.Summary
    paper: tuple[float, float] | None  # the paper's Table 1 (Pass@1, Pass@4) in %, for Llama-3.1-8B-Instruct
    not_comparable: str | None = None  # a run of that model on another benchmark than the paper's: why


def is_paper_model(model: str | None) -> bool:
    """Whether a run is Llama-3.1-8B-Instruct itself (zero-shot): its name, or the last part of its
    path, is Llama-3.1-8B-Instruct (case, separators and a Meta- prefix aside)."""
    row = zero_shot_row(model)
    return row is not None and row[0] == PAPER_MODEL


def _env_key(env: str) -> tuple[int, str]:
    return (_ENV_ORDER.index(env) if env in _ENV_ORDER else len(_ENV_ORDER), env)


def _by_env(records: list[dict[str, Any]]) -> dict[tuple[str, str | None], list[dict[str, Any]]]:
    out: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault((r["env"], r.get("split")), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: (_env_key(kv[0][0]), kv[0][1] or "")))


def build_pass_rows(src: Source, k: int, *, n_boot: int, seed: int) -> tuple[list[PassRow], list[str]]:
    rows, notes = [], []
    paper = is_paper_model(src.model)
    for (env, split), recs in _by_env(src.records).items():
        try:
            summary = metrics.summarize(recs, k, n_boot=n_boot, seed=seed)
        except ValueError as e:
            notes.append(f"{src.name}, {env}: {e}")
            continue
        why = _not_the_papers_benchmark(src, env, split, recs) if paper else None
        rows.append(PassRow(run=src.name, file=src.label, model=src.model, env=env, split=split, k=k,
                            summary=summary, paper=PAPER_TABLE1.get(env) if paper and why is None else None,
                            not_comparable=why))
        if why:
            notes.append(f"{src.name}, {env}: no paper figure beside it: {why}")
    return rows, notes


def _not_the_papers_benchmark(src: Source, env: str, split: str | None, recs: list[dict[str, Any]]) -> str | None:
    """Why an eval run's results on `env` are not the benchmark of the paper's Table 1 (None if they
    are): from its records (scorer, benchmark ids, trials per task) and its meta's settings."""
    if env in TAU_ENVS and any(r.get("scorer") != "tau2" for r in recs):
        return "not scored by tau2's evaluator"
    ids = [r.get("benchmark_task_id") for r in recs]
    official = all(isinstance(i, str) and i.startswith("m3/") for i in ids) and env in M3_ENVS
    per_task = Counter(r["task_id"] for r in recs)
    trials = src.setting("trials")
    limit = src.setting("limit")
    return not_comparable(env, split=split, official_m3=official,
                          drop_noop_solvable=bool(src.setting("drop_noop_solvable")),
                          limit=limit if isinstance(limit, int) else None,
                          trials=trials if isinstance(trials, int) else max(per_task.values()))


# =========================================================================== training, comparison


@dataclass
class TrainCurve:
    name: str
    file: str
    model: str | None
    lines: list[dict[str, Any]]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pts = [(ln["step"], ln[key]) for ln in self.lines if isinstance(ln.get(key), (int, float))]
        pts.sort(key=lambda p: p[0])
        return [p[0] for p in pts], [float(p[1]) for p in pts]


def train_curve(src: Source) -> TrainCurve:
    """The curves of one train log, named by its checkpoint directory."""
    return TrainCurve(name=src.path.parent.name or src.path.stem, file=src.label, model=src.model,
                      lines=src.records)


@dataclass
class CompareRow:
    env: str
    split: str | None
    metric: str
    comparison: metrics.Comparison | None
    note: str = ""


def compare(a: Source, b: Source, k: int | None, *, n_boot: int, seed: int) -> list[CompareRow]:
    """B against A, paired by task, per (environment, split): Pass@1, and Pass@k when k > 1 (k: the
    smaller of the two runs' k unless given)."""
    k = k or min(k_of(a, None), k_of(b, None))
    ea, eb = _by_env(a.records), _by_env(b.records)
    rows: list[CompareRow] = []
    for key in sorted(ea.keys() | eb.keys(), key=lambda kv: (_env_key(kv[0]), kv[1] or "")):
        env, split = key
        for metric in ("pass1", "pass_k") if k > 1 else ("pass1",):  # with k = 1, Pass@k is Pass@1
            if key not in ea or key not in eb:
                rows.append(CompareRow(env, split, metric, None, f"only in {a.name if key in ea else b.name}"))
                continue
            try:
                c = metrics.compare(ea[key], eb[key], k, metric, n_boot=n_boot, seed=seed, name_a=a.name,
                                    name_b=b.name)
            except ValueError as e:
                rows.append(CompareRow(env, split, metric, None, str(e)))
                continue
            rows.append(CompareRow(env, split, metric, c))
    return rows


# =========================================================================== task formats


@dataclass
class FormatRow:
    """Pass@1 / Pass@k of one eval run of a model trained on tasks of one format (or zero-shot)."""

    format: str  # a task format or "zero-shot"
    told_by: str
    run: str
    file: str
    base_model: str | None
    env: str
    split: str | None
    k: int
    summary: metrics.Summary
    paper: tuple[str, tuple[float, float]] | None  # the rebuttal's (method, (Pass@1, Pass@4)) in %
    not_comparable: str | None = None  # why the paper's row is not beside it


def _rebuttal_not_comparable(src: Source, fmt: str, env: str, split: str | None,
                             recs: list[dict[str, Any]]) -> str | None:
    """Why a run's results are not what the rebuttal measured (None if they are): retail, the
    benchmark as Table 1 (:func:`_not_the_papers_benchmark`), Llama-3.1-8B-Instruct itself for
    zero-shot, trained from it by rejection fine-tuning otherwise."""
    if env != REBUTTAL_ENV:
        return f"the rebuttal measured {REBUTTAL_ENV} only"
    training = src.training
    if fmt == "zero-shot":
        if not is_paper_model(src.model):
            return f"not {REBUTTAL_MODEL} itself"
    elif training is None or training.base_model is None:
        return "the checkpoint's base model is unknown (no train_summary.json where its model path points)"
    elif not is_paper_model(training.base_model):
        return f"trained from {training.base_model}, not {REBUTTAL_MODEL}"
    elif training.algo != REBUTTAL_ALGO:
        return f"trained with --algo {training.algo}: the rebuttal's self-improvement is {REBUTTAL_ALGO}"
    return _not_the_papers_benchmark(src, env, split, recs)


def format_rows(sources: list[Source], k: int | None, *, n_boot: int,
                seed: int) -> tuple[list[FormatRow], list[str]]:
    """The comparison across formats: every eval run whose training format is told (see
    :func:`sca.report.inputs.trained_on`), per environment and split, in the rebuttal's order.
    Empty unless some run was trained on tasks of a format (zero-shot runs alone compare nothing)."""
    evals = [s for s in sources if s.kind == "eval" and s.training is not None]
    if not any(s.training.format in TASK_FORMATS for s in evals):
        return [], []
    rows: list[FormatRow] = []
    notes: list[str] = []
    for src in evals:
        training = src.training
        if training.format is None:
            notes.append(f"{src.label}: left out of the comparison across formats: {training.told_by}")
            continue
        for (env, split), recs in _by_env(src.records).items():
            try:
                summary = metrics.summarize(recs, k_of(src, k), n_boot=n_boot, seed=seed)
            except ValueError as e:
                notes.append(f"{src.name}, {env}: {e}")
                continue
            why = _rebuttal_not_comparable(src, training.format, env, split, recs)
            rows.append(FormatRow(format=training.format, told_by=training.told_by, run=src.name, file=src.label,
                                  base_model=training.base_model or src.model, env=env, split=split,
                                  k=k_of(src, k), summary=summary,
                                  paper=REBUTTAL_RETAIL_8B.get(training.format) if why is None else None,
                                  not_comparable=why))
    rows.sort(key=lambda r: (_env_key(r.env), r.split or "", _format_key(r.format), r.run))
    return rows, notes


def format_consistency(sources: list[Source]) -> list[str]:
    """Notes where a directory named after a format holds tasks or trajectories of another format."""
    notes = []
    for s in sources:
        here = s.path.parent.name
        if here in TASK_FORMATS and s.kind in ("propose", "validate", "rollout", "audit"):
            other = sorted({r.get("format", "cat") for r in s.records} - {here})
            if other:
                notes.append(f"{s.label}: in {here}/ but holds tasks of format {', '.join(other)}")
    return notes


# =========================================================================== the verifier audit


@dataclass
class AuditPool:
    """The mutation audit of one pool of tasks (one sca audit output) in one format."""

    label: str
    format: str
    envs: list[str]
    tasks: int
    audited: int  # tasks with a verdict (lax true or false)
    lax: int
    skipped: int  # tasks without a solution: no mutant to run (lax null)
    mutants: int
    accepted: int
    rate_ci: tuple[float, float] | None  # bootstrap interval of lax / audited

    @property
    def rate(self) -> float | None:
        return self.lax / self.audited if self.audited else None


def proportion_ci(values: list[int], *, n_boot: int, seed: int) -> tuple[float, float]:
    """A bootstrap interval of the share of ones among 0/1 values (one per task): the Pass@1 interval
    of :func:`sca.metrics.summarize` with each value as a task's single trial."""
    records = [{"task_id": str(i), "trial": 0, "reward": v} for i, v in enumerate(values)]
    return metrics.summarize(records, 1, n_boot=n_boot, seed=seed).pass1_ci


def audit_pools(sources: list[Source], *, n_boot: int, seed: int) -> list[AuditPool]:
    out = []
    for s in sources:
        if s.kind != "audit":
            continue
        by_format: dict[str, list[dict[str, Any]]] = {}
        for r in s.records:
            by_format.setdefault(r["format"], []).append(r)
        for fmt, records in sorted(by_format.items(), key=lambda kv: _format_key(kv[0])):
            verdicts = [int(r["lax"]) for r in records if r["lax"] is not None]
            out.append(AuditPool(
                label=s.label, format=fmt, envs=sorted({r["env"] for r in records}), tasks=len(records),
                audited=len(verdicts), lax=sum(verdicts), skipped=len(records) - len(verdicts),
                mutants=sum(r["mutants"] for r in records), accepted=sum(r["accepted"] for r in records),
                rate_ci=proportion_ci(verdicts, n_boot=n_boot, seed=seed) if verdicts else None))
    return out


@dataclass
class LabelRow:
    """The hand-label rates of one task format (one entry of sca audit --labels' by_format)."""

    label: str
    format: str
    n: int
    tp: int
    fp: int
    tn: int
    fn: int
    rates: dict[str, list[float] | None]  # LABEL_RATES: [estimate, low, high] or None


def label_rows(sources: list[Source]) -> list[LabelRow]:
    return [LabelRow(label=s.label, format=r["format"], n=r["n"], tp=r["tp"], fp=r["fp"], tn=r["tn"], fn=r["fn"],
                     rates={key: r[key] for key in LABEL_RATES})
            for s in sources if s.kind == "labels"
            for r in sorted(s.records, key=lambda r: _format_key(r["format"]))]


# =========================================================================== every section


@dataclass
class Sections:
    """The numbers of every section of one report."""

    funnels: list[Funnel]
    rewards: list[tuple[Source, RewardStats]]  # per rollout file
    pass_rows: list[PassRow]
    pass_notes: list[str]  # eval results with no figure, or no paper figure beside them: why
    curves: list[TrainCurve]
    comparisons: list[CompareRow]
    compared: tuple[Source, Source] | None  # (A, B) of the comparison
    format_funnels: list[FormatFunnel] = field(default_factory=list)
    format_rows: list[FormatRow] = field(default_factory=list)
    format_notes: list[str] = field(default_factory=list)  # runs left out of the comparison, and why
    audit: list[AuditPool] = field(default_factory=list)
    labels: list[LabelRow] = field(default_factory=list)


def compute(sources: list[Source], *, k: int | None, pair: tuple[Source, Source] | None, n_boot: int,
            seed: int) -> Sections:
    """Every section of the sources that have one; `k` overrides each run's own, `pair` is compared."""
    rewards = [(s, build_rewards(s, k_of(s, k), n_boot=n_boot, seed=seed)) for s in sources if s.kind == "rollout"]
    pass_rows: list[PassRow] = []
    pass_notes: list[str] = []
    for s in sources:
        if s.kind == "eval":
            rows, notes = build_pass_rows(s, k_of(s, k), n_boot=n_boot, seed=seed)
            pass_rows += rows
            pass_notes += notes
    rows, format_notes = format_rows(sources, k, n_boot=n_boot, seed=seed)
    curves = [train_curve(s) for s in sources if s.kind == "train"]
    names = Counter(c.name for c in curves)
    for c in curves:  # checkpoints of the same name (runs/ablations/<format>/ckpt): by their directory
        if names[c.name] > 1:
            c.name = str(Path(c.file).parent)
    return Sections(
        funnels=funnels(sources), rewards=rewards, pass_rows=pass_rows, pass_notes=pass_notes,
        curves=curves,
        comparisons=compare(*pair, k, n_boot=n_boot, seed=seed) if pair else [], compared=pair,
        format_funnels=format_funnels(sources), format_rows=rows,
        format_notes=format_notes + format_consistency(sources),
        audit=audit_pools(sources, n_boot=n_boot, seed=seed), labels=label_rows(sources),
    )
