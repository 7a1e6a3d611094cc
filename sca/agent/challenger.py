"""The challenger: an agent that explores an environment and writes Code-as-Task tasks (``sca propose``).

One episode, as in the paper: the challenger gets the environment (tools,
policy, and for TauBench domains a user id to write a task for), and on every
turn writes ``THOUGHT: ... END THOUGHT`` and then either

* ``ACTION: <python> END ACTION``: the code calls tools in the sandbox against
  the episode's own scratch state; the observation is what it printed, the
  value of ``answer``, or the error and traceback; or
* ``ANSWER: <instruction> <evaluation_function> <solution> <failure_case>x3
  END ANSWER``: the task is checked at once (:class:`AnswerCheck`: ``sca propose`` gives
  exactly the checks of ``sca validate``); if it fails, the reason and traceback go back to
  the challenger to revise.

The task format (``ChallengerConfig.task_format``, :mod:`sca.task_formats`) decides what the
ANSWER holds and what it is checked for: ``cat`` as above; ``eval-only`` ("SCA no filtering") the
instruction and the evaluation function, checked only to compile; ``instruction-only`` (PAE) the
instruction alone. The challenger explores the same way in each, and each record names its format
and holds that format's parts only.

The episode ends at a valid task or after ``max_steps`` turns. Episodes run on the
shared episode engine (:mod:`sca.agent.engine`): every step, each live episode's next turn
is generated in one batched call. :func:`run_challenger` hands each finished episode's record
over as it finishes, and stops when ``n`` tasks are valid or ``max_episodes`` have run.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from sca.agent.config import ChallengerConfig
from sca.agent.engine import Episode, Role, engine_seed, run_episodes
from sca.agent.reply import (
    STOP,
    TaskParts,
    _tagged,  # the tag reader of parse_task, for the formats with fewer parts
    clean_code,
    complete_reply,
    format_observation,
    parse_reply,
    parse_task,
    tool_listing,
)
from sca.records.schema import FAILED_EPISODE_KIND
from sca.task_formats import DEFAULT_FORMAT, FORMAT_PARTS

#: the challenger's role in the engine
CHALLENGER = "challenger"


@dataclass(frozen=True)
class AnswerCheck:
    """How a challenger's answer is judged: `validate(task, env, sandbox)` gives its validation record
    (``valid``, ``reason``, ...), `feedback(validation)` what the challenger is told of a failed one."""

    validate: Callable[[dict[str, Any], Any, Any], dict[str, Any]]
    feedback: Callable[[dict[str, Any]], str]


# -- the prompt -----------------------------------------------------------------------------------

_EXPLORE = """\
Every reply is a THOUGHT followed by exactly one ACTION or one ANSWER.

To explore or to try code:

THOUGHT: what you want to learn or check END THOUGHT
ACTION:
<Python code; the tools are functions; print what you want to see>
END ACTION

The code runs against a scratch copy of the environment that keeps your changes until your
answer is checked. You see what it printed, the value of `answer` if it set one, or the error.

"""

FORMAT = _EXPLORE + """\
When your task works, reply:

THOUGHT: why the task is sound END THOUGHT
ANSWER:
<instruction>the request, written as the user would say it</instruction>
<evaluation_function>
def evaluate():
    # read-only tool calls; return True only if the task was done exactly
    ...
</evaluation_function>
<solution>
Python code that does the task (set `answer = ...` if the task asks a question)
</solution>
<failure_case>
Python code of a plausible near miss that evaluate() must reject
</failure_case>
<failure_case>...</failure_case>
<failure_case>...</failure_case>
END ANSWER

If the task asks a question, define `evaluate(answer)` instead: it receives the value the
solution (or a failure case) left in `answer`. An agent will type its answer as text: a number,
a word, or a JSON list or object, read back as that value; in customer-service environments the
answer is the agent's last message to the customer, as text. evaluate(answer) must accept the
solution's answer in that form.
"""

#: the reply format of an eval-only challenger ("SCA no filtering"): the instruction and evaluate() only
FORMAT_EVAL_ONLY = _EXPLORE + """\
When your task is ready, reply:

THOUGHT: why the task is sound END THOUGHT
ANSWER:
<instruction>the request, written as the user would say it</instruction>
<evaluation_function>
def evaluate():
    # read-only tool calls; return True only if the task was done exactly
    ...
</evaluation_function>
END ANSWER

If the task asks a question, define `evaluate(answer)` instead: it receives the agent's answer.
An agent types its answer as text: a number, a word, or a JSON list or object, read back as that
value; in customer-service environments the answer is the agent's last message to the customer,
as text.
"""

#: the reply format of an instruction-only challenger (PAE): the instruction alone
FORMAT_INSTRUCTION_ONLY = _EXPLORE + """\
When your task is ready, reply:

THOUGHT: why the task is sound END THOUGHT
ANSWER:
<instruction>the request, written as the user would say it</instruction>
END ANSWER
"""

RULES = """\
Rules:
- Give at least three failure cases: realistic mistakes (a wrong item, a wrong value, a missing step).
- evaluate() may only read: calling a tool that changes the state makes the task invalid.
- evaluate() must return False before anything is done, True after the solution, False after
  every failure case. The environment is reset before each of these runs.
- A tool that refuses raises ToolError with its message; a failure case may end on a ToolError.
"""

RULES_EVAL_ONLY = """\
Rules:
- evaluate() may only read: inside it, a tool that changes the state raises an error.
- evaluate() must return False before anything is done, and True only once the task is done
  exactly: an agent's attempt is scored by it alone.
"""

RULES_INSTRUCTION_ONLY = """\
Rules:
- The task must be doable with the tools, and what counts as done must be plain from the
  instruction: a reader of the agent's attempt will judge from it whether the task was done.
"""

_TAU_HEAD = """\
- Write the task for the user given below. First look up that user's details and orders
  (or reservations) with the tools.
- Invent nothing: every id, item, option, price or field in your task must come from what
  the tools showed you.
"""
_TAU_TAIL = "- The instruction is what the user tells the agent; the agent must follow the policy above.\n"
#: the rules of environments with a user, for each format: its line on trying the task before answering
TAU_RULES_OF_FORMAT = {
    "cat": _TAU_HEAD + "- Before answering, run your solution and your evaluation function yourself in an ACTION.\n"
    + _TAU_TAIL,
    "eval-only": _TAU_HEAD + "- Before answering, do the task yourself in an ACTION and run your evaluation function "
    "after it.\n" + _TAU_TAIL,
    "instruction-only": _TAU_HEAD + "- Before answering, check with the tools that the task can be done.\n" + _TAU_TAIL,
}
TAU_RULES = TAU_RULES_OF_FORMAT["cat"]

#: each format's words for what the challenger writes, its reply format and its rules
_PROMPTS = {
    "cat": ("written as code: an instruction, an evaluation function, a solution and failure cases", FORMAT, RULES),
    "eval-only": ("written as code: an instruction and an evaluation function", FORMAT_EVAL_ONLY, RULES_EVAL_ONLY),
    "instruction-only": ("written as an instruction", FORMAT_INSTRUCTION_ONLY, RULES_INSTRUCTION_ONLY),
}


def context_lines(context: dict[str, Any], skip: str = "") -> str:
    """The episode's assignment (the sampled user, domain...) as text; `skip` drops a value said elsewhere."""
    lines = []
    if "user_id" in context:
        lines.append(f"Write a task for the user with user id {context['user_id']}.")
    for k, v in context.items():
        if k == "user_id" or (skip and v == skip):
            continue
        if isinstance(v, (list, tuple)):
            v = ", ".join(str(x) for x in v)
        lines.append(f"{k.replace('_', ' ')}: {v}")
    return "\n".join(lines)


def challenger_prompt(env: Any, context: dict[str, Any], task_format: str = DEFAULT_FORMAT) -> str:
    """The system prompt of one challenger episode writing tasks of `task_format`."""
    written, reply_format, format_rules = _PROMPTS[task_format]
    parts = [
        "You are the challenger. Explore a tool environment by calling its tools, then invent one "
        f"new, realistic, verifiable task for an agent that uses the same tools, {written}.",
        f"# Environment: {env.name}\n{env.description}",
        "# Tools\nEach tool is a Python function (keyword or positional arguments). It returns "
        "plain JSON values (dicts, lists, strings, numbers).\n\n" + tool_listing(env),
    ]
    if env.policy.strip():
        parts.append(f"# Policy the agent must follow\n{env.policy.strip()}")
    guidance = env.challenger_guidance
    rules = (format_rules + (TAU_RULES_OF_FORMAT[task_format] if env.user_facing else "")
             + (f"- {guidance.strip()}\n" if guidance else ""))
    parts.append("# How to reply\n" + reply_format + "\n" + rules)
    ctx = context_lines(context, skip=guidance)
    if ctx:
        parts.append(f"# Your assignment\n{ctx}")
    return "\n\n".join(parts)


def first_user_message(max_steps: int) -> str:
    return f"Begin. You have {max_steps} replies in all; explore first, then answer."


# -- a turn ------------------------------------------------------------------------------------------


@dataclass
class Turn:
    """A challenger reply as the challenger's protocol reads it."""

    kind: str  # "action" | "answer" | "invalid"
    thought: str = ""
    code: str = ""  # action
    task: dict[str, Any] | None = None  # answer: the parts of its format (instruction, evaluation_function, ...)
    error: str = ""  # invalid: what is wrong with the format


def parse_answer(body: str, task_format: str = DEFAULT_FORMAT) -> TaskParts:
    """The parts of `task_format` in an ANSWER body (tags of other parts are ignored), or what is missing."""
    if task_format == "cat":
        return parse_task(body)
    names = FORMAT_PARTS[task_format]
    found = {name: _tagged(body, name) for name in names}
    missing = [name for name in names if not found[name]]
    if missing:
        return TaskParts(error="the ANSWER lacks " + ", ".join(f"<{m}>" for m in missing))
    task = {"instruction": " ".join(found["instruction"][0].split())}
    if "evaluation_function" in names:
        task["evaluation_function"] = clean_code(found["evaluation_function"][0])
    return TaskParts(task)


def parse_turn(text: str, task_format: str = DEFAULT_FORMAT) -> Turn:
    """A challenger reply: an ACTION to run, an ANSWER with the parts of `task_format`, or a format error."""
    reply = parse_reply(text)
    if reply.kind == "action":
        if reply.error:
            return Turn("invalid", reply.thought, error=reply.error)
        return Turn("action", reply.thought, code=reply.code)
    if reply.kind == "answer":
        parts = parse_answer(reply.body, task_format)
        if parts.error:
            return Turn("invalid", reply.thought, error=parts.error)
        return Turn("answer", reply.thought, task=parts.task)
    return Turn("invalid", reply.thought, error="the reply has neither an ACTION nor an ANSWER")


def normalise(instruction: str) -> str:
    """The form in which two instructions count as the same (case, spaces, punctuation)."""
    return " ".join(re.sub(r"[^\w\s]", " ", instruction.lower()).split())


# -- one episode ------------------------------------------------------------------------------------


@dataclass(eq=False)
class ChallengerEpisode(Episode):
    """One challenger episode on the engine: explore with ACTIONs, answer, revise until valid."""

    index: int = 0
    env: Any = None
    context: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    config: ChallengerConfig | None = None
    check: AnswerCheck | None = None
    sandbox: Any = None
    steps: int = 0
    status: str = "running"  # running | valid | failed
    reason: str = ""
    task: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    sandbox_s: float = 0.0
    turn: Turn | None = None  # received, waiting for act()

    def seed_key(self) -> str:
        return f"{self.env.name}-e{self.index}"

    def conversation(self) -> list[dict[str, str]]:
        return self.messages

    def receive(self, generation: Any) -> None:
        if generation.finish_reason == "context":
            self._end("failed", "context_limit")
            return
        self.steps += 1
        self.messages.append({"role": "assistant", "content": complete_reply(generation.text)})
        self.turn = parse_turn(generation.text, self.config.task_format)

    def fail(self, kind: str, message: str) -> None:
        self.attempts.append({"step": self.steps, "kind": "error", "error": message})
        self._end("failed", f"{kind}_error")

    def _end(self, status: str, reason: str = "") -> None:
        self.status, self.reason = status, reason
        self.finish()

    def act(self) -> None:
        """Run the action or check the answer; extend the transcript."""
        turn, self.turn = self.turn, None
        if turn is None:
            return
        config = self.config
        t0 = time.monotonic()
        left = config.max_steps - self.steps
        if turn.kind == "invalid":
            obs = (f"FORMAT ERROR: {turn.error}. Reply with THOUGHT ... END THOUGHT, then ACTION ... END ACTION "
                   "or ANSWER ... END ANSWER.")
            self.attempts.append({"step": self.steps, "kind": "invalid", "error": turn.error})
        elif turn.kind == "action":
            res = self.sandbox.run(self.env, turn.code, mode="exec", keep_payloads=False)
            obs = format_observation(res, config.observation_limit)
            self.attempts.append({"step": self.steps, "kind": "action", "status": res.status,
                                  "tool_calls": len(res.tool_calls)})
        else:
            task = {"id": f"episode-{self.index}", "env": self.env.name, "format": config.task_format,
                    **(turn.task or {})}
            validation = self.check.validate(task, self.env, self.sandbox)
            self.attempts.append({"step": self.steps, "kind": "answer", "valid": validation["valid"],
                                  "reason": validation["reason"]})
            self.task, self.validation = task, validation
            self.sandbox_s += time.monotonic() - t0
            if validation["valid"]:
                self._end("valid")
                return
            obs = ("VALIDATION: " + self.check.feedback(validation)
                   + "\nThe environment was reset. Revise the task and answer again.")
        self.sandbox_s += time.monotonic() - t0
        if left <= 0:
            self._end("failed", "invalid_answer" if self.task else "max_steps")
            return
        self.messages.append({"role": "user", "content": f"{obs}\n\n({left} replies left)"})


def episode_id(env: str, seed: int, index: int) -> str:
    return f"{env}-s{seed}-e{index:05d}"


def _episode_meta(ep: ChallengerEpisode, model_info: dict[str, Any], prompt_sha: str,
                  **extra: Any) -> dict[str, Any]:
    """The episode's account (``meta`` of its record): who, how long, what it cost; its transcript last."""
    tokens = ep.role_tokens.get(CHALLENGER, {"prompt": 0, "completion": 0})
    return {
        "source": "sca propose",
        "status": ep.status,
        **({"reason": ep.reason} if ep.reason else {}),
        "model": model_info.get("model") or model_info.get("name"),
        "episode": ep.index,
        "context": ep.context,
        **extra,
        "steps": ep.steps,
        "attempts": ep.attempts,
        "tokens": dict(tokens),
        "timings": {"generate_s": round(ep.role_seconds.get(CHALLENGER, 0.0), 3),
                    "sandbox_s": round(ep.sandbox_s, 3),
                    "total_s": round((ep.ended or time.monotonic()) - ep.started, 3)},
        "system_prompt_sha256": prompt_sha,
        "transcript": ep.messages[1:],  # the system prompt is the same for every episode but its assignment
    }


def task_record(ep: ChallengerEpisode, config: ChallengerConfig, model_info: dict[str, Any],
                prompt_sha: str) -> dict[str, Any]:
    """The task record of an episode that ended on a valid task: its format's parts, no more."""
    task = ep.task or {}
    original = task.get("instruction", "")
    instruction = ep.env.finalize_instruction(original)
    record = {
        "id": episode_id(ep.env.name, config.seed, ep.index),
        "env": ep.env.name,
        "format": config.task_format,
        "instruction": instruction,
    }
    for part in FORMAT_PARTS[config.task_format][1:]:
        record[part] = task.get(part, [] if part == "failure_cases" else "")
    if ep.validation is not None:
        record["validation"] = ep.validation
    record["meta"] = _episode_meta(ep, model_info, prompt_sha,
                                   **({"original_instruction": original} if original != instruction else {}))
    return record


def failed_episode_record(ep: ChallengerEpisode, config: ChallengerConfig, model_info: dict[str, Any],
                          prompt_sha: str) -> dict[str, Any]:
    """The record of an episode that ended without a valid task (docs/CAT.md, "Failed episodes";
    :data:`sca.records.schema.FAILED_EPISODE`): why, in a line a reader sees first; the last answer it
    gave, as it gave it, and that answer's validation, when it gave one; its account and transcript last.
    No task fields: it is no task, and nothing downstream should take it for one."""
    record: dict[str, Any] = {
        "kind": FAILED_EPISODE_KIND,
        "id": episode_id(ep.env.name, config.seed, ep.index),
        "env": ep.env.name,
        "format": config.task_format,
        "reason": ep.reason or "unknown",
        "steps": ep.steps,
    }
    if ep.task is not None:
        record["last_answer"] = {k: v for k, v in ep.task.items() if k in FORMAT_PARTS[config.task_format]}
    if ep.validation is not None:
        record["validation"] = ep.validation
    record["meta"] = _episode_meta(ep, model_info, prompt_sha)
    return record


# -- a run of episodes ----------------------------------------------------------------------------------


def run_challenger(
    config: ChallengerConfig,
    model: Any,
    sandbox: Any,
    check: AnswerCheck,
    *,
    on_finished: Callable[[str, dict[str, Any]], None],
    counts: Counter | None = None,
    skip_indices: set[int] = frozenset(),  # type: ignore[assignment]
    already_valid: int = 0,
    seen_instructions: set[str] | None = None,
) -> Counter:
    """Run challenger episodes until `config.n` tasks are valid or the episode budget is spent.

    `on_finished(role, record)` receives each finished episode: role ``"accepted"``
    for a new valid task, ``"rejected"`` otherwise (failed, or a duplicate: an instruction
    whose :func:`normalise` form is in `seen_instructions` or was accepted before). `counts`
    (the stage run's counts, returned) is where every figure is kept; `skip_indices`: the
    episodes an earlier run finished; `already_valid`: the valid tasks it wrote.
    """
    from envs import env_spec

    counts = Counter() if counts is None else counts
    counts["resumed_valid"] = already_valid
    seen = set(seen_instructions or ())
    spec = env_spec(config.env)
    model_info = model.info()
    state = {"valid": already_valid, "next": 0, "started": len(skip_indices), "live": 0}
    prompt_shas: dict[int, str] = {}
    t_start = time.monotonic()

    def next_episode() -> ChallengerEpisode | None:
        if state["valid"] + state["live"] >= config.n or state["started"] >= config.episode_budget:
            return None
        while state["next"] in skip_indices:
            state["next"] += 1
        idx = state["next"]
        state["next"] += 1
        state["started"] += 1
        state["live"] += 1
        env = spec.make()
        context = env.challenger_context(random.Random(config.seed * 1_000_003 + idx))
        system = challenger_prompt(env, context, config.task_format)
        prompt_shas[idx] = hashlib.sha256(system.encode()).hexdigest()
        return ChallengerEpisode(next_role=CHALLENGER, index=idx, env=env, context=context, config=config,
                                 check=check, sandbox=sandbox,
                                 messages=[{"role": "system", "content": system},
                                           {"role": "user", "content": first_user_message(config.max_steps)}])

    def finish(ep: ChallengerEpisode) -> None:
        state["live"] -= 1
        counts["episodes"] += 1
        tokens = ep.role_tokens.get(CHALLENGER, {})
        counts["prompt_tokens"] += tokens.get("prompt", 0)
        counts["completion_tokens"] += tokens.get("completion", 0)
        counts["generate_s"] += ep.role_seconds.get(CHALLENGER, 0.0)
        counts["sandbox_s"] += ep.sandbox_s
        make = task_record if ep.status == "valid" else failed_episode_record
        record = make(ep, config, model_info, prompt_shas.pop(ep.index))
        if ep.status == "valid":
            key = normalise(record["instruction"])
            if key in seen:
                counts["duplicates"] += 1
                counts["reason:duplicate"] += 1
                record["meta"]["status"] = "duplicate"
                on_finished("rejected", record)
                return
            seen.add(key)
            state["valid"] += 1
            on_finished("accepted", record)
        else:
            counts["failed"] += 1
            reason = ep.reason if ep.reason != "invalid_answer" else f"invalid_answer:{ep.validation['reason']}"
            counts[f"reason:{reason}"] += 1
            on_finished("rejected", record)

    role = Role(CHALLENGER, model, config.model.sampling(stop=STOP))
    run_episodes(next_episode, {CHALLENGER: role}, concurrency=config.concurrency, on_finish=finish,
                 workers=max(1, getattr(sandbox, "workers", 1)), seed=engine_seed(config.seed))
    counts["seconds"] = time.monotonic() - t_start
    return counts
