"""`sca propose`: the challenger explores an environment and writes Code-as-Task tasks.

Input, library, output: the challenger's episodes (:mod:`sca.agent.challenger`) run until ``n``
tasks are valid or ``max_episodes`` have run; every answer is checked at once with exactly the
checks of ``sca validate`` (:func:`sca.cat.validate_task`); an instruction already in the output,
or a test task's of the environment's benchmark (:mod:`sca.benchmarks`), counts as a duplicate.
Valid tasks are written to the output and failed episodes to ``rejected`` as they finish; a rerun
resumes, skipping the episodes an earlier run finished. The task format (``--task-format``) decides
what the challenger writes and what its answers are checked for; every record names it, and a rerun
onto files of another format is refused rather than mixing formats in one file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from sca.agent.challenger import AnswerCheck, normalise, run_challenger
from sca.agent.reply import STOP
from sca.cat import feedback, validate_task
from sca.records.io import InputError, scan_jsonl
from sca.records.progress import Progress, progress
from sca.records.stage_run import MODEL_SETTINGS, SANDBOX_LIMITS, StageRun, refuse_other_settings, under
from sca.task_formats import DEFAULT_FORMAT, task_format
from stages.config import ProposeConfig


@dataclass
class ProposeSummary:
    """What a propose run did, read off the run's counts (the one place they are kept)."""

    episodes: int = 0
    valid: int = 0
    failed: int = 0
    duplicates: int = 0
    resumed_valid: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    generate_s: float = 0.0
    sandbox_s: float = 0.0
    task_format: str = DEFAULT_FORMAT

    @classmethod
    def from_counts(cls, counts: dict[str, Any], task_format: str = DEFAULT_FORMAT) -> ProposeSummary:
        return cls(task_format=task_format,
            episodes=counts.get("episodes", 0), valid=counts.get("accepted", 0),
            failed=counts.get("failed", 0), duplicates=counts.get("duplicates", 0),
            resumed_valid=counts.get("resumed_valid", 0),
            reasons={k.split(":", 1)[1]: v for k, v in sorted(counts.items(), key=lambda kv: -kv[1])
                     if k.startswith("reason:")},
            prompt_tokens=counts.get("prompt_tokens", 0), completion_tokens=counts.get("completion_tokens", 0),
            seconds=counts.get("seconds", 0.0), generate_s=counts.get("generate_s", 0.0),
            sandbox_s=counts.get("sandbox_s", 0.0))

    @property
    def yield_rate(self) -> float:
        return self.valid / self.episodes if self.episodes else 0.0


#: the settings (of ProposeConfig) that change what propose writes: a resume must keep them
#: (sca.records.stage_run); n and max_episodes only say when to stop
RESULT_SETTINGS = ("env", "task_format", "seed", "max_steps", "observation_limit", *under("model", MODEL_SETTINGS),
                   "validate.min_failure_cases", "validate.verification_only", "validate.audit",
                   *under("validate.sandbox", SANDBOX_LIMITS))


def _existing_instructions(path: str | None) -> set[str]:
    seen = set()
    for record in scan_jsonl(path) if path else ():
        try:
            seen.add(normalise(record["instruction"]))
        except (KeyError, TypeError, AttributeError):
            continue
    return seen


def refuse_other_format(paths: list[str | None], fmt: str) -> None:
    """Raise InputError if a record in one of the files `paths` (those that exist) is of another task
    format than `fmt`: a resumed run must not mix formats in a file."""
    for path in paths:
        for record in scan_jsonl(path) if path else ():
            found = task_format(record)
            if found != fmt:
                raise InputError(f"{path}: holds {found} tasks, and this run writes {fmt} tasks; resuming would "
                                 "mix them (write to another file, or pass --overwrite)")


def benchmark_instructions(env: str) -> set[str]:
    """The test tasks' instructions of `env`'s benchmark, normalised (none if it has no benchmark)."""
    from sca.benchmarks import find_benchmark

    bench = find_benchmark(env)
    if bench is None or "test" not in bench.splits():
        return set()
    return {normalise(t.instruction) for t in bench.tasks(split="test")}


#: Propose warns once when no task is valid after this many episodes or this share of the episode
#: budget, whichever is more. Fewer than 50 would warn about models that are only unlucky (at a 5% yield
#: the chance of no valid task in 50 episodes is 8%, in 20 it is 36%); the share keeps a long run's
#: warning a sure one (at a 1% yield, none in the 800 episodes of 5% of 16,000 has a chance of 0.03%)
#: while it still comes in the first twentieth of the budget, not after hours of nothing.
ZERO_YIELD_MIN_EPISODES = 50
ZERO_YIELD_BUDGET_SHARE = 0.05


def zero_yield_after(budget: int) -> int:
    """The episodes after which a yield still 0 is warned about (see ZERO_YIELD_MIN_EPISODES)."""
    return max(ZERO_YIELD_MIN_EPISODES, int(budget * ZERO_YIELD_BUDGET_SHARE))


def yield_text(shown: Progress) -> str | None:
    """The yield (valid tasks per episode run) for propose's progress line."""
    episodes = shown.done("episodes")
    return f"yield {shown.done('valid') / episodes:.1%}" if episodes else None


def counting_episodes(shown: Progress, write: Callable[[str, dict[str, Any]], None], config: ProposeConfig,
                      episodes: int, valid: int) -> Callable[[str, dict[str, Any]], None]:
    """`write` (the run's ``on_finished``), also counting each finished episode into `shown` (every record
    is one episode; an ``accepted`` one a valid task) and warning once if the yield is still 0 after
    :func:`zero_yield_after` episodes. `episodes`, `valid`: what an earlier run of the output did."""
    counts = {"episodes": episodes, "valid": valid}
    shown.resumed(**counts)
    after = zero_yield_after(config.episode_budget)
    warned = False

    def on_finished(role: str, record: dict[str, Any]) -> None:
        nonlocal warned
        write(role, record)
        counts["episodes"] += 1
        counts["valid"] += role == "accepted"
        shown.update(**counts)
        if not warned and counts["valid"] == 0 and counts["episodes"] >= after:
            warned = True
            shown.warn(f"no valid task in {counts['episodes']} episodes: the model may be too weak for the "
                       f"{config.task_format} task format. The run goes on until {config.n} tasks are valid or "
                       f"{config.episode_budget} episodes have run (--max-episodes); stop it and try a stronger "
                       "model, or lower --max-episodes")

    return on_finished


def propose_file(
    config: ProposeConfig,
    output: str,
    *,
    rejected: str | None = None,
    model: Any = None,
    overwrite: bool = False,
    show_progress: bool | None = None,
) -> ProposeSummary:
    """`sca propose`: write valid tasks to `output`, failed episodes to `rejected`.

    `model`: a ChatModel already open (a test double, a model shared with other work);
    by default the one ``config.model`` names is loaded and closed at the end.
    """
    from envs import env_spec

    env_spec(config.env).tools()  # an unknown environment fails here, and its tools load, before a model does
    if not overwrite:  # the sidecar's settings first (every difference named), then the records' own (no sidecar)
        refuse_other_settings([output, rejected], {**asdict(config), "stop": STOP}, RESULT_SETTINGS)
        refuse_other_format([output, rejected], config.task_format)
    own_model = model is None
    try:
        with StageRun("propose", {"accepted": output, "rejected": rejected}, settings={**asdict(config), "stop": STOP},
                      result=RESULT_SETTINGS, overwrite=overwrite) as run:
            if own_model:  # once the run has refused other settings: a model takes long to load
                model = config.model.load()
            run.meta.data["settings"]["model_info"] = model.info()
            skip = {int(i.rsplit("-e", 1)[1]) for i in run.done_ids
                    if i.startswith(f"{config.env}-s{config.seed}-e")}
            already = run.writers["accepted"].resumed if "accepted" in run.writers else 0
            seen = set() if overwrite else _existing_instructions(output)
            with config.validate.sandbox.build(workers=min(config.validate.sandbox.workers,
                                                           config.concurrency)) as sandbox:
                run.meta.data["settings"]["sandbox_backend"] = sandbox.backend_name
                with progress(config.episode_budget, f"propose {config.env}", show_progress, unit="episodes",
                              bounds={"valid": config.n}, extra=yield_text) as shown:
                    check = AnswerCheck(lambda task, env, sb: validate_task(task, env, sb, config.validate), feedback)
                    run_challenger(config, model, sandbox, check, counts=run.counts,
                                   on_finished=counting_episodes(shown, run.write, config, len(skip), already),
                                   skip_indices=skip, already_valid=already,
                                   seen_instructions=seen | benchmark_instructions(config.env))
            counts = dict(run.counts)
            counts["seconds"] = run.elapsed
    finally:
        if own_model and model is not None:
            model.close()
    return ProposeSummary.from_counts(counts, config.task_format)
