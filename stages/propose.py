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
from typing import Any

from sca.agent.challenger import AnswerCheck, normalise, run_challenger
from sca.agent.reply import STOP
from sca.cat import feedback, validate_task
from sca.records.io import InputError, scan_jsonl
from sca.records.stage_run import StageRun, progress
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
    if not overwrite:
        refuse_other_format([output, rejected], config.task_format)
    own_model = model is None
    if own_model:
        model = config.model.load()
    settings = {**asdict(config), "model_info": model.info(), "stop": STOP}
    try:
        with StageRun("propose", {"accepted": output, "rejected": rejected}, settings=settings,
                      overwrite=overwrite) as run:
            skip = {int(i.rsplit("-e", 1)[1]) for i in run.done_ids
                    if i.startswith(f"{config.env}-s{config.seed}-e")}
            already = run.writers["accepted"].resumed if "accepted" in run.writers else 0
            seen = set() if overwrite else _existing_instructions(output)
            with config.validate.sandbox.build(workers=min(config.validate.sandbox.workers,
                                                           config.concurrency)) as sandbox:
                run.meta.data["settings"]["sandbox_backend"] = sandbox.backend_name
                with progress(config.n, f"propose {config.env}", show_progress) as advance:
                    advance(min(already, config.n))
                    check = AnswerCheck(lambda task, env, sb: validate_task(task, env, sb, config.validate), feedback)
                    run_challenger(config, model, sandbox, check, on_finished=run.write, counts=run.counts,
                                   skip_indices=skip, already_valid=already,
                                   seen_instructions=seen | benchmark_instructions(config.env), advance=advance)
            counts = dict(run.counts)
            counts["seconds"] = run.elapsed
    finally:
        if own_model:
            model.close()
    return ProposeSummary.from_counts(counts, config.task_format)
