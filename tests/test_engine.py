"""The batched episode engine: at most N live, refills, one generate per role per step, work in a pool."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest

from sca.agent.engine import Episode, Role, run_episodes
from sca.inference.base import ChatModel, Generation, SamplingParams, ServerError


class Counting(ChatModel):
    """A model that records the size of every call; replies with the conversation's length."""

    backend = "test"

    def __init__(self, name, fail_on_call=None):
        self.name, self.calls, self.fail_on_call = name, [], fail_on_call

    def generate(self, conversations, sampling, tools=None):
        self.calls.append((len(conversations), sampling.seed, tools))
        if self.fail_on_call == len(self.calls):
            raise ServerError("down for this call")
        return [Generation(f"{self.name}:{len(c)}", 3, 2, "stop") for c in conversations]

    def info(self):
        return {"model": self.name}


@dataclass(eq=False)
class PingPong(Episode):
    """Alternates agent and user turns for `turns` agent replies; act() records its thread."""

    index: int = 0
    turns: int = 2
    said: list = field(default_factory=list)
    threads: set = field(default_factory=set)
    failed: str = ""

    def seed_key(self):
        return f"pp{self.index}"

    def conversation(self):
        return [{"role": "user", "content": str(self.index)}] * (len(self.said) + 1)

    def receive(self, generation):
        self.said.append((self.next_role, generation.text))
        self.next_role = "user" if self.next_role == "agent" else "agent"

    def act(self):
        self.threads.add(threading.current_thread().name)
        if sum(r == "agent" for r, _ in self.said) >= self.turns:
            self.finish()

    def fail(self, kind, message):
        self.failed = f"{kind}: {message}"
        self.finish()


def make_source(n, turns=2):
    episodes = [PingPong(index=i, turns=turns + (i % 3)) for i in range(n)]
    it = iter(episodes)
    return episodes, (lambda: next(it, None))


def test_at_most_n_live_refilled_one_call_per_role_per_step():
    agent, user = Counting("agent"), Counting("user")
    episodes, source = make_source(10)
    finished = []
    live_sizes = []
    stats = run_episodes(source, {"agent": Role("agent", agent, SamplingParams()),
                                  "user": Role("user", user, SamplingParams())},
                         concurrency=4, on_finish=finished.append, workers=2,
                         on_step=lambda live: live_sizes.append(len(live)))
    assert sorted(ep.index for ep in finished) == list(range(10)) and stats.episodes == 10
    assert max(live_sizes) == 4 and all(size <= 4 for size in live_sizes)
    # every step asks each role at most once, with every live episode of that role
    assert len(agent.calls) + len(user.calls) <= 2 * stats.steps
    assert max(c[0] for c in agent.calls) <= 4
    assert sum(c[0] for c in agent.calls) == sum(r == "agent" for ep in episodes for r, _ in ep.said)
    # each episode got its own role's replies, in turn
    for ep in episodes:
        roles = [r for r, _ in ep.said]
        assert roles[0] == "agent" and all(a != b for a, b in zip(roles, roles[1:]))
        assert all(text.startswith(role) for role, text in ep.said)
    assert stats.generate_calls == {"agent": len(agent.calls), "user": len(user.calls)}
    # refill: a finished episode's place is taken at once (episodes of different lengths overlap)
    assert stats.steps < sum(len(ep.said) for ep in episodes) / 2


def test_act_runs_in_the_pool():
    episodes, source = make_source(6, turns=3)
    run_episodes(source, {"agent": Role("agent", Counting("a"), SamplingParams()),
                          "user": Role("user", Counting("u"), SamplingParams())},
                 concurrency=6, on_finish=lambda ep: None, workers=3)
    threads = set().union(*(ep.threads for ep in episodes))
    assert threads and all(name.startswith("episodes") for name in threads)


def test_seeds_vary_per_call_and_tools_are_passed():
    agent = Counting("a")
    _, source = make_source(3, turns=2)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    run_episodes(source, {"agent": Role("agent", agent, SamplingParams(), tools=tools),
                          "user": Role("user", Counting("u"), SamplingParams())},
                 concurrency=3, on_finish=lambda ep: None, seed=100)
    seeds = [c[1] for c in agent.calls]
    assert len(set(seeds)) == len(seeds)
    assert all(c[2] == tools for c in agent.calls)


class SeedLog(Counting):
    """Records the seed each conversation gets, as backends that seed requests do (seed + index)."""

    def __init__(self, name):
        super().__init__(name)
        self.per_conversation = []

    def generate(self, conversations, sampling, tools=None):
        self.per_conversation += [sampling.seed + i for i in range(len(conversations))]
        return super().generate(conversations, sampling, tools)


def _seeds(indices, concurrency, seed=7):
    agent = SeedLog("a")
    it = iter([PingPong(index=i, turns=3) for i in indices])
    run_episodes(lambda: next(it, None), {"agent": Role("agent", agent, SamplingParams()),
                                          "user": Role("user", Counting("u"), SamplingParams())},
                 concurrency=concurrency, on_finish=lambda ep: None, seed=seed)
    return agent.per_conversation


def test_no_two_conversations_share_a_seed_across_calls():
    # a counter (seed + k for the k-th call) gives conversation 1 of call k the seed of
    # conversation 0 of call k+1: two episodes would sample alike
    seeds = _seeds(range(6), concurrency=3)
    assert len(seeds) == 6 * 3 and len(set(seeds)) == len(seeds)


def test_a_resumed_run_does_not_repeat_the_first_runs_seeds():
    first = _seeds(range(3), concurrency=3)
    resumed = _seeds(range(3, 6), concurrency=3)  # the trials the first run did not do
    assert not set(first) & set(resumed)
    assert _seeds(range(3), concurrency=3) == first  # the same run again: the same seeds


def test_the_run_seed_changes_every_seed():
    assert not set(_seeds(range(3), 3, seed=1)) & set(_seeds(range(3), 3, seed=2))


def test_a_failing_backend_fails_that_calls_episodes_only():
    agent = Counting("a", fail_on_call=2)
    episodes, source = make_source(4, turns=3)
    finished = []
    run_episodes(source, {"agent": Role("agent", agent, SamplingParams()),
                          "user": Role("user", Counting("u"), SamplingParams())},
                 concurrency=2, on_finish=finished.append)
    failed = [ep for ep in episodes if ep.failed]
    assert len(failed) == 2 and all(ep.failed == "inference: ServerError: down for this call" for ep in failed)
    assert len(finished) == 4 and sum(not ep.failed for ep in finished) == 2


def test_none_for_now_and_unknown_roles():
    calls = {"n": 0}

    def source():
        calls["n"] += 1
        return None

    stats = run_episodes(source, {}, concurrency=2, on_finish=lambda ep: None)
    assert stats.episodes == 0 and calls["n"] == 1
    ep = PingPong()
    ep.next_role = "judge"
    it = iter([ep])
    with pytest.raises(KeyError, match="role 'judge'"):
        run_episodes(lambda: next(it, None), {"agent": Role("agent", Counting("a"), SamplingParams())},
                     concurrency=1, on_finish=lambda e: None)
    with pytest.raises(ValueError):
        run_episodes(lambda: None, {}, concurrency=0, on_finish=lambda e: None)


def test_one_roles_backend_error_fails_only_that_roles_episodes():
    """The user's model fails on its first call: the episodes waiting on the user fail (inference), and
    the agent's episodes of the same step get their replies and play to the end."""
    agent, user = Counting("agent"), Counting("user", fail_on_call=1)
    user_first = [PingPong(index=i, turns=2) for i in range(2)]
    for ep in user_first:
        ep.next_role = "user"
    agent_first = [PingPong(index=i, turns=2) for i in range(2, 4)]
    it = iter(user_first + agent_first)  # the user's group comes first in the step
    finished, after_first_step = [], []
    run_episodes(lambda: next(it, None), {"agent": Role("agent", agent, SamplingParams()),
                                          "user": Role("user", user, SamplingParams())},
                 concurrency=4, on_finish=finished.append,
                 on_step=lambda live: after_first_step.append([list(ep.said) for ep in agent_first])
                 if not after_first_step else None)
    assert all(ep.failed == "inference: ServerError: down for this call" and ep.said == [] for ep in user_first)
    assert after_first_step[0] == [[("agent", "agent:1")], [("agent", "agent:1")]]  # answered in that same step
    assert all(not ep.failed and [r for r, _ in ep.said] == ["agent", "user", "agent"] for ep in agent_first)
    assert agent.calls[0][0] == 2 and len(finished) == 4


def test_an_episode_done_when_created_is_finished_at_once_and_makes_room():
    """Nothing to generate: it goes to on_finish before any generate call, asks its model nothing, and its
    place goes to the next episode at once (two live ones in the first step despite two done ones)."""
    agent = Counting("agent")
    done = [PingPong(index=i, done=True) for i in range(2)]
    live = [PingPong(index=i, turns=1) for i in range(2, 4)]
    it = iter([done[0], live[0], done[1], live[1]])
    order = []
    stats = run_episodes(lambda: next(it, None), {"agent": Role("agent", agent, SamplingParams())},
                         concurrency=2, on_finish=lambda ep: order.append((ep.index, len(agent.calls))))
    assert order[:2] == [(0, 0), (1, 0)]  # finished before the first generate call
    assert sorted(order[2:]) == [(2, 1), (3, 1)]
    assert agent.calls[0][0] == 2 and len(agent.calls) == 1  # both live episodes in the first call
    assert all(ep.said == [] for ep in done) and stats.episodes == 4
