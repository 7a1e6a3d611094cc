"""`sca validate`: every CaT check on hand-written retail and airline tasks, on each sandbox backend."""

from __future__ import annotations

import json

import pytest
from _sandbox_util import backend_or_skip, unavailable

from cat_sets import ALL_TASKS, ORDER, RETAIL_TASKS, cat, write_jsonl
from sandbox.config import SandboxConfig
from sca.cat import CHECKS, REASONS, ValidateConfig, feedback, validate_task
from stages.validate import validate_file

BACKENDS = ["bwrap", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture(scope="module", params=BACKENDS)
def sandbox(request):
    from sandbox import Sandbox, SandboxUnavailable

    backend_or_skip(request.param)
    try:
        sb = Sandbox(SandboxConfig(backend=request.param, workers=1, timeout=2.0))
    except SandboxUnavailable as e:  # e.g. a Docker image built from an older runner
        unavailable(request.param, e)
    with sb:
        yield sb


def test_a_backend_ci_requires_fails_where_it_cannot_run(monkeypatch):
    """The rule of the fixture above and of every sandbox test: a backend that cannot run skips, unless
    $SCA_TEST_REQUIRE (set by CI) names it: then the test fails, so a broken sandbox never passes as skips."""
    import sandbox
    from sandbox import SandboxUnavailable

    def outcome(give_up, *args):  # how the calling test would end
        try:
            give_up(*args)
        except (pytest.skip.Exception, pytest.fail.Exception) as e:
            return "fail" if isinstance(e, pytest.fail.Exception) else "skip", e.msg
        return None

    def cannot(name):
        raise SandboxUnavailable("bubblewrap not found")

    monkeypatch.setattr(sandbox, "resolve_backend", cannot)
    monkeypatch.setenv("SCA_TEST_REQUIRE", "docker")
    assert outcome(backend_or_skip, "bwrap") == ("skip", "bwrap sandbox unavailable: bubblewrap not found")
    monkeypatch.setenv("SCA_TEST_REQUIRE", "bwrap,docker")
    assert outcome(backend_or_skip, "bwrap") == ("fail", "bwrap sandbox unavailable: bubblewrap not found")
    assert outcome(unavailable, "docker", "an older runner") == ("fail", "docker sandbox unavailable: an older runner")


@pytest.fixture(scope="module")
def envs():
    from envs import make_env

    return {name: make_env(name) for name in ("retail", "airline", "calculation")}


@pytest.mark.parametrize("task", ALL_TASKS, ids=[t["id"] for t in ALL_TASKS])
def test_each_check(task, sandbox, envs):
    env = envs[task["env"]]
    initial = env.state_hash()
    v = validate_task(task, env, sandbox, ValidateConfig(SandboxConfig(timeout=2.0)))
    expect = task["meta"]["expect"]
    got = "valid" if v["valid"] else v["reason"]
    assert got == expect, json.dumps(v, indent=1)[:3000]
    assert env.state_hash() == initial  # the stage leaves the environment as it found it
    # a task without a format is a cat task, held to the six checks (tests/test_task_formats.py: the others)
    assert v["format"] == "cat" and v["check_set"] == list(CHECKS)
    if v["valid"]:
        assert [c["check"] for c in v["checks"]] == [
            "compile", "failure_case_count", "noop_run", "solution_run", "answer_round_trip", "failure_case_runs"]
        assert all(c["ok"] for c in v["checks"])
    else:
        assert v["checks"][-1]["ok"] is False and v["checks"][-1]["reason"] == expect
        assert expect in REASONS
        assert REASONS[expect] in feedback(v)


def test_tracebacks_reach_the_feedback(sandbox, envs):
    task = next(t for t in RETAIL_TASKS if t["id"] == "ret-bad-failure-crashes")
    v = validate_task(task, envs["retail"], sandbox)
    assert "ZeroDivisionError" in v["traceback"]
    assert "ZeroDivisionError" in feedback(v)
    task = next(t for t in RETAIL_TASKS if t["id"] == "ret-bad-syntax")
    v = validate_task(task, envs["retail"], sandbox)
    assert "SyntaxError" in v["traceback"] and "solution" in v["detail"]


def test_failure_case_count_is_configurable(sandbox, envs):
    task = next(t for t in RETAIL_TASKS if t["id"] == "ret-bad-two-failures")
    v = validate_task(task, envs["retail"], sandbox, ValidateConfig(min_failure_cases=2))
    assert v["reason"] != "failure_case_count"


def test_validate_file_splits_accepted_and_rejected(tmp_path, sandbox):
    src = write_jsonl(tmp_path / "raw.jsonl", ALL_TASKS)
    out, rej = tmp_path / "ok.jsonl", tmp_path / "rej.jsonl"
    cfg = ValidateConfig(SandboxConfig(backend=sandbox.backend_name, workers=2, timeout=2.0))
    summary = validate_file(str(src), str(out), rejected=str(rej), config=cfg, show_progress=False)
    ok = [json.loads(x) for x in out.read_text().splitlines()]
    bad = [json.loads(x) for x in rej.read_text().splitlines()]
    expect_ok = [t["id"] for t in ALL_TASKS if t["meta"]["expect"] == "valid"]
    assert [r["id"] for r in ok] == expect_ok  # input order kept
    assert sum(r["env"] == "airline" for r in ok) >= 2 and sum(r["env"] == "airline" for r in bad) >= 2
    assert len(bad) == len(ALL_TASKS) - len(expect_ok)
    assert all(r["validation"]["reason"] == r["meta"]["expect"] for r in bad)
    assert all(r["validation"]["sandbox"] == sandbox.backend_name for r in ok + bad)
    assert summary.accepted == len(ok) and summary.rejected == len(bad)
    assert sum(summary.reasons.values()) == len(bad)
    # fields the stage does not know pass through
    assert ok[0]["meta"] == {"expect": "valid"}
    meta = json.loads((tmp_path / "ok.jsonl.meta.json").read_text())
    assert meta["counts"]["accepted"] == len(ok) and meta["settings"]["sandbox_backend"] == sandbox.backend_name

    # a second run resumes: nothing is done twice
    again = validate_file(str(src), str(out), rejected=str(rej), config=cfg, show_progress=False)
    assert again.resumed == len(ALL_TASKS) and again.accepted == again.rejected == 0
    assert len(out.read_text().splitlines()) == len(ok)


def _task(tid, **over):
    return {**next(t for t in ALL_TASKS if t["id"] == tid), **over}


def _runs(v):
    return [(r["run"], r["status"], r["tool_calls"]) for r in v["runs"]]


def test_validation_object_names_the_failed_check_and_every_run(sandbox, envs):
    v = validate_task(_task("ret-valid-cancel"), envs["retail"], sandbox)
    assert v["valid"] is True and v["reason"] is None and "failed_check" not in v
    assert _runs(v) == [
        ("evaluate after no action", "ok", 1),
        ("the solution", "ok", 1), ("evaluate after the solution", "ok", 1),
        ("failure case 0", "ok", 1), ("evaluate after failure case 0", "ok", 1),
        ("failure case 1", "ok", 1), ("evaluate after failure case 1", "ok", 1),
        ("failure case 2", "ok", 1), ("evaluate after failure case 2", "ok", 1),
    ]
    assert all(isinstance(r["seconds"], float) and r["seconds"] >= 0 for r in v["runs"])
    # a failure case that ends on a ToolError: the run is an error, the task still valid
    v = validate_task(_task("ret-valid-tool-error-failure"), envs["retail"], sandbox)
    assert v["valid"] is True
    assert _runs(v)[3] == ("failure case 0", "error", 1) and v["runs"][3]["error"].startswith("ToolError: ")
    assert _runs(v)[1] == ("the solution", "ok", 6)  # find the user, read the user, read 3 orders, cancel 1

    v = validate_task(_task("ret-bad-failure-crashes"), envs["retail"], sandbox)
    assert (v["failed_check"], v["reason"]) == ("failure_case_runs", "failure_case_error")
    assert _runs(v) == [
        ("evaluate after no action", "ok", 1),
        ("the solution", "ok", 1), ("evaluate after the solution", "ok", 1),
        ("failure case 0", "ok", 0), ("evaluate after failure case 0", "ok", 1),
        ("failure case 1", "error", 0),  # the last run is the one that failed; nothing after it
    ]
    assert v["runs"][-1]["error"] == "ZeroDivisionError: division by zero"

    for tid, check, runs in [
        ("ret-bad-syntax", "compile", []),
        ("ret-bad-two-failures", "failure_case_count", []),
        ("ret-bad-trivial", "noop_run", [("evaluate after no action", "ok", 1)]),
        # the refused write is caught inside evaluate(), which goes on to read: 2 calls, status ok
        ("ret-bad-evaluate-writes", "noop_run", [("evaluate after no action", "ok", 2)]),
        ("ret-bad-solution-tool-error", "solution_run", [("evaluate after no action", "ok", 1),
                                                         ("the solution", "error", 1)]),
        ("ret-bad-solution-fails", "solution_run", [("evaluate after no action", "ok", 1), ("the solution", "ok", 1),
                                                    ("evaluate after the solution", "ok", 1)]),
    ]:
        v = validate_task(_task(tid), envs["retail"], sandbox)
        assert (v["failed_check"], _runs(v)) == (check, runs), tid
        assert v["checks"][-1] == {"check": check, "ok": False, "reason": v["reason"], "detail": v["detail"]}


def test_validation_starts_from_the_initial_state_whatever_the_env_went_through(sandbox, envs):
    env = envs["retail"]
    fresh = env.state_hash()
    env.call("cancel_pending_order", {"order_id": ORDER, "reason": "no longer needed"})
    assert env.state_hash() != fresh
    # the order is already cancelled in `env`, yet the no-op run must see it pending
    v = validate_task(_task("ret-valid-cancel"), env, sandbox)
    assert v["valid"] is True, v
    assert env.state_hash() == fresh
    env.call("cancel_pending_order", {"order_id": ORDER, "reason": "no longer needed"})
    v = validate_task(_task("ret-bad-solution-fails"), env, sandbox)
    assert (v["reason"], v["failed_check"]) == ("solution_fails", "solution_run")  # not noop_passes
    assert env.state_hash() == fresh


def test_a_run_that_kills_its_own_process_is_a_sandbox_error(sandbox, envs):
    kill = "import os\nos.kill(os.getpid(), 9)\n"
    v = validate_task(_task("ret-valid-cancel", solution=kill), envs["retail"], sandbox)
    assert (v["valid"], v["reason"], v["failed_check"]) == (False, "sandbox_error", "solution_run")
    assert v["detail"].startswith("the solution: ") and "SIGKILL" in v["detail"]
    assert _runs(v)[-1] == ("the solution", "sandbox_error", 0)
    assert REASONS["sandbox_error"] in feedback(v)
    # in evaluate() too: the check it happens in fails with the same reason
    evaluate = "import os\ndef evaluate():\n    os.kill(os.getpid(), 9)\n"
    v = validate_task(_task("ret-valid-cancel", evaluation_function=evaluate), envs["retail"], sandbox)
    assert (v["reason"], v["failed_check"]) == ("sandbox_error", "noop_run")
    assert v["detail"].startswith("evaluate() after no action: ") and "SIGKILL" in v["detail"]
    # a failure case
    v = validate_task(_task("ret-valid-cancel", failure_cases=["pass\n", kill, "pass\n"]), envs["retail"], sandbox)
    assert (v["reason"], v["failed_check"]) == ("sandbox_error", "failure_case_runs")
    assert _runs(v)[-1] == ("failure case 1", "sandbox_error", 0)


# a question where the answer is a number an agent types as is: the length of "abc" (calculation)
QUESTION = cat("calc-question", "calculation", "valid", "How long is the string abc?",
               "def evaluate(answer):\n    return answer == 3\n", "answer = string_length(string='abc')\n",
               "answer = 2\n", "answer = 4\n", "pass\n")


@pytest.mark.parametrize("evaluate, expect", [
    ("def evaluate(a, b):\n    return a == 3\n", "compile"),
    ("def evaluate(answer, /, strict):\n    return answer == 3\n", "compile"),
    ("def evaluate(answer, *, strict):\n    return answer == 3\n", "compile"),
    ("async def evaluate(answer):\n    return answer == 3\n", "compile"),
    ("def check(answer):\n    return answer == 3\n", "compile"),
    ("def evaluate(answer):\n    return answer == 3\n", "valid"),
    ("def evaluate(answer=None):\n    return answer == 3\n", "valid"),
    ("def evaluate(answer, strict=True):\n    return answer == 3\n", "valid"),
    ("def evaluate(*args):\n    return args == (3,)\n", "valid"),  # receives the answer as its one argument
    ("def evaluate():\n    return False\n", "solution_fails"),  # no parameter: called without the answer
    # keyword-only parameters and **kw take no positional argument: called without the answer too
    ("def evaluate(*, strict=True):\n    return False\n", "solution_fails"),
    ("def evaluate(**kw):\n    return kw == {} and False\n", "solution_fails"),
])
def test_arity_of_evaluate(sandbox, envs, evaluate, expect):
    v = validate_task({**QUESTION, "evaluation_function": evaluate}, envs["calculation"], sandbox)
    assert ("valid" if v["valid"] else v["reason"]) == expect, v
    if expect == "valid":  # each valid one takes the answer: the answer's round trip was checked
        [check] = [c for c in v["checks"] if c["check"] == "answer_round_trip"]
        assert check.get("detail") != "evaluate() takes no answer", v
    if expect == "compile":
        assert v["failed_check"] == "compile" and v["runs"] == []
        assert v["detail"] in ("evaluate must take no parameter or one (the answer)",
                               "evaluate must be a plain function, not async",
                               "evaluation_function does not define evaluate() at top level")
