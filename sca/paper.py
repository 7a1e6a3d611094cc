"""The paper's figures the toolkit prints beside its own ("Self-Challenging Language Model Agents",
NeurIPS 2025; see docs/benchmarks.md, "The paper's numbers"). Facts only; where they come from is said once here."""

from __future__ import annotations

#: Table 1, zero-shot rows: Pass@1 / Pass@4 in percent, by base model and environment
TABLE1_ZERO_SHOT: dict[str, dict[str, tuple[float, float]]] = {
    "Llama-3.1-8B-Instruct": {"calculation": (20.3, 43.8), "web_browsing": (16.2, 42.1), "retail": (8.9, 15.7),
                              "airline": (2.5, 10.0)},
    "Llama-3.1-70B-Instruct": {"calculation": (57.3, 79.2), "web_browsing": (64.0, 79.4), "retail": (34.6, 56.5),
                               "airline": (9.2, 20.0)},
}

#: the CaT filter with Llama-3.1-8B on retail: share of proposals that pass each stage, percent
#: (proposed, code runs, solution passes, failure cases fail)
RETAIL_FUNNEL_8B = (100.0, 47.7, 9.5, 5.2)

#: the funnel the paper measured: CaT tasks proposed on retail
FUNNEL_ENV = "retail"
FUNNEL_FORMAT = "cat"
#: the fewest proposals whose shares are a rate to set beside the paper's: below it one task moves a
#: share by two points or more, and a handful of hand-written tasks at 100% says nothing of a challenger
FUNNEL_MIN_PROPOSALS = 50


def funnel_not_comparable(envs: list[str], fmt: str, proposed: int) -> str | None:
    """None where a run's validation funnel measured what the paper's did (:data:`RETAIL_FUNNEL_8B`),
    else why not. The rule, the only one for every funnel a report draws or tabulates: tasks of one
    environment, retail; of the CaT format; and at least :data:`FUNNEL_MIN_PROPOSALS` of them proposed.
    The challenger's model is not part of it: the paper's line is labelled with its own."""
    if list(envs) != [FUNNEL_ENV]:
        return f"env {', '.join(envs) or 'unknown'}: the paper's funnel is of {FUNNEL_ENV} tasks"
    if fmt != FUNNEL_FORMAT:
        return f"format {fmt}: the paper's funnel is of {FUNNEL_FORMAT} tasks"
    if proposed < FUNNEL_MIN_PROPOSALS:
        return f"{proposed} proposed: too few for a rate (the paper's line needs {FUNNEL_MIN_PROPOSALS} or more)"
    return None


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(" ", "-")


def base_model_row(model_name: str | None) -> tuple[str, dict[str, tuple[float, float]]] | None:
    """The zero-shot row of the base model a run's model name contains (a fine-tuned checkpoint of
    Llama-3.1-8B-Instruct included), if the paper has one."""
    if not model_name:
        return None
    key = _norm(model_name)
    for name, row in TABLE1_ZERO_SHOT.items():
        if _norm(name) in key:
            return name, row
    return None


def zero_shot_row(model_name: str | None) -> tuple[str, dict[str, tuple[float, float]]] | None:
    """The zero-shot row of exactly this model (the last part of a path, a ``meta-`` prefix aside),
    for a run of the base model itself."""
    if not model_name:
        return None
    last = _norm(model_name.rstrip("/").rsplit("/", 1)[-1]).removeprefix("meta-")
    for name, row in TABLE1_ZERO_SHOT.items():
        if _norm(name) == last:
            return name, row
    return None


#: the benchmarks behind Table 1: tau2's test split (retail, airline) and the official M3ToolEval tasks
TAU_ENVS = ("retail", "airline")
M3_ENVS = ("calculation", "web_browsing")


def not_comparable(env: str, *, split: str | None, official_m3: bool, drop_noop_solvable: bool | None,
                   limit: int | None, trials: int | None) -> str | None:
    """None where an evaluation of `env` measured what the paper's Table 1 did, else why not. The
    paper: every task of tau-bench's test split (airline without the tasks solved by doing nothing)
    and of the official M3ToolEval set, 4 trials per task."""
    if env in TAU_ENVS:
        if split != "test":
            return f"split {split!r}: the paper evaluated the test split"
        if env == "airline" and not drop_noop_solvable:
            return "the paper left out the airline tasks solved by doing nothing (--drop-noop-solvable)"
    elif env in M3_ENVS:
        if not official_m3:
            return "our held-out tasks: the paper used the official M3ToolEval tasks (--m3tooleval-dir)"
    else:
        return "not a benchmark of the paper"
    if limit:
        return f"--limit {limit}: a subset of the tasks"
    if trials is not None and trials < 4:
        return f"{trials} trials: the paper's Pass@4 needs 4"
    return None


# =========================================================================== the task formats

#: the rebuttal's filtering ablation (retail, Llama-3.1-8B-Instruct, 800 tasks and 12k trajectories
#: per method, self-improvement): Pass@1 over 4 trials / Pass@4 in percent, by the format of the
#: tasks the model was trained on (sca.task_formats; "zero-shot": not trained). PAE is instruction-only, "SCA no
#: filtering" eval-only, SCA cat. Its zero-shot row is Table 1's
REBUTTAL_ENV = "retail"
REBUTTAL_MODEL = "Llama-3.1-8B-Instruct"
REBUTTAL_ALGO = "rft"  # self-improvement: REINFORCE with a 0/1 reward, i.e. rejection fine-tuning
REBUTTAL_RETAIL_8B: dict[str, tuple[str, tuple[float, float]]] = {
    "zero-shot": ("zero-shot", (8.9, 15.7)),
    "instruction-only": ("PAE", (9.8, 18.3)),
    "eval-only": ("SCA no filtering", (8.9, 20.8)),
    "cat": ("SCA", (13.0, 25.2)),
}

#: the validation funnel per format, where the paper gives one (% of proposed; proposed, code runs,
#: solution passes, valid): only CaT's. "No filtering" and PAE keep what they propose, and the paper
#: gives no yield for them
FUNNEL_BY_FORMAT_8B = {"cat": RETAIL_FUNNEL_8B}

#: Figure 4, the human audit of retail rewards with Llama-3.1-8B, read off a bar chart (hence
#: "about"): false-positive and false-negative rates in percent, None where the paper gives none.
#: "verification only" is the evaluation function and the solution without failure cases. The
#: paper's false negative counts a reward 0 on a task that is ambiguous or whose verifier is wrong
FIGURE4_RETAIL_8B: dict[str, tuple[float | None, float | None]] = {
    "cat": (0.0, 30.0),
    "verification only": (None, 66.0),
}
