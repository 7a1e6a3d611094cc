"""TauBench's official scorer on our trajectories: tau2's own evaluator, fed tau2's message types.

An executor episode in retail or airline is converted to the messages tau2 records in its own
simulations: the simulated user's messages become ``UserMessage``; each executor reply that
spoke to the user becomes an ``AssistantMessage`` with that text (the THOUGHT left out); each
action that called tools becomes an ``AssistantMessage`` carrying those ``ToolCall``s, followed
by one ``ToolMessage`` per call. The tool messages' contents are what tau2's own environment
answers when the calls are replayed on it in order (tau2's evaluator replays them again and
requires the same answers). Then ``tau2.evaluator.evaluator.evaluate_simulation`` scores the
simulation by each task's reward basis (database state against the gold actions' state,
required information communicated) exactly as tau2 does; tau2 gives 0 to a simulation that
did not end with the user's stop (max steps, context limit).
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Any

from sca.protocol import OBSERVATION, parse_reply

log = logging.getLogger(__name__)


def _tau2():
    """tau2's evaluator and message types; imported once, quietly and offline."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # tau2 imports litellm, which fetches otherwise
    try:
        from loguru import logger as loguru_logger

        loguru_logger.disable("tau2")
    except ImportError:
        pass
    from tau2.registry import registry
    from tau2.data_model import message as m
    from tau2.data_model.simulation import SimulationRun, TerminationReason
    from tau2.data_model.tasks import Task
    from tau2.evaluator.evaluator import EvaluationType, evaluate_simulation

    return registry, m, SimulationRun, TerminationReason, Task, EvaluationType, evaluate_simulation


def tau2_messages(domain: str, messages: list[dict[str, Any]], tool_calls: list[dict[str, Any]],
                  action_format: str = "code", mismatches: list[dict[str, Any]] | None = None) -> list[Any]:
    """Our executor conversation (and its recorded tool calls) as tau2's messages.

    `mismatches`, if given, receives each replayed call whose answer from tau2's environment
    differs from what our environment answered during the episode (a drift between the two)."""
    registry, m, *_ = _tau2()
    env = registry.get_env_constructor(domain)()
    by_message: dict[int, list[dict[str, Any]]] = {}
    for call in tool_calls:
        by_message.setdefault(call["message"], []).append(call)
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
        calls = by_message.get(index, [])
        if calls:
            tau_calls = []
            for call in calls:
                n += 1
                args = call.get("arguments") if isinstance(call.get("arguments"), dict) else {}
                tau_calls.append(m.ToolCall(id=f"call_{n}", name=call["name"], arguments=args, requestor="assistant"))
            out.append(m.AssistantMessage(role="assistant", content=None, tool_calls=tau_calls))
            for tc, call in zip(tau_calls, calls):
                response = env.get_response(tc)
                out.append(response)
                if mismatches is not None and not _same_answer(call, response):
                    mismatches.append({"name": call["name"], "ours": _short(call.get("error") or call.get("result")),
                                       "tau2": _short(response.content)})
            continue
        if action_format == "code":
            reply = parse_reply(content)
            said = reply.body if reply.kind == "answer" else (reply.text if reply.kind == "text" else "")
        else:
            said = parse_reply(content).text if "THOUGHT:" in content else content
        if said.strip():
            out.append(m.AssistantMessage(role="assistant", content=said))
    return out


def _same_answer(call: dict[str, Any], response: Any) -> bool:
    """Whether tau2's answer to a replayed call is the one our environment gave."""
    import json

    if bool(call.get("error")) != bool(response.error):
        return False
    if response.error:
        return True  # both refused; the wording of a refusal is each environment's own
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


def tau2_reward(domain: str, task_data: dict[str, Any], messages: list[Any], user_stopped: bool) -> tuple[float, dict]:
    """tau2's reward (0.0 or 1.0) and its breakdown for `messages` of task `task_data` (tau2's own record)."""
    _registry, _m, SimulationRun, TerminationReason, Task, EvaluationType, evaluate_simulation = _tau2()
    task = Task.model_validate(task_data)
    reason = TerminationReason.USER_STOP if user_stopped else TerminationReason.MAX_STEPS
    simulation = SimulationRun(id="sca", task_id=task.id, start_time="", end_time="", duration=0.0,
                               termination_reason=reason, messages=messages, trial=0, seed=0)
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
    reward, _ = tau2_reward(domain, json.loads(task_json), [m.UserMessage(role="user", content="###STOP###")], True)
    return reward == 1.0


def tau2_scorer(domain: str, task_data: dict[str, Any]):
    """The scorer of an executor episode on a TauBench task: tau2's evaluator (see the module)."""

    def score(ep: Any) -> tuple[int, dict[str, Any]]:
        ep.answer = ep.final_answer
        mismatches: list[dict[str, Any]] = []
        try:
            messages = tau2_messages(domain, ep.messages, ep.tool_calls, ep.config.action_format, mismatches)
            reward, detail = tau2_reward(domain, task_data, messages, ep.termination == "user_stop")
        except Exception as e:  # noqa: BLE001 - what the episode did made tau2 fail: the trial fails
            log.warning("tau2 could not score %s#%s: %s: %s", ep.task_id, ep.trial, type(e).__name__, e)
            return 0, {"scorer": "tau2", "status": "scorer_error", "reward": 0.0,
                       "error": f"{type(e).__name__}: {str(e)[:1000]}", "replay_mismatches": mismatches[:20]}
        return int(reward == 1.0), {"scorer": "tau2", "status": "ok", "reward": reward, "tau2": detail,
                                    "replay_mismatches": mismatches[:20]}

    return score
