"""A run of the executor over tasks: the one setup ``sca rollout``, ``sca eval`` and GRPO share.

A task here (:class:`ExecutorTask`) is what the executor solves, whoever wrote it: an id, the trials
to run, the instruction, the simulated user's scenario if it differs, the environment (its spec, and
the factory of the fresh instance each trial runs in), and the scorer of a finished episode. ``sca
rollout`` makes them of CaT tasks (scored by their own ``evaluate``, or by a judge:
:mod:`sca.agent.judge`), ``sca eval`` of a benchmark's tasks (scored by the benchmark's scorer).

:func:`open_roles` loads the roles' models (the executor, the simulated user where an environment has
one, and the judge where a run's reward is the judge's: one copy of each model however many roles name
it) unless they are given, and closes what it loaded. :func:`run_executor` builds one
:class:`~sca.agent.executor.ExecutorEpisode` per (task, trial), offers the environment's tools
natively with the json action format, and runs them on the engine
(:func:`~sca.agent.engine.run_episodes`: at most `concurrency` live, refilled as they finish, every
turn sampled with a seed hashed from the run's seed, the role, and the episode's task, trial and
turn); each finished trial's record (docs/TRAJECTORY.md) goes to a callback as it finishes.
What to run (resume: the trials an output does not hold yet) is the caller's, in each task's trials.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

from sca.agent.engine import EngineStats, Role, run_episodes
from sca.agent.executor import AGENT, JUDGE, USER, ExecutorConfig, ExecutorEpisode, Scorer, TurnScorer, executor_stop


@dataclass
class ExecutorTask:
    """One task for the executor, and which of its trials to run."""

    id: str
    instruction: str
    env: Any  # envs.base.EnvSpec: the environment's static facts (its tools, whether a user speaks)
    scorer: Scorer | TurnScorer
    trials: Sequence[int] = (0,)
    user_scenario: str | None = None  # what the simulated user is given (default: the instruction)
    build: Callable[[], Any] | None = None  # a trial's fresh environment (default: the spec's own factory)
    meta: Any = None  # the caller's own; back with each record

    def new_env(self) -> Any:
        return self.build() if self.build is not None else self.env.make()


@dataclass
class ExecutorRoles:
    """The models of a run and how each samples: the executor, the simulated user (None where no
    environment of the run has one: records then say so; an episode that asked would get the executor),
    and the judge (None where the run's reward is no judge's: records then leave it out; an episode that
    asked would get the executor, sampling without its stop strings)."""

    executor: Any  # sca.inference.ChatModel
    executor_sampling: Any  # sca.inference.SamplingParams
    user: Any | None
    user_sampling: Any
    judge: Any | None = None
    judge_sampling: Any = None
    #: the run's seed (a stage's --seed), which each role's sampling records: the seed of every generate call
    #: is hashed from it (sca.agent.engine.call_seed), and no one seed is the whole run's
    seed: int | None = None

    def info(self) -> dict[str, Any]:
        """The roles' models (what the backends say of them) and sampling, as records keep them."""
        def sampling(params: Any) -> dict[str, Any]:
            return {**params.to_dict(), "seed": self.seed if self.seed is not None else params.seed}

        info = {"executor": {**self.executor.info(), "sampling": sampling(self.executor_sampling)}}
        info["user"] = {**self.user.info(), "sampling": sampling(self.user_sampling)} if self.user is not None else None
        if self.judge is not None:
            info["judge"] = {**self.judge.info(), "sampling": sampling(self._judge_sampling())}
        return info

    def engine_roles(self, tools: list[dict] | None = None) -> dict[str, Role]:
        """The engine's roles; `tools`: OpenAI schemas offered to the executor natively."""
        return {AGENT: Role(AGENT, self.executor, self.executor_sampling, tools=tools),
                USER: Role(USER, self.user if self.user is not None else self.executor, self.user_sampling),
                JUDGE: Role(JUDGE, self.judge if self.judge is not None else self.executor, self._judge_sampling())}

    def _judge_sampling(self) -> Any:
        return self.judge_sampling if self.judge_sampling is not None else replace(self.executor_sampling, stop=[])


@contextmanager
def open_roles(executor: Any, user: Any | None, episode: ExecutorConfig, *, needs_user: bool,
               executor_model: Any = None, user_model: Any = None, judge: Any = None, needs_judge: bool = False,
               judge_model: Any = None, seed: int | None = None) -> Iterator[ExecutorRoles]:
    """The roles of a run from the executor's, the user's and the judge's ModelConfigs (`user`, `judge`
    None: the executor's model and settings). `executor_model` / `user_model` / `judge_model`: ChatModels
    already open (test doubles, or shared with other work); the others are loaded here (one copy of a
    model that several roles name) and closed on leaving. The user's model is loaded only if
    `needs_user`, the judge's only if `needs_judge`. `seed`: the run's, for the records (ExecutorRoles.seed)."""
    own = []

    def other(config: Any) -> Any:
        """The model `config` names: the executor's, the user's when it is the same, else loaded."""
        if config is None or config.same_model(executor):
            return executor_model
        if needs_user and user is not None and config.same_model(user) and user_model is not None:
            return user_model
        model = config.load()
        own.append(model)
        return model

    try:
        if executor_model is None:
            executor_model = executor.load()
            own.append(executor_model)
        if needs_user and user_model is None:
            user_model = other(user)
        if needs_judge and judge_model is None:
            judge_model = other(judge)
        yield ExecutorRoles(executor_model, executor.sampling(executor_stop(episode)),
                            user_model if needs_user else None, (user or executor).sampling(),
                            judge_model if needs_judge else None, (judge or executor).sampling() if needs_judge else None,
                            seed=seed)
    finally:
        for model in own:
            model.close()


def run_executor(tasks: Iterable[ExecutorTask], roles: ExecutorRoles, sandbox: Any, config: ExecutorConfig, *,
                 concurrency: int, seed: int | None,
                 on_record: Callable[[ExecutorTask, dict[str, Any]], None]) -> EngineStats:
    """Run every trial of every task (read one at a time: a stream of tasks is never held); hand each
    finished trial's record, with its task, to `on_record`. `seed`: the engine's
    (:func:`~sca.agent.engine.engine_seed` of a stage's ``--seed``). With the json action format the
    executor is offered the tools of the first task's environment, which every task must share."""
    source = iter(tasks)
    first = next(source, None)
    if first is None:
        return EngineStats()
    tools = first.env.tool_schemas() if config.action_format == "json" else None
    models = roles.info()

    def episodes() -> Iterator[ExecutorEpisode]:
        for task in itertools.chain([first], source):
            if tools is not None and task.env.name != first.env.name:
                raise ValueError(f"native tool calls offer one environment's tools: {first.env.name}, "
                                 f"not {task.env.name} (task {task.id})")
            for trial in task.trials:
                ep = ExecutorEpisode.start(task_id=task.id, trial=trial, instruction=task.instruction,
                                           env=task.new_env(), sandbox=sandbox, config=config, scorer=task.scorer,
                                           user_instruction=task.user_scenario)
                ep.meta["task"] = task
                yield ep

    pending = episodes()
    return run_episodes(lambda: next(pending, None), roles.engine_roles(tools), concurrency=concurrency,
                        on_finish=lambda ep: on_record(ep.meta["task"], ep.record(models)),
                        workers=max(1, getattr(sandbox, "workers", 1)), seed=seed)
