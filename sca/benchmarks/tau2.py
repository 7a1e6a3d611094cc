"""TauBench as a benchmark: tau2's own tasks, and tau2's own evaluator as the scorer of our trajectories.

The tasks are tau2's train and test tasks of each domain, in tau2's order; the instruction is the
task's user scenario as text (what the simulated user is given). :data:`RETAIL` and :data:`AIRLINE`
are the registry's benchmarks (:mod:`sca.benchmarks`).

The scorer feeds tau2's evaluator tau2's message types.

An executor episode in retail or airline is converted to the messages tau2 records in its own
simulations: the simulated user's messages become ``UserMessage`` (our ``OBSERVATION:`` messages,
the code format's tool output, are not the user's and are left out); each executor reply that
spoke to the user becomes an ``AssistantMessage`` with that text (the THOUGHT left out); each
reply that called tools becomes an ``AssistantMessage`` carrying those ``ToolCall``s and the text
it said beside them (native function calling: tau2's COMMUNICATE check reads that text, as in
tau2's own simulations; the code format says nothing beside its ACTION), followed by one
``ToolMessage`` per call. Then ``tau2.evaluator.evaluator.evaluate_simulation`` scores the
simulation by each task's reward basis (database state against the gold actions' state, the gold
actions called, required information communicated) exactly as tau2 does.

tau2 scores what happened
-------------------------
The calls replayed are exactly the recorded calls our environment ran: those that pass
:meth:`envs._tau.TauEnvironment.precheck` (a function of the call alone, so old records are read
alike), with the arguments it returns, which are the ones the tool ran with. A call our
environment refused before running it (an unknown tool, arguments that are no object or a
truncation stub, too large, of the wrong type, a costly ``calculate``) is not shown to tau2: it
changed nothing here, and tau2, which runs tools on unchecked arguments, must not run it either.
A call the tool itself refused ran, and is replayed (tau2 refuses it too). The tool messages'
contents are what tau2's own environment answers on the replay, in order (tau2's evaluator
replays them again and requires the same answers); where that answer differs from ours the
call is listed in ``replay_mismatches``.

How an episode ended
--------------------
tau2 scores only a simulation that ended with the user's or the agent's stop; every other
termination reason scores 0. Ours map to tau2's (:data:`TERMINATIONS`): the user's ``###STOP###``
is ``USER_STOP``; our step limit is ``MAX_STEPS`` (ours counts executor replies, 15 as in the
paper; tau2's orchestrator counts messages of every role, 200 by default, and also stops at 10
tool errors, ``TOO_MANY_ERRORS``, which we do not); running out of context, or any failure of
the episode, is ``AGENT_ERROR``, as tau2 records a simulation whose agent raised.

Bounded work
------------
The scorer runs in the trusted process on what a trained policy did, and its work is bounded by
its inputs rather than by a timer: the calls replayed (twice, here and in tau2's evaluator) are
only prechecked calls, each with at most ``MAX_ARGUMENT_BYTES`` (16 KiB) of arguments and lists
of at most ``MAX_LIST_ITEMS`` (64) items, on which every tau2 tool does work linear in its
arguments and the database (``calculate`` included: no power, at most 1000 characters; see
:mod:`envs._tau`); a replay costs about what the same calls cost our environment during the
episode. The rest of tau2's evaluation is linear in the message texts (model output, bounded by
the generation limits) and in the database; reading each reply here is the executor's own
parsing of it (:func:`sca.agent.reply.parse_reply`), which the episode already paid for.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from functools import lru_cache
from typing import Any

from sca.agent.reply import OBSERVATION, parse_reply
from sca.benchmarks.base import Benchmark, BenchmarkTask

log = logging.getLogger(__name__)


def _quiet() -> None:
    """tau2 imported quietly and offline, whichever part of it is imported first."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # tau2 imports litellm, which fetches otherwise
    try:
        from loguru import logger as loguru_logger

        loguru_logger.disable("tau2")
    except ImportError:
        pass


def _tau2():
    """tau2's evaluator and message types; imported once, quietly and offline."""
    _quiet()
    from tau2.registry import registry
    from tau2.data_model import message as m
    from tau2.data_model.simulation import SimulationRun, TerminationReason
    from tau2.data_model.tasks import Task
    from tau2.evaluator.evaluator import EvaluationType, evaluate_simulation

    return registry, m, SimulationRun, TerminationReason, Task, EvaluationType, evaluate_simulation


def tau2_messages(domain: str, messages: list[dict[str, Any]], tool_calls: list[dict[str, Any]],
                  action_format: str = "code", mismatches: list[dict[str, Any]] | None = None) -> list[Any]:
    """Our executor conversation (and its recorded tool calls) as tau2's messages (see the module).

    `mismatches`, if given, receives each replayed call whose answer from tau2's environment
    differs from what our environment answered during the episode (a drift between the two)."""
    from envs import make_env

    registry, m, *_ = _tau2()
    env = registry.get_env_constructor(domain)()
    ours = make_env(domain)  # only its precheck is used: a function of the call alone
    by_message: dict[Any, list[dict[str, Any]]] = {}
    for call in tool_calls:
        by_message.setdefault(call.get("message"), []).append(call)
    out: list[Any] = []
    n = 0
    for index, msg in enumerate(messages):
        role = msg.get("role")
        if role == "system" or role == "tool":
            continue  # the system prompt is not scored; tool results come from the replay below
        content = msg.get("content") or ""
        if role == "user":
            if not content.startswith(OBSERVATION):
                out.append(m.UserMessage(role="user", content=content))
            continue
        said = _said(content, action_format)
        ran = [(call, kwargs) for call in by_message.get(index, []) if (kwargs := _ran_with(ours, call)) is not None]
        if not ran:
            if said.strip():
                out.append(m.AssistantMessage(role="assistant", content=said))
            continue
        tau_calls = []
        for call, kwargs in ran:
            n += 1
            tau_calls.append(m.ToolCall(id=f"call_{n}", name=call["name"], arguments=kwargs, requestor="assistant"))
        out.append(m.AssistantMessage(role="assistant", content=said if said.strip() else None, tool_calls=tau_calls))
        for tc, (call, _) in zip(tau_calls, ran):
            response = env.get_response(tc)
            out.append(response)
            if mismatches is not None and not _same_answer(call, response):
                mismatches.append({"name": call["name"], "ours": _short(call.get("error") or call.get("result")),
                                   "tau2": _short(response.content)})
    return out


def _said(content: str, action_format: str) -> str:
    """What an executor reply said: its text without the THOUGHT, read as the executor reads it (the
    code format's ACTION says nothing, its ANSWER its body; with native calls, the text beside them)."""
    if action_format == "code":
        reply = parse_reply(content)
        return reply.body if reply.kind == "answer" else (reply.text if reply.kind == "text" else "")
    return parse_reply(content).text if "THOUGHT:" in content else content


def _ran_with(env: Any, call: dict[str, Any]) -> dict[str, Any] | None:
    """The arguments recorded call `call` ran with in our environment, or None if it was refused
    before running (its precheck fails now as it did then: the check reads the call alone)."""
    from envs.base import ToolError

    try:
        return env.precheck(call.get("name"), call.get("arguments"))
    except ToolError:
        return None


def _same_answer(call: dict[str, Any], response: Any) -> bool:
    """Whether tau2's answer to a replayed call is the one our environment gave."""
    import json

    from envs._tau import is_truncation_stub

    if bool(call.get("error")) != bool(response.error):
        return False
    if response.error:
        return True  # both refused; the wording of a refusal is each environment's own
    if is_truncation_stub(call.get("result")):
        return True  # the record no longer holds our answer: nothing to compare it with
    content = response.content or ""
    try:
        theirs = json.loads(content)
    except ValueError:
        theirs = content
    ours = call.get("result")
    return theirs == ours or content == ours


def _short(value: Any, limit: int = 300) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


#: our episode's termination -> tau2's TerminationReason value (see the module); any other is "agent_error"
TERMINATIONS = {"user_stop": "user_stop", "max_steps": "max_steps", "context_limit": "agent_error",
                "error": "agent_error"}


def tau2_termination(termination: str) -> Any:
    """tau2's TerminationReason for an episode of ours that ended with `termination`."""
    TerminationReason = _tau2()[3]
    return TerminationReason(TERMINATIONS.get(termination, "agent_error"))


def tau2_reward(domain: str, task_data: dict[str, Any], messages: list[Any], termination: str) -> tuple[float, dict]:
    """tau2's reward (0.0 or 1.0) and its breakdown for `messages` of task `task_data` (tau2's own
    record), in a simulation that ended as our `termination` maps to (see :data:`TERMINATIONS`)."""
    _registry, _m, SimulationRun, _reason, Task, EvaluationType, evaluate_simulation = _tau2()
    task = Task.model_validate(task_data)
    simulation = SimulationRun(id="sca", task_id=task.id, start_time="", end_time="", duration=0.0,
                               termination_reason=tau2_termination(termination), messages=messages, trial=0,
                               seed=0)
    info = evaluate_simulation(simulation=simulation, task=task, evaluation_type=EvaluationType.ALL,
                               solo_mode=False, domain=domain)
    return float(info.reward), info.model_dump(mode="json", exclude_none=True)


def noop_solvable(domain: str, task_data: dict[str, Any]) -> bool:
    """Whether tau2 scores the task 1 when the agent does nothing and the user stops."""
    import json

    return _noop_solvable(domain, json.dumps(task_data, sort_keys=True))


@lru_cache(maxsize=None)
def _noop_solvable(domain: str, task_json: str) -> bool:
    import json

    _registry, m, *_ = _tau2()
    reward, _ = tau2_reward(domain, json.loads(task_json), [m.UserMessage(role="user", content="###STOP###")],
                            "user_stop")
    return reward == 1.0


def unreplayable(ep: Any) -> str | None:
    """Why the episode's record cannot show tau2 exactly what ran, or None. A trajectory keeps tool
    calls within bounds (see ``sca.agent.executor.KEEP_EPISODE_BYTES``): past them a call's arguments are a
    stub, and past 1,000 calls a call is only counted. A stub of more bytes than any call may have was
    refused before it ran, and is rightly not replayed; a smaller one, or a call not recorded at all,
    may have changed the database. Only an executor that flooded its episode with calls gets there,
    so the trial scores 0 rather than a score of something other than what happened."""
    from envs._tau import MAX_ARGUMENT_BYTES
    from sandbox.result import STUB_KEY, is_stub

    omitted = getattr(ep, "tool_calls_omitted", 0)
    if omitted:
        return f"{omitted} tool calls past the first {len(ep.tool_calls)} were counted, not recorded"
    for call in ep.tool_calls:
        args = call.get("arguments")
        if is_stub(args) and not args[STUB_KEY].get("bytes", 0) > MAX_ARGUMENT_BYTES:
            return (f"the arguments of a {str(call.get('name'))[:100]} call that may have run were not kept (the "
                    "episode's payloads past its budget are stubs)")
    return None


def tau2_scorer(domain: str, task_data: dict[str, Any]):
    """The scorer of an executor episode on a TauBench task: tau2's evaluator (see the module)."""

    def score(ep: Any) -> tuple[int, dict[str, Any]]:
        ep.answer = ep.final_answer
        why = unreplayable(ep)
        if why:
            return 0, {"scorer": "tau2", "status": "unscorable", "reward": 0.0, "error": why}
        mismatches: list[dict[str, Any]] = []
        try:
            messages = tau2_messages(domain, ep.messages, ep.tool_calls, ep.config.action_format, mismatches)
            reward, detail = tau2_reward(domain, task_data, messages, ep.termination)
        except Exception as e:  # noqa: BLE001 - what the episode did made tau2 fail: the trial fails
            log.warning("tau2 could not score %s#%s: %s: %s", ep.task_id, ep.trial, type(e).__name__, e)
            return 0, {"scorer": "tau2", "status": "scorer_error", "reward": 0.0,
                       "error": f"{type(e).__name__}: {str(e)[:1000]}", "replay_mismatches": mismatches[:20]}
        return int(reward == 1.0), {"scorer": "tau2", "status": "ok", "reward": reward, "tau2": detail,
                                    "replay_mismatches": mismatches[:20]}

    return score


# -- the benchmark: tau2's tasks ---------------------------------------------------------------------
SPLITS = ("train", "test")


def instruction_text(task: Any) -> str:
    """A readable instruction from a tau2 task's user scenario."""
    scenario = task.user_scenario
    instructions = scenario.instructions
    if isinstance(instructions, str):
        body = instructions.strip()
    else:
        sections = [
            ("Reason for call", instructions.reason_for_call),
            ("Known info", instructions.known_info),
            ("Unknown info", instructions.unknown_info),
            ("Task instructions", instructions.task_instructions),
        ]
        body = "\n\n".join(f"{label}:\n{text.strip()}" for label, text in sections if text and text.strip())
    if scenario.persona:
        body = f"Persona:\n{scenario.persona.strip()}\n\n{body}"
    return body


@lru_cache(maxsize=None)
def _task_rows(domain: str) -> tuple[tuple[str, str, str, str], ...]:
    """(id, split, instruction, data as JSON) of every train and test task of `domain`, in tau2's order
    (read once per process; each caller then gets its own copies)."""
    _quiet()
    env_module = importlib.import_module(f"tau2.domains.{domain}.environment")
    split_of = {}
    for split, ids in env_module.get_tasks_split().items():
        if split in SPLITS:
            split_of.update({task_id: split for task_id in ids})
    rows = []
    for task in env_module.get_tasks(task_split_name=None):
        if task.id in split_of:
            rows.append((task.id, split_of[task.id], instruction_text(task), json.dumps(task.model_dump(mode="json"))))
    return tuple(rows)


class Tau2Benchmark(Benchmark):
    """One tau2 domain's tasks, scored by tau2's evaluator (:func:`tau2_scorer`)."""

    scorer_name = "tau2"

    def __init__(self, domain: str) -> None:
        self.env = domain

    def _tasks(self) -> list[BenchmarkTask]:
        return [BenchmarkTask(id=task_id, split=split, instruction=text, data=json.loads(data))
                for task_id, split, text, data in _task_rows(self.env)]

    def splits(self) -> list[str]:
        return sorted(SPLITS)

    def without_noop_solvable(self, tasks: list[BenchmarkTask]) -> tuple[list[BenchmarkTask], int | None]:
        kept = [t for t in tasks if not noop_solvable(self.env, t.data)]
        return kept, len(tasks) - len(kept)

    def scorer(self, task: BenchmarkTask) -> Any:
        return tau2_scorer(self.env, task.data)


RETAIL = Tau2Benchmark("retail")
AIRLINE = Tau2Benchmark("airline")
