"""The executor: an agent that solves a task over many turns, on the shared episode engine.

Used by ``sca rollout`` (CaT tasks, scored by their own ``evaluate``), ``sca eval`` (benchmark
tasks, scored by the benchmark's scorer) and GRPO training. As in the paper, every reply is
``THOUGHT: ... END THOUGHT`` and then either ``ACTION: <python> END ACTION`` (run in the
sandbox against this episode's own environment state, which persists across its steps; the
observation is what the code printed, ``answer``, or the error) or plain text: a message to
the user where the environment has one (the simulated user answers), the final answer
elsewhere. With ``action_format="json"`` the model calls the tools natively instead (its chat
template's function calling, or the server's ``tools`` API) and each call goes straight to
the environment.

An episode ends on the final answer, on the user's ``###STOP###``, at ``max_steps`` executor
replies, at the model's context limit, or on an error; then it is scored, and the reason is
recorded. A scorer that needs a model (the judge, :mod:`sca.agent.judge`) is a :class:`TurnScorer`: the
finished episode then speaks to the engine's :data:`JUDGE` role until the scorer has its score, so the
judge's questions of all the episodes finished at a step go out in one batched generate call. A failure
outside the executor (a backend still failing after retries, a sandbox that
could start no worker for a run) is an infrastructure failure: typed, recorded, reward None. What
the executor's code can cause (a worker that dies or hangs under its ACTION, anything it sends) is
never one: it is that action's error, as the executor sees it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from sandbox.config import SandboxConfig
from sandbox.result import KEEP_ERROR_CHARS, KEEP_PAYLOAD_BYTES, payload_stub
from sandbox.runner.wire import json_depth
from sca.agent import user_sim
from sca.agent.config import ExecutorConfig
from sca.agent.engine import Episode
from sca.agent.reply import (
    OBSERVATION,
    STOP,
    answer_from_text,
    complete_reply,
    format_observation,
    parse_reply,
    tool_listing,
)

AGENT, USER = "agent", "user"
#: the role of a turn scorer's model (the judge): the engine batches its turns as it does the others'
JUDGE = "judge"
MAX_ARGS_DEPTH = SandboxConfig.max_depth  # how deeply a native tool call's arguments may nest (as the sandbox allows)
#: bytes of tool-call payloads (arguments and results, as JSON) one episode keeps in full; past it,
#: payloads are kept as stubs (size, digest, prefix). With MAX_CALL_RECORDS, what a live episode holds
#: of what its code sent is bounded whatever the code sends. The ceiling, per live episode: 1 MiB of
#: kept JSON (at most ~25x that once decoded, for the densest JSON), 1,000 call records of at most
#: ~2 KB each (a name, a refusal cut to 1,000 characters, two stubs), 15 observations cut to
#: `observation_limit`, and while a run goes on, one frame of at most its byte budget and 100,000
#: JSON items: under 64 MiB. bench/rollout.py measures 19 MiB for an episode that spends every run's
#: whole budget on the densest arguments for 15 steps (1.1 GB before these bounds).
KEEP_EPISODE_BYTES = 1 << 20
#: tool calls an episode records one by one; the rest are only counted (``tool_calls_omitted``)
MAX_CALL_RECORDS = 1000


def executor_stop(config: ExecutorConfig) -> list[str]:
    """The executor's stop strings: the end of an action (none for native function calling)."""
    return list(STOP) if config.action_format == "code" else []


def system_prompt(env: Any, config: ExecutorConfig) -> str:
    """The executor's system prompt: the environment, its tools and policy, the reply format."""
    parts = [f"You are an agent that helps by using tools. {env.description}"]
    if config.action_format == "code":
        parts.append("# Tools\nEach tool is a Python function; call it in an ACTION. It returns plain JSON values "
                     "(dicts, lists, strings, numbers), or raises ToolError with the reason it refused.\n\n"
                     + tool_listing(env))
    if env.policy.strip():
        parts.append(f"# Policy\n{env.policy.strip()}")
    if env.user_facing:
        end = ("a message to the customer in plain text" + (", with no ACTION" if config.action_format == "code" else "")
               + ". The customer answers it; the conversation ends when the customer is done.")
    else:
        end = ("your final answer and nothing else: a number, a word, or a JSON list or object, with no "
               "explanation. The episode ends with it.")
    if config.action_format == "code":
        fmt = ("# How to reply\nStart every reply with\nTHOUGHT: your reasoning END THOUGHT\nand then give either\n"
               "ACTION:\n<Python code that calls tools; print() what you need to see>\nEND ACTION\n"
               "(the code runs at once; what it changes in the environment stays changed; you then see what it "
               f"printed, the value of `answer` if it set one, or the error), or {end}")
    else:
        fmt = ("# How to reply\nStart every reply with\nTHOUGHT: your reasoning END THOUGHT\nthen call tools through "
               f"function calls when you need them (you then see their results), or give {end}")
    parts.append(f"{fmt}\nYou have at most {config.max_steps} replies.")
    return "\n\n".join(parts)


#: scores a finished episode: (reward 0/1, the evaluation's detail), or raises InfraFailure
Scorer = Callable[["ExecutorEpisode"], "tuple[int, dict[str, Any]]"]


@runtime_checkable
class TurnScorer(Protocol):
    """A scorer that asks a model (the judge, :class:`sca.agent.judge.JudgeScorer`). When the episode ends,
    :meth:`start` gives the conversation its :data:`JUDGE` role is asked (kept as ``ep.scoring``); each
    reply goes to :meth:`receive`, which gives the score, or None after adding the next turn to
    ``ep.scoring``. A judge whose generation fails is an infrastructure failure of the trial (the
    episode's); whatever the judge says is the scorer's to score."""

    def start(self, ep: ExecutorEpisode) -> list[dict[str, Any]]: ...

    def receive(self, ep: ExecutorEpisode, generation: Any) -> tuple[int, dict[str, Any]] | None: ...


class InfraFailure(Exception):
    """The trial failed for a reason outside the executor; `kind` is "sandbox" or "inference"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def evaluate_scorer(evaluation_function: str) -> Scorer:
    """The CaT scorer: the task's own ``evaluate`` in the sandbox, read-only, on the final state,
    with the executor's final text converted as the contract says (docs/CAT.md, "The answer").

    Reward 1 only for a real ``True``. Whatever the executor's state made ``evaluate`` do
    (raise, run out of time or memory, return a non-bool, lose its worker) is reward 0; only a
    sandbox that could not start the run is an infrastructure failure.
    """

    def score(ep: ExecutorEpisode) -> tuple[int, dict[str, Any]]:
        ep.answer = answer_from_text(ep.final_answer, ep.env.user_facing)
        t0 = time.monotonic()
        try:
            res = ep.sandbox.run(ep.env, evaluation_function, mode="evaluate", answer=_bounded(ep.answer, ep.sandbox),
                                 read_only=True, keep_payloads=False)
        except (TypeError, ValueError) as e:  # the executor's answer is no value the sandbox can pass on
            ep.answer = None
            return 0, {"status": "bad_answer", "verdict": None, "error_type": type(e).__name__, "error": str(e)[:500]}
        finally:
            ep.sandbox_s += time.monotonic() - t0
        detail = {"status": res.status, "verdict": res.verdict, "value_type": res.value_type,
                  "error_type": res.error_type, "error": res.error, "traceback": res.traceback,
                  "seconds": round(res.duration_s, 4), "tool_calls": len(res.tool_calls)}
        if res.infra:
            raise InfraFailure("sandbox", f"evaluate: {res.error}")
        return (1 if res.verdict is True else 0), detail

    return score


def _bounded(answer: Any, sandbox: Any) -> Any:
    """The answer, or its text when it is nested too deeply to hand to the sandbox."""
    limit = sandbox.max_depth
    return answer if json_depth(answer, limit) <= limit else json.dumps(answer)


@dataclass(eq=False)
class ExecutorEpisode(Episode):
    """One trial of one task: the executor's conversation, its actions, the user, the score."""

    task_id: str = ""
    trial: int = 0
    instruction: str = ""
    env: Any = None
    sandbox: Any = None
    config: ExecutorConfig = field(default_factory=ExecutorConfig)
    scorer: Scorer | TurnScorer | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)  # the executor's view
    user_messages: list[dict[str, str]] = field(default_factory=list)  # the simulated user's view
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    assistant_token_ids: list[list[int] | None] = field(default_factory=list)
    steps: int = 0
    kept_bytes: int = 0  # of KEEP_EPISODE_BYTES, what tool_calls keeps in full
    tool_calls_omitted: int = 0  # tool calls made past MAX_CALL_RECORDS: counted, not recorded
    final_answer: str | None = None
    answer: Any = None
    termination: str = ""
    infra_error: dict[str, str] | None = None
    reward: int | None = None
    evaluation: dict[str, Any] | None = None
    sandbox_s: float = 0.0
    pending: Any = None  # the action received, to run in act()
    scoring: list[dict[str, Any]] = field(default_factory=list)  # a turn scorer's conversation (the judge's)
    scoring_notes: dict[str, Any] = field(default_factory=dict)  # a turn scorer's own notes
    meta: dict[str, Any] = field(default_factory=dict)  # the caller's own (not written in the record)

    @classmethod
    def start(cls, *, task_id: str, trial: int, instruction: str, env: Any, sandbox: Any, config: ExecutorConfig,
              scorer: Scorer, user_instruction: str | None = None) -> ExecutorEpisode:
        """A new episode. In user-facing environments the simulated user speaks first, given
        `user_instruction` (default: the instruction) as its scenario; elsewhere the instruction is
        the executor's first user message."""
        ep = cls(task_id=task_id, trial=trial, instruction=instruction, env=env, sandbox=sandbox, config=config,
                 scorer=scorer)
        ep.messages = [{"role": "system", "content": system_prompt(env, config)}]
        if env.user_facing:
            ep.user_messages = [{"role": "system", "content": user_sim.system_prompt(user_instruction or instruction)},
                                {"role": "user", "content": user_sim.GREETING}]
            ep.next_role = USER
        else:
            ep.messages.append({"role": "user", "content": instruction})
            ep.next_role = AGENT
        return ep

    # -- the engine's hooks --------------------------------------------------------------------------
    def seed_key(self) -> str:
        return f"{self.task_id}#{self.trial}"

    def conversation(self) -> list[dict[str, Any]]:
        if self.next_role == JUDGE:
            return self.scoring
        return self.messages if self.next_role == AGENT else self.user_messages

    def receive(self, generation: Any) -> None:
        if self.next_role == JUDGE:
            self._judge_said(generation)
        elif generation.finish_reason == "error":
            self._infra("inference", f"the {self.next_role} model failed for this conversation")
        elif generation.finish_reason == "context":
            self._end("context_limit")
        elif self.next_role == USER:
            self._user_said(generation.text)
        else:
            self._agent_said(generation)

    def act(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None and not self.termination:
            t0 = time.monotonic()
            if self.config.action_format == "code":
                self._run_action(pending)
            else:
                self._call_tools(pending)
            self.sandbox_s += time.monotonic() - t0
            if not self.termination:
                if self.steps >= self.config.max_steps:
                    self._end("max_steps")
                else:
                    self.next_role = AGENT
        if self.termination and not self.done and self.next_role != JUDGE:
            self._score()

    def fail(self, kind: str, message: str) -> None:
        self._infra(kind, f"judge: {message}" if self.next_role == JUDGE else message)
        self.finish()

    # -- turns ---------------------------------------------------------------------------------------
    def _agent_said(self, generation: Any) -> None:
        self.steps += 1
        self.assistant_token_ids.append(list(generation.token_ids) if generation.token_ids is not None else None)
        if self.config.action_format == "json" and generation.tool_calls:
            self.messages.append({"role": "assistant", "content": generation.text or "",
                                  "tool_calls": generation.tool_calls})
            self.pending = generation.tool_calls
            return
        text = complete_reply(generation.text) if self.config.action_format == "code" else generation.text
        self.messages.append({"role": "assistant", "content": text})
        reply = parse_reply(generation.text) if self.config.action_format == "code" else None
        if reply is not None and reply.kind == "action":
            self.pending = reply.code if not reply.error else ""
            return
        said = (reply.body if reply.kind == "answer" else reply.text) if reply is not None else _after_thought(text)
        self.final_answer = said
        if self.env.user_facing:
            self.user_messages.append({"role": "user", "content": said})
            if self.steps >= self.config.max_steps:
                self._end("max_steps")
            else:
                self.next_role = USER
        else:
            self._end("final_answer")

    def _user_said(self, text: str) -> None:
        text = text.strip()
        self.user_messages.append({"role": "assistant", "content": text})
        self.messages.append({"role": "user", "content": text})
        if user_sim.stop_token(text):
            self._end("user_stop")
        else:
            self.next_role = AGENT

    def _run_action(self, code: str) -> None:
        if not code.strip():
            observation = f"{OBSERVATION}\nThe ACTION is empty: write Python code between ACTION: and END ACTION."
        else:
            res = self.sandbox.run(self.env, code, mode="exec",
                                   keep_payloads=max(0, KEEP_EPISODE_BYTES - self.kept_bytes))
            if res.infra:
                self._infra("sandbox", f"action: {res.error}")
                return
            self.kept_bytes += res.kept_bytes
            index = len(self.messages) - 1
            for call in res.tool_calls:
                self._record_call(index, call.name, call.args, call.result, call.error)
            observation = format_observation(res, self.config.observation_limit)
        self.messages.append({"role": "user", "content": observation})

    def _call_tools(self, calls: list[dict[str, Any]]) -> None:
        from envs.base import ToolError

        index = len(self.messages) - 1
        for call in calls:
            fn = call.get("function") or {}
            name, raw = fn.get("name", ""), fn.get("arguments", "{}")
            error = result = None
            try:
                args = _try_json(raw)
                if not isinstance(args, dict):
                    raise ToolError("the arguments must be a JSON object" + (
                        f" nested at most {MAX_ARGS_DEPTH} levels" if isinstance(raw, str) and args is raw else ""))
                result = self.env.call(name, args)
            except ToolError as e:
                error = str(e)
            except Exception as e:  # noqa: BLE001 - a tool that crashed refuses the call
                error = f"{type(e).__name__}: {e}"
            content = f"Error: {error}" if error else json.dumps(result, ensure_ascii=False)
            self._record_call(index, name, self._kept(args), None if error else self._kept(result, content),
                              error if error is None or len(error) <= KEEP_ERROR_CHARS else error[:KEEP_ERROR_CHARS])
            if len(content) > self.config.observation_limit:
                content = content[:self.config.observation_limit] + " ... (cut)"
            self.messages.append({"role": "tool", "tool_call_id": call.get("id", ""), "content": content})

    def _record_call(self, message: int, name: str, arguments: Any, result: Any, error: str | None) -> None:
        """One tool call in :attr:`tool_calls`, or only counted past :data:`MAX_CALL_RECORDS`."""
        if len(self.tool_calls) >= MAX_CALL_RECORDS:
            self.tool_calls_omitted += 1
            return
        self.tool_calls.append({"message": message, "name": name, "arguments": arguments, "result": result,
                                "error": error})

    def _kept(self, value: Any, text: str | None = None) -> Any:
        """A native call's payload as its record keeps it (as the sandbox keeps an action's: see
        :data:`KEEP_EPISODE_BYTES`). `text`: its JSON, if already made."""
        size = len((json.dumps(value, ensure_ascii=False) if text is None else text).encode("utf-8", "replace"))
        if size <= KEEP_PAYLOAD_BYTES and self.kept_bytes + size <= KEEP_EPISODE_BYTES:
            self.kept_bytes += size
            return value
        return payload_stub(value)

    # -- the end -------------------------------------------------------------------------------------
    def _end(self, reason: str) -> None:
        if not self.termination:
            self.termination = reason

    def _infra(self, kind: str, message: str) -> None:
        self.infra_error = {"kind": kind, "message": message[:2000]}
        self.termination = self.termination or "error"

    def _score(self) -> None:
        if self.infra_error is None and isinstance(self.scorer, TurnScorer):
            self.scoring = self.scorer.start(self)
            self.next_role = JUDGE  # finished when the scorer has its score (_judge_said)
            return
        if self.infra_error is None and self.scorer is not None:
            try:
                self.reward, self.evaluation = self.scorer(self)
            except InfraFailure as e:
                self._infra(e.kind, str(e))
        self.finish()

    def _judge_said(self, generation: Any) -> None:
        if generation.finish_reason == "error":
            self._infra("inference", "the judge model failed for this episode")
            self.finish()
            return
        score = self.scorer.receive(self, generation)
        if score is not None:
            self.reward, self.evaluation = score
            self.finish()

    # -- the record ----------------------------------------------------------------------------------
    def record(self, models: dict[str, Any]) -> dict[str, Any]:
        """The trajectory record (docs/TRAJECTORY.md), laid out for reading by hand
        (:func:`sca.records.schema.summary_first`): which trial and its outcome first, the
        conversation last."""
        tokens = {role: dict(t) for role, t in self.role_tokens.items()}
        judged = JUDGE in self.role_seconds  # the judge's share, only where a judge spoke
        return {
            "id": f"{self.task_id}#{self.trial}",
            "task_id": self.task_id,
            "trial": self.trial,
            "env": self.env.name,
            "reward": None if self.infra_error else self.reward,
            "termination": self.termination,
            "final_answer": self.final_answer,
            "answer": self.answer,
            "steps": self.steps,
            "infra_error": self.infra_error,
            "instruction": self.instruction,
            "evaluation": self.evaluation,
            "tool_calls_omitted": self.tool_calls_omitted,
            "action_format": self.config.action_format,
            "tokens": {"executor": tokens.get(AGENT, {"prompt": 0, "completion": 0}),
                       "user": tokens.get(USER, {"prompt": 0, "completion": 0}),
                       **({"judge": tokens[JUDGE]} if JUDGE in tokens else {})},
            "timings": {"generate_s": round(self.role_seconds.get(AGENT, 0.0), 3),
                        "user_s": round(self.role_seconds.get(USER, 0.0), 3),
                        "sandbox_s": round(self.sandbox_s, 3),
                        **({"judge_s": round(self.role_seconds[JUDGE], 3)} if judged else {}),
                        "total_s": round((self.ended or time.monotonic()) - self.started, 3)},
            "models": models,
            "messages": self.messages,
            "tool_calls": self.tool_calls,
            "assistant_token_ids": self.assistant_token_ids,
        }


def _after_thought(text: str) -> str:
    return parse_reply(text).text if "THOUGHT:" in text else text.strip()


def _try_json(raw: Any) -> Any:
    """Native tool-call arguments as JSON, or the raw text when they are no JSON a record can keep
    (malformed, or nested deeper than MAX_ARGS_DEPTH: a bomb that would crash whoever reads it)."""
    if not isinstance(raw, str):
        return raw if json_depth(raw, MAX_ARGS_DEPTH) <= MAX_ARGS_DEPTH else f"(arguments nested deeper than {MAX_ARGS_DEPTH} levels)"
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    return value if json_depth(value, MAX_ARGS_DEPTH) <= MAX_ARGS_DEPTH else raw


def drop_infra_failures(path: str) -> int:
    """Remove the trials recorded as infrastructure failures from an output file (so they run
    again), atomically; the number removed."""
    from sca.records.io import drop_lines

    return drop_lines(path, lambda r: r.get("reward") is None and bool(r.get("infra_error")))

