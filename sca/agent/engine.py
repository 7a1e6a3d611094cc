"""The batched episode engine: many multi-turn episodes, one generate call per role per step.

Every stage that runs agents (``sca propose``'s challenger, ``sca rollout``'s executor and
simulated user, ``sca eval``, GRPO training) is an :class:`Episode` subclass driven by
:func:`run_episodes`:

* at most `concurrency` episodes are live; as they finish, new ones start (refill);
* each step, the live episodes are grouped by the role that must speak next (the executor,
  the simulated user...), and each role's conversations go to its model in ONE batched
  ``generate`` call (roles may be different models and backends);
* each episode then takes its reply (:meth:`Episode.receive`: parsing only) and does its
  slow work (:meth:`Episode.act`: sandbox runs, scoring) in a thread pool;
* finished episodes go to `on_finish` as soon as they are done, in the order they finish.

The engine knows nothing of the protocol, sandboxes or environments: episodes do.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from sca.records.stage_run import stopping_pool

log = logging.getLogger(__name__)


@dataclass
class Role:
    """A speaker of the episodes: its model, how it samples, and the tools it is offered."""

    name: str
    model: Any  # sca.inference.ChatModel
    sampling: Any  # sca.inference.SamplingParams; its seed, if any, is varied per call
    tools: list[dict] | None = None  # OpenAI tool schemas, for native function calling


@dataclass
class Episode:
    """One episode. Subclasses set :attr:`next_role` and implement the three hooks.

    The engine calls :meth:`conversation` for the role in :attr:`next_role`, hands the
    model's :class:`~sca.inference.Generation` to :meth:`receive` (fast: parse, decide), then
    :meth:`act` in a worker thread (slow: sandbox runs, scoring). An episode is finished when
    :attr:`done` is set; :meth:`fail` records a failure outside the episode (the model's
    backend failing for good) and finishes it.
    """

    next_role: str = "agent"
    done: bool = False
    role_seconds: dict[str, float] = field(default_factory=dict)  # its share of each role's generate time
    role_tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    ended: float = 0.0
    _turns: int = 0  # generations this episode has received (any role)

    def seed_key(self) -> str:
        """What identifies this episode across runs (e.g. task id and trial): the sampling seed
        of each of its turns derives from it, so a resumed or larger run never repeats the seeds
        another trial had. Subclasses override it; the default identifies nothing."""
        return ""

    def conversation(self) -> list[dict]:
        raise NotImplementedError

    def receive(self, generation: Any) -> None:
        raise NotImplementedError

    def act(self) -> None:
        """The slow part of a step (default: none)."""

    def fail(self, kind: str, message: str) -> None:
        """A failure outside the episode (kind "inference"): record it and finish."""
        raise NotImplementedError

    def finish(self) -> None:
        self.done = True
        self.ended = time.monotonic()

    def _account(self, role: str, generation: Any, seconds: float) -> None:
        self._turns += 1
        self.role_seconds[role] = self.role_seconds.get(role, 0.0) + seconds
        tokens = self.role_tokens.setdefault(role, {"prompt": 0, "completion": 0})
        tokens["prompt"] += int(getattr(generation, "prompt_tokens", 0) or 0)
        tokens["completion"] += int(getattr(generation, "completion_tokens", 0) or 0)


@dataclass
class EngineStats:
    """What one :func:`run_episodes` call did."""

    episodes: int = 0
    steps: int = 0
    generate_calls: dict[str, int] = field(default_factory=dict)
    generate_s: dict[str, float] = field(default_factory=dict)
    act_s: float = 0.0
    seconds: float = 0.0


def run_episodes(
    next_episode: Callable[[], Episode | None],
    roles: dict[str, Role],
    *,
    concurrency: int,
    on_finish: Callable[[Episode], None],
    workers: int = 1,
    seed: int | None = None,
    on_step: Callable[[list[Episode]], None] | None = None,
) -> EngineStats:
    """Run episodes until there are none: `next_episode()` is asked for a new one whenever
    fewer than `concurrency` are live, and returns one, or None for "none now" (the run ends
    when it says None while nothing is live). For an iterator: ``lambda: next(it, None)``.

    `roles` maps a role name to its :class:`Role`. `workers` threads run the episodes'
    :meth:`Episode.act`. With `seed`, each generate call samples with :func:`call_seed` of the
    episodes in its batch (reproducible given the same batches; never the seed of another
    trial, in this run or a resumed one). A backend error that is not an
    :class:`~sca.inference.InferenceError` propagates (a bug, not a failure to record).
    """
    from sca.inference import InferenceError

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    stats = EngineStats()
    started = time.monotonic()
    live: list[Episode] = []

    def finish_ready() -> None:
        nonlocal live
        still = []
        for ep in live:
            if ep.done:
                stats.episodes += 1
                on_finish(ep)
            else:
                still.append(ep)
        live = still

    # an interrupt leaves at once: the acts in flight end when the stage closes its sandbox
    with stopping_pool(max(1, workers), "episodes") as pool:
        while True:
            while len(live) < concurrency:
                ep = next_episode()
                if ep is None:
                    break
                live.append(ep)
                if ep.done:  # done from the start (nothing to generate): out at once, make room
                    finish_ready()
            if not live:
                break
            groups: dict[str, list[Episode]] = {}
            for ep in live:
                groups.setdefault(ep.next_role, []).append(ep)
            for name, group in groups.items():
                role = roles.get(name)
                if role is None:
                    raise KeyError(f"an episode asks for role {name!r}; roles: {', '.join(roles)}")
                sampling = role.sampling if seed is None else replace(role.sampling, seed=call_seed(seed, name, group))
                t0 = time.monotonic()
                try:
                    gens = role.model.generate([ep.conversation() for ep in group], sampling, tools=role.tools)
                except InferenceError as e:
                    log.warning("%s model failed for %d episodes: %s", name, len(group), e)
                    for ep in group:
                        ep.fail("inference", f"{type(e).__name__}: {e}")
                    continue
                dt = time.monotonic() - t0
                stats.generate_calls[name] = stats.generate_calls.get(name, 0) + 1
                stats.generate_s[name] = stats.generate_s.get(name, 0.0) + dt
                if len(gens) != len(group):
                    raise RuntimeError(f"{name} model returned {len(gens)} generations for {len(group)} conversations")
                for ep, gen in zip(group, gens):
                    ep._account(name, gen, dt / len(group))
                    ep.receive(gen)
            t0 = time.monotonic()
            list(pool.map(lambda ep: ep.act(), live))
            stats.act_s += time.monotonic() - t0
            stats.steps += 1
            if on_step is not None:
                on_step(live)
            finish_ready()
    stats.seconds = time.monotonic() - started
    return stats


def engine_seed(seed: int) -> int:
    """The engine's seed (:func:`run_episodes`) for a stage run with ``--seed`` `seed`."""
    return seed * 7919


def call_seed(seed: int, role: str, group: list[Episode]) -> int:
    """The sampling seed of one generate call: a hash of the run's seed, the role, and each
    episode's :meth:`~Episode.seed_key` and turn. Backends give conversation i of a call
    ``seed + i``; a counter (``seed + k`` for the k-th call) would hand the same seeds to
    different episodes in the next call and to the first calls of a resumed run."""
    key = "\x1f".join([str(seed), role, *(f"{ep.seed_key()}@{ep._turns}" for ep in group)])
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % (2**31 - 2**20)
