"""The paper's figures the toolkit prints beside its own ("Self-Challenging Language Model Agents",
NeurIPS 2025; see README, "The paper's numbers"). Facts only; where they come from is said once here."""

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
