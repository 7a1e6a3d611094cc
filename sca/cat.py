"""The Code-as-Task checks of the CaT contract (``docs/CAT.md``), exactly: the one place they are
written, with their order and rejection reasons, for `sca validate`, `sca propose` and `sca report`.

For each task, in CAT.md's order, with the environment reset before every run:

1. ``compile``: every code string compiles, and the evaluation function
   defines ``evaluate()`` or ``evaluate(answer)``;
2. ``failure_case_count``: at least ``min_failure_cases`` failure cases;
3. ``noop_run``: on the untouched state ``evaluate`` returns False;
4. ``solution_run``: the solution runs without an uncaught exception, then
   ``evaluate`` returns True;
5. ``answer_round_trip``: if ``evaluate`` takes the answer, it still returns True
   for the solution's answer turned into the text an agent would write and back
   (:func:`sca.agent.reply.answer_from_text`): a task an executor could pass only by
   handing over a Python object is rejected (``answer_not_typeable``);
6. ``failure_case_runs``: each failure case runs (a ``ToolError`` escaping it
   is allowed, any other exception is not), then ``evaluate`` returns False.

Every ``evaluate`` call runs in a fresh namespace, may
call read tools only, must return a ``bool`` and finish in time; breaking any
of that fails the check in which it happened with its own reason.

The first failed check ends the validation; its reason and traceback are what
``sca propose`` feeds back to the challenger.

Those six are the checks of a ``cat`` task. Each task format (:mod:`sca.task_formats`) gets the
checks that fit its parts (:data:`CHECKS_OF_FORMAT`): an ``eval-only`` task ("SCA no filtering")
only ``compile``, an ``instruction-only`` one (PAE) only ``instruction``, that its instruction is
not empty. ``ValidateConfig.verification_only`` gives Figure 4's "verification only" for cat tasks:
the evaluation function and the solution, the failure cases left out entirely
(:data:`VERIFICATION_ONLY`), so a task with none passes.
"""

from __future__ import annotations

import ast
import json
import time
from dataclasses import dataclass, field
from typing import Any

from sandbox.config import SandboxConfig
from sca.agent.reply import answer_from_text, answer_to_text
from sca.task_formats import task_format

#: the checks of a cat task, in the order they run (the first that fails rejects the task)
CHECKS = ("compile", "failure_case_count", "noop_run", "solution_run", "answer_round_trip", "failure_case_runs")
#: the checks each task format gets, in the order they run
CHECKS_OF_FORMAT: dict[str, tuple[str, ...]] = {
    "cat": CHECKS,
    "eval-only": ("compile",),  # nothing filtered but that the code compiles and defines evaluate
    "instruction-only": ("instruction",),
}
#: a cat task's checks under ``verification_only`` (Figure 4): the evaluation function and the solution
VERIFICATION_ONLY = ("compile", "noop_run", "solution_run", "answer_round_trip")
#: every check any format runs: the instruction check, then the cat checks in their order
ALL_CHECKS = ("instruction",) + CHECKS

#: every rejection reason, with what it means (the summary and README use these)
REASONS: dict[str, str] = {
    "compile": "a code string does not compile, or the evaluation function defines no evaluate()",
    "failure_case_count": "fewer failure cases than required",
    "noop_passes": "evaluate() returns True on the untouched state (the task is trivial)",
    "solution_error": "the solution raised an uncaught exception",
    "solution_fails": "evaluate() returns False after the solution",
    "failure_case_error": "a failure case raised an exception other than ToolError",
    "failure_case_passes": "evaluate() returns True after a failure case",
    "evaluate_writes": "evaluate() called a write tool",
    "evaluate_not_bool": "evaluate() returned something other than a bool",
    "evaluate_error": "evaluate() raised an exception",
    "answer_not_typeable": "evaluate() accepts the solution's answer but not the same answer typed by an agent",
    "timeout": "a run went past the time limit",
    "sandbox_error": "the sandbox lost the run (crash, memory, killed worker)",
    "empty_instruction": "the instruction is empty",
    "lax_verifier": "a mutant of the solution leaves another final state and passes evaluate() (sca validate --audit)",
}


@dataclass
class ValidateConfig:
    """Options of `sca validate` (also used by `sca propose` for its answers): the sandbox
    (backend, workers, per-run timeout, memory and budgets) and the CaT rules on failure cases."""

    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    min_failure_cases: int = field(default=3, metadata={"help": "Failure cases a task must have.", "min": 0})
    verification_only: bool = field(default=False, metadata={"help": (
        "Figure 4's 'verification only': check cat tasks' evaluation function and solution (compile, "
        "noop_run, solution_run, answer_round_trip), not their failure cases, which may be none.")})
    audit: bool = field(default=False, metadata={"help": (
        "Also mutation-test each valid task's evaluate() (sca audit) and reject a lax one (lax_verifier).")})

    @property
    def timeout(self) -> float:
        return self.sandbox.timeout


# -- one task ---------------------------------------------------------------------------------


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str, traceback: str | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.traceback = reason, detail, traceback


def checks_of(fmt: str, config: ValidateConfig) -> tuple[str, ...]:
    """The checks a task of format `fmt` gets under `config`, in the order they run."""
    if fmt == "cat" and config.verification_only:
        return VERIFICATION_ONLY
    return CHECKS_OF_FORMAT[fmt]


def _check_compiles(task: dict[str, Any], failure_cases: bool) -> bool:
    """Every code string the checks run compiles (the failure cases' where `failure_cases`); returns
    whether evaluate takes the answer."""
    sources = [("evaluation_function", task["evaluation_function"])]
    if "solution" in task:
        sources.append(("solution", task["solution"]))
    if failure_cases:
        sources += [(f"failure_cases[{i}]", src) for i, src in enumerate(task["failure_cases"])]
    for name, src in sources:
        try:
            tree = ast.parse(src, filename=f"<{name}>")
            compile(tree, f"<{name}>", "exec")
        except SyntaxError as e:
            line = (e.text or "").rstrip()
            tb = f'  File "<{name}>", line {e.lineno}\n    {line}\n{type(e).__name__}: {e.msg}'
            raise _Rejected("compile", f"{name} does not compile: {e.msg} (line {e.lineno})", tb) from None
        except (ValueError, RecursionError, MemoryError) as e:
            raise _Rejected("compile", f"{name} does not compile: {type(e).__name__}: {e}") from None
        if name == "evaluation_function":
            takes_answer = _evaluate_signature(tree)
    return takes_answer


def _evaluate_signature(tree: ast.Module) -> bool:
    """Check that the module defines evaluate() or evaluate(answer); whether it takes the answer."""
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "evaluate"]
    if not defs:
        raise _Rejected("compile", "evaluation_function does not define evaluate() at top level")
    fn = defs[-1]
    if isinstance(fn, ast.AsyncFunctionDef):
        raise _Rejected("compile", "evaluate must be a plain function, not async")
    a = fn.args
    required = len(a.posonlyargs) + len(a.args) - len(a.defaults)
    if required > 1 or a.kwonlyargs and any(d is None for d in a.kw_defaults):
        raise _Rejected("compile", "evaluate must take no parameter or one (the answer)")
    return _takes_answer(a)


def _takes_answer(a: ast.arguments) -> bool:
    """Whether evaluate's parameters take the answer: a positional parameter, or *args."""
    return len(a.posonlyargs) + len(a.args) > 0 or a.vararg is not None


def evaluate_takes_answer(source: str) -> bool:
    """Whether the last top-level ``evaluate`` of `source` takes a parameter (the answer); SyntaxError if
    `source` does not compile, ValueError if it defines no evaluate."""
    defs = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "evaluate"]
    if not defs:
        raise ValueError("the evaluation function defines no evaluate()")
    return _takes_answer(defs[-1].args)


def _judge(env: Any, sandbox: Any, source: str, answer: Any, timeout: float, run_name: str,
           write_tools: set[str], runs: list[dict[str, Any]]) -> bool:
    """Run ``evaluate`` read-only after a run; return its verdict or reject the task."""
    res = sandbox.run(env, source, mode="evaluate", answer=answer, read_only=True, timeout=timeout,
                      keep_payloads=False)
    runs.append(_run_summary(f"evaluate after {run_name}", res))
    if res.status == "timeout":
        raise _Rejected("timeout", f"evaluate() after {run_name} ran past {timeout:g} s", res.traceback)
    if res.status == "sandbox_error":
        raise _Rejected("sandbox_error", f"evaluate() after {run_name}: {res.error}", res.traceback)
    writes = [c.name for c in res.tool_calls if c.name in write_tools]
    if writes or res.error_type == "WriteForbiddenError":
        name = writes[0] if writes else "a write tool"
        raise _Rejected("evaluate_writes", f"evaluate() after {run_name} called write tool {name}; it may only read",
                        res.traceback)
    if res.status != "ok":
        raise _Rejected("evaluate_error", f"evaluate() after {run_name} raised {res.error_type}: {res.error}",
                        res.traceback)
    if res.verdict is None:  # only a real JSON true or false is a verdict, whatever the type is named
        raise _Rejected("evaluate_not_bool",
                        f"evaluate() after {run_name} returned {res.value_type} {res.value!r:.80}, not a bool")
    return res.verdict


def _run_summary(name: str, res: Any) -> dict[str, Any]:
    out = {"run": name, "status": res.status, "seconds": round(res.duration_s, 4), "tool_calls": len(res.tool_calls)}
    if res.error_type:
        out["error"] = f"{res.error_type}: {res.error}"
    return out


def _exec(env: Any, sandbox: Any, source: str, timeout: float, run_name: str, allowed_errors: tuple[str, ...],
          error_reason: str, runs: list[dict[str, Any]]) -> Any:
    env.reset()
    res = sandbox.run(env, source, mode="exec", timeout=timeout, keep_payloads=False)
    runs.append(_run_summary(run_name, res))
    if res.status == "timeout":
        raise _Rejected("timeout", f"{run_name} ran past {timeout:g} s", res.traceback)
    if res.status == "sandbox_error":
        raise _Rejected("sandbox_error", f"{run_name}: {res.error}", res.traceback)
    if res.status != "ok" and res.error_type not in allowed_errors:
        raise _Rejected(error_reason, f"{run_name} raised {res.error_type}: {res.error}", res.traceback)
    return res.answer


def validate_task(task: dict[str, Any], env: Any, sandbox: Any, config: ValidateConfig | None = None) -> dict[str, Any]:
    """Apply the checks of the task's format (:func:`checks_of`) to one task; return its ``validation``
    object, which names the task's ``format`` and the ``check_set`` it was held to.

    `env` must be the task's environment; it is reset before every run.
    """
    config = config or ValidateConfig()
    fmt = task_format(task)
    plan = checks_of(fmt, config)
    started = time.monotonic()
    log = _Log(plan[0])
    try:
        if "instruction" in plan:
            if not task["instruction"].strip():
                raise _Rejected("empty_instruction", "the instruction is empty")
            log.passed()
        if "compile" in plan:
            log.current = "compile"
            takes_answer = _check_compiles(task, failure_cases="failure_case_runs" in plan)
            log.passed()
        if "solution_run" in plan:
            _run_code_checks(task, env, sandbox, config, plan, takes_answer, log)
    except _Rejected as r:
        log.checks.append({"check": log.current, "ok": False, "reason": r.reason, "detail": r.detail})
        return {
            "valid": False, "reason": r.reason, "failed_check": log.current, "detail": r.detail,
            "traceback": r.traceback, "format": fmt, "check_set": list(plan), "checks": log.checks,
            "runs": log.runs, "seconds": round(time.monotonic() - started, 4),
        }
    finally:
        env.reset()
    return {"valid": True, "reason": None, "format": fmt, "check_set": list(plan), "checks": log.checks,
            "runs": log.runs, "traceback": None, "seconds": round(time.monotonic() - started, 4)}


@dataclass
class _Log:
    """The check running now, the checks passed so far and every sandbox run."""

    current: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def passed(self, detail: str = "") -> None:
        self.checks.append({"check": self.current, "ok": True, **({"detail": detail} if detail else {})})


def _run_code_checks(task: dict[str, Any], env: Any, sandbox: Any, config: ValidateConfig, plan: tuple[str, ...],
                     takes_answer: bool, log: _Log) -> None:
    """The cat checks after compile that `plan` holds, in their order: those that run the code."""
    write_tools = {t.name for t in env.tools() if t.kind == "write"}
    evaluate_src = task["evaluation_function"]
    timeout, runs = config.timeout, log.runs

    if "failure_case_count" in plan:
        log.current = "failure_case_count"
        n = len(task["failure_cases"])
        if n < config.min_failure_cases:
            raise _Rejected("failure_case_count", f"{n} failure case(s); at least {config.min_failure_cases} required")
        log.passed(f"{n} failure cases")

    log.current = "noop_run"
    env.reset()
    if _judge(env, sandbox, evaluate_src, None, timeout, "no action", write_tools, runs):
        raise _Rejected("noop_passes", "evaluate() returns True on the untouched initial state")
    log.passed()

    log.current = "solution_run"
    answer = _exec(env, sandbox, task["solution"], timeout, "the solution", (), "solution_error", runs)
    if not _judge(env, sandbox, evaluate_src, answer, timeout, "the solution", write_tools, runs):
        raise _Rejected("solution_fails", "evaluate() returns False after the solution ran")
    log.passed()

    log.current = "answer_round_trip"  # the answer as an executor would give it (docs/CAT.md, "The answer")
    if not takes_answer or answer is None:
        log.passed("evaluate() takes no answer" if not takes_answer else "the solution gives no answer")
    else:
        text = answer_to_text(answer)
        typed = answer_from_text(text, env.user_facing)
        if canonical_json(typed) != canonical_json(answer) and not _judge(
                env, sandbox, evaluate_src, typed, timeout, "the solution, with its answer typed", write_tools, runs):
            raise _Rejected("answer_not_typeable",
                            f"evaluate() accepts the solution's answer {answer!r:.100} but not {typed!r:.100}, "
                            f"which an agent's reply {text!r:.100} becomes; an agent gives its answer as text "
                            "(docs/CAT.md, 'The answer')")
        log.passed("" if canonical_json(typed) == canonical_json(answer) else f"typed as {typed!r:.100}")

    if "failure_case_runs" in plan:
        log.current = "failure_case_runs"
        for i, src in enumerate(task["failure_cases"]):
            name = f"failure case {i}"
            answer = _exec(env, sandbox, src, timeout, name, ("ToolError",), "failure_case_error", runs)
            if _judge(env, sandbox, evaluate_src, answer, timeout, name, write_tools, runs):
                raise _Rejected("failure_case_passes", f"evaluate() returns True after failure case {i}")
        log.passed(f"{len(task['failure_cases'])} failure cases fail")


def canonical_json(value: Any) -> str:
    """JSON text that tells values apart by type as well (1, 1.0, True and "1" all differ); a value JSON
    cannot hold is told by its repr (`sca.audit` compares the answers of mutants with it too)."""
    def tag(v: Any) -> Any:
        if isinstance(v, bool) or v is None:
            return ["b", v]
        if isinstance(v, (int, float)):
            return ["n", type(v).__name__, v]
        if isinstance(v, list):
            return ["l", [tag(x) for x in v]]
        if isinstance(v, dict):
            return ["d", {k: tag(x) for k, x in v.items()}]
        return ["s", v]
    return json.dumps(tag(value), sort_keys=True, default=repr)


def feedback(validation: dict[str, Any]) -> str:
    """The validation verdict as text for the challenger (reason, detail, traceback)."""
    if validation["valid"]:
        return "The task is valid."
    lines = [f"The task is invalid: {REASONS.get(validation['reason'], validation['reason'])}.",
             validation.get("detail", "")]
    if validation.get("traceback"):
        lines += ["Traceback:", validation["traceback"].rstrip()]
    return "\n".join(x for x in lines if x)



#: the check in which each rejection reason arises (the evaluate_*, timeout and sandbox_error reasons
#: can arise in several: :func:`validate_task` records the check as ``failed_check``)
CHECK_OF_REASON = {
    "compile": "compile", "failure_case_count": "failure_case_count", "noop_passes": "noop_run",
    "solution_error": "solution_run", "solution_fails": "solution_run", "answer_not_typeable": "answer_round_trip",
    "failure_case_error": "failure_case_runs", "failure_case_passes": "failure_case_runs",
    "empty_instruction": "instruction", "lax_verifier": "failure_case_runs",
}
