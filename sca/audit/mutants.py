"""Mutation tests of a task's ``evaluate()``: does it tell its own solution from near variants?

The CaT checks (:mod:`sca.cat`) only ask that ``evaluate`` passes the solution and fails the
failure cases that the challenger itself wrote. A verifier that checks that an order is cancelled but
not the reason asked for passes them all, and then rewards an executor that cancels for the wrong
reason. This module looks for such holes with variants of the solution that the tools accept.

How a task is audited (:func:`audit_task`), with the environment reset before every run:

1. the solution runs in the sandbox, its tool calls recorded; ``evaluate()`` must pass it, else the
   task is skipped (``lax`` null);
2. its write calls that ran (the tools refused none of them), replayed as a straight-line program
   (``name(**args)`` lines, then ``answer = <the solution's answer>``), must reach the solution's own
   outcome, else the task is skipped: a replay that cannot stand for the solution proves nothing;
3. each mutant is that replay with one change (:func:`candidates`) and runs the way a failure case
   does: reset, run, then ``evaluate`` on the state it left. A mutant the tools refuse (a ToolError)
   is no mutant and is not counted; one that leaves the solution's outcome is no counterexample; one
   that leaves another outcome and still passes ``evaluate()`` is *accepted*: the verifier is lax.

The outcome is the environment's :meth:`~envs.base.Environment.state_hash` (where the state is what
a task asks for: :attr:`~envs.base.Environment.outcome_state`) and, where ``evaluate`` takes the
answer, the answer.

The mutants, kind by kind (each in the order of the solution's writes, then of the call's arguments):

* ``argument``: one argument of one write changed to another value the tool accepts, from
  :meth:`~envs.base.Environment.argument_alternatives` (another enum member, another id of the same
  kind that the same user owns), at most ``alternatives_per_argument`` per argument;
* ``answer``: the answer changed (a number one off, the numbers in a text one up, a text emptied or
  reversed, a list without its last item...), where ``evaluate`` takes the answer;
* ``dropped``: one write left out; ``swapped``: two different writes in each other's place (every
  pair, earlier first); ``repeated``: one write made twice in a row.

They are taken in turn, one of each kind (in the order above) per round, until ``max_mutants`` have
run or none is left: deterministic, and every kind is tried even when one kind alone has more.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sandbox.result import is_stub
from sca.audit.config import AuditConfig
from sca.cat import canonical_json, evaluate_takes_answer
from sca.metrics import (
    _quantile,  # the interpolation of every other interval of the toolkit
)
from sca.task_formats import task_format

#: the kinds of mutants, in the order each round of :func:`candidates` takes them
KINDS = ("argument", "answer", "dropped", "swapped", "repeated")
#: characters of one value in a mutant's words
_VALUE_CHARS = 60


# -- the mutants ----------------------------------------------------------------------------------------

Call = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Mutant:
    """One variant of the solution: its kind, its change in words, the writes it makes and its answer."""

    kind: str
    words: str
    calls: tuple[Call, ...]
    answer: Any

    @property
    def program(self) -> str:
        return replay_program(self.calls, self.answer)


def replay_program(calls: Sequence[Call], answer: Any) -> str:
    """The straight-line program that makes `calls` in order, then sets `answer` (None where the solution
    set none). Arguments and answer are JSON values, whose ``repr`` is a Python literal of the same value."""
    return "".join(f"{name}(**{args!r})\n" for name, args in calls) + f"answer = {answer!r}\n"


def _value(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= _VALUE_CHARS else text[:_VALUE_CHARS - 3] + "..."


def describe_call(call: Call) -> str:
    """``name(arg=value, ...)``, each value as JSON cut to a few dozen characters."""
    name, args = call
    return f"{name}({', '.join(f'{k}={_value(v)}' for k, v in args.items())})"


def answer_alternatives(answer: Any) -> list[Any]:
    """Answers near `answer` but not it: what an executor that got the answer slightly wrong would say."""
    if isinstance(answer, bool):
        return [not answer]
    if isinstance(answer, int):
        return [answer + 1, answer - 1]
    if isinstance(answer, float):
        if not math.isfinite(answer):
            return []
        return [answer + max(1.0, abs(answer) * 0.1)]
    if isinstance(answer, str):
        out = []
        if re.search(r"\d", answer):  # "You have 3 orders." -> "You have 4 orders."
            out.append(re.sub(r"\d+", lambda m: str(int(m.group()) + 1), answer))
        elif answer[::-1] != answer:
            out.append(answer[::-1])
        if answer.strip():
            out.append("")
        return out
    if isinstance(answer, list) and answer:
        out = [answer[:-1]]
        if answer[::-1] != answer:
            out.append(answer[::-1])
        return out
    if isinstance(answer, dict) and answer:
        last = list(answer)[-1]
        return [{k: v for k, v in answer.items() if k != last}]
    return []


def candidates(env: Any, writes: Sequence[Call], answer: Any, takes_answer: bool,
               config: AuditConfig) -> list[Mutant]:
    """Every mutant of the solution's `writes` and `answer` to run, in the order they run, at most
    ``config.max_mutants`` (see the module). `env` answers the argument alternatives: it should be in
    its initial state."""
    writes = [(name, dict(args)) for name, args in writes]
    per_arg = config.alternatives_per_argument
    by_kind: dict[str, list[Mutant]] = {k: [] for k in KINDS}
    n = len(writes)
    if env.outcome_state:
        for i, (name, args) in enumerate(writes):
            where = f"write {i + 1}: {name}"
            alternatives = env.argument_alternatives(name, args)
            for arg, old in args.items():
                for value in alternatives.get(arg, [])[:per_arg]:
                    changed = writes[:i] + [(name, {**args, arg: value})] + writes[i + 1:]
                    by_kind["argument"].append(Mutant(
                        "argument", f"changed {where}({arg}={_value(old)} -> {_value(value)})", tuple(changed), answer))
            by_kind["dropped"].append(Mutant(
                "dropped", f"dropped write {i + 1}: {describe_call(writes[i])}", tuple(writes[:i] + writes[i + 1:]),
                answer))
            by_kind["repeated"].append(Mutant(
                "repeated", f"repeated write {i + 1}: {describe_call(writes[i])}",
                tuple(writes[:i + 1] + [writes[i]] + writes[i + 1:]), answer))
        for i in range(n):
            for j in range(i + 1, n):
                if canonical_json(list(writes[i])) == canonical_json(list(writes[j])):
                    continue  # the same call twice: swapping them changes nothing
                swapped = list(writes)
                swapped[i], swapped[j] = swapped[j], swapped[i]
                by_kind["swapped"].append(Mutant(
                    "swapped", f"swapped writes {i + 1} and {j + 1}: {describe_call(writes[j])} before "
                    f"{describe_call(writes[i])}", tuple(swapped), answer))
    if takes_answer:
        for other in answer_alternatives(answer)[:per_arg]:
            by_kind["answer"].append(Mutant("answer", f"answer changed: {_value(answer)} -> {_value(other)}",
                                            tuple(writes), other))
    out: list[Mutant] = []
    queues = [list(by_kind[k]) for k in KINDS]
    while len(out) < config.max_mutants and any(queues):
        for queue in queues:
            if queue and len(out) < config.max_mutants:
                out.append(queue.pop(0))
    return out


# -- one task ------------------------------------------------------------------------------------------------


class _Skip(Exception):
    """The task cannot be audited: the message says why."""


def _outcome(env: Any, answer: Any, takes_answer: bool) -> tuple[str, str]:
    return (env.state_hash() if env.outcome_state else "", canonical_json(answer) if takes_answer else "")


def _passes(env: Any, sandbox: Any, source: str, answer: Any, timeout: float) -> bool:
    """Whether ``evaluate`` returns True (a real bool) on the current state; anything else is a no."""
    res = sandbox.run(env, source, mode="evaluate", answer=answer, read_only=True, timeout=timeout,
                      keep_payloads=False)
    return res.verdict is True


def _solution_writes(env: Any, res: Any) -> list[Call]:
    """The write calls of a run that ran (the tools refused none), in order, with their arguments."""
    writes = []
    kinds = {t.name: t.kind for t in env.tools()}
    for call in res.tool_calls:
        if call.error is not None or kinds.get(call.name) != "write":
            continue
        if not isinstance(call.args, dict) or is_stub(call.args):
            raise _Skip(f"the arguments of the solution's {call.name} call were too large to keep for a replay")
        writes.append((call.name, call.args))
    return writes


def audit_task(task: dict[str, Any], env: Any, sandbox: Any, config: AuditConfig | None = None) -> dict[str, Any]:
    """Mutation-test one task's ``evaluate()`` (see the module); return its ``audit`` object:
    ``{"mutants", "accepted", "lax", ...}``, or with ``lax`` null and ``skipped`` (why) where the task
    cannot be audited. `env` must be the task's environment; it is reset before every run, and after."""
    config = config or AuditConfig()
    started = time.monotonic()
    timeout = config.sandbox.timeout
    counts = {"tried": 0, "refused": 0, "unchanged": 0, "errors": 0}
    accepted: list[str] = []
    mutants = 0
    try:
        source, solution = task.get("evaluation_function"), task.get("solution")
        if not isinstance(source, str) or not source.strip():
            raise _Skip(f"no evaluation function to audit (format {task_format(task)})")
        if not isinstance(solution, str) or not solution.strip():
            raise _Skip(f"no solution to mutate (format {task_format(task)})")
        try:
            takes_answer = evaluate_takes_answer(source)
        except (SyntaxError, ValueError, RecursionError) as e:
            raise _Skip(f"the evaluation function cannot be read: {type(e).__name__}: {e}") from None

        env.reset()
        res = sandbox.run(env, solution, mode="exec", timeout=timeout, keep_payloads=True)
        if not res.ok:
            raise _Skip(f"the solution failed: {res.error_type}: {res.error}"[:300])
        answer = res.answer
        writes = _solution_writes(env, res)
        target = _outcome(env, answer, takes_answer)
        if not _passes(env, sandbox, source, answer, timeout):
            raise _Skip("evaluate() does not pass the solution")

        env.reset()
        replay = sandbox.run(env, replay_program(writes, answer), mode="exec", timeout=timeout,
                             keep_payloads=False)
        if not replay.ok or _outcome(env, answer, takes_answer) != target:
            raise _Skip("the solution's write calls, replayed, do not reach the solution's final state")

        env.reset()
        for mutant in candidates(env, writes, answer, takes_answer, config):
            env.reset()
            counts["tried"] += 1
            run = sandbox.run(env, mutant.program, mode="exec",
                              timeout=timeout, keep_payloads=False)
            if run.status == "error" and run.error_type == "ToolError":
                counts["refused"] += 1  # the tools refuse it: an executor could not have done this
                continue
            if not run.ok:
                counts["errors"] += 1
                continue
            mutants += 1
            if _outcome(env, mutant.answer, takes_answer) == target:
                counts["unchanged"] += 1
                continue
            if _passes(env, sandbox, source, mutant.answer, timeout):
                accepted.append(mutant.words)
    except _Skip as why:
        return {"mutants": 0, "accepted": [], "lax": None, "skipped": str(why),
                "seconds": round(time.monotonic() - started, 4)}
    finally:
        env.reset()
    return {"mutants": mutants, "accepted": accepted, "lax": bool(accepted), **counts,
            "seconds": round(time.monotonic() - started, 4)}


#: the rejection reason of `sca validate --audit` (sca.cat.REASONS has its meaning)
LAX_REASON = "lax_verifier"
#: the check a lax verifier fails: its mutants are failure cases the audit writes (the report's funnel places
#: the rejection there)
LAX_CHECK = "failure_case_runs"


def reject_if_lax(validation: dict[str, Any], audit: dict[str, Any]) -> dict[str, Any]:
    """`sca validate --audit`: the `validation` of a valid task, turned into a rejection (reason
    :data:`LAX_REASON`, at :data:`LAX_CHECK`) where its `audit` found the verifier lax; else unchanged."""
    if not validation.get("valid") or audit.get("lax") is not True:
        return validation
    n = len(audit["accepted"])
    detail = (f"{n} of {audit['mutants']} mutant(s) of the solution leave another final state and still pass "
              f"evaluate(): {'; '.join(audit['accepted'][:3])}{' ...' if n > 3 else ''}")
    return {**validation, "valid": False, "reason": LAX_REASON, "failed_check": LAX_CHECK, "detail": detail,
            "checks": [*validation.get("checks", []),
                       {"check": LAX_CHECK, "ok": False, "reason": LAX_REASON, "detail": detail}]}


# -- rates over many tasks ---------------------------------------------------------------------------------


def bootstrap(rows: Sequence[Any], statistic: Callable[[Sequence[Any]], float | None], n_boot: int, seed: int,
              confidence: float = 0.95) -> list[float] | None:
    """``[estimate, low, high]``: `statistic` of `rows` and its percentile bootstrap interval (rows drawn
    with replacement, ``random.Random(seed)``; a draw where the statistic is undefined, None, is left
    out). None where the statistic of `rows` itself is undefined."""
    estimate = statistic(rows)
    if estimate is None:
        return None
    rng = random.Random(seed)
    m = len(rows)
    reps = []
    for _ in range(n_boot):
        value = statistic([rows[i] for i in rng.choices(range(m), k=m)])
        if value is not None:
            reps.append(value)
    reps.sort()
    alpha = 1.0 - confidence
    return [estimate, _quantile(reps, alpha / 2), _quantile(reps, 1 - alpha / 2)]


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def lax_rates(records: Iterable[dict[str, Any]], n_boot: int = 2000, seed: int = 0,
              confidence: float = 0.95) -> dict[str, Any]:
    """The lax rate per pool (each task format) and over all: ``{"by_format": {FORMAT: {"tasks", "audited",
    "skipped", "lax", "mutants", "lax_rate": [estimate, low, high] or null}}, "all": {...}, "n_boot", "seed",
    "confidence"}``, over the records that carry an ``audit`` (``audited``: those with a verdict)."""
    pools: dict[str, list[dict[str, Any]]] = {}
    everything: list[dict[str, Any]] = []
    for record in records:
        audit = record.get("audit")
        if isinstance(audit, dict):
            pools.setdefault(task_format(record), []).append(audit)
            everything.append(audit)

    def pool(audits: list[dict[str, Any]]) -> dict[str, Any]:
        flags = [1.0 if a["lax"] else 0.0 for a in audits if a.get("lax") in (True, False)]
        return {"tasks": len(audits), "audited": len(flags), "skipped": len(audits) - len(flags),
                "lax": int(sum(flags)), "mutants": sum(a.get("mutants", 0) for a in audits),
                "lax_rate": bootstrap(flags, _mean, n_boot, seed, confidence)}

    return {"by_format": {fmt: pool(audits) for fmt, audits in sorted(pools.items())}, "all": pool(everything),
            "n_boot": n_boot, "seed": seed, "confidence": confidence}
