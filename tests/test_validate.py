"""`sca validate`: every CaT check on hand-written retail and airline tasks, on each sandbox backend."""

from __future__ import annotations

import json

import pytest

from cat_sets import AIRLINE_TASKS, ALL_TASKS, RETAIL_TASKS, write_jsonl
from stages.validate import REASONS, ValidateConfig, feedback, validate_file, validate_task

BACKENDS = ["bwrap", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture(scope="module", params=BACKENDS)
def sandbox(request):
    from sandbox import Sandbox, SandboxUnavailable, resolve_backend

    try:
        resolve_backend(request.param)
    except SandboxUnavailable as e:
        pytest.skip(f"{request.param} sandbox unavailable: {e}")
    with Sandbox(backend=request.param, workers=1, timeout=2.0) as sb:
        yield sb


@pytest.fixture(scope="module")
def envs():
    from envs import make_env

    return {name: make_env(name) for name in ("retail", "airline")}


@pytest.mark.parametrize("task", ALL_TASKS, ids=[t["id"] for t in ALL_TASKS])
def test_each_check(task, sandbox, envs):
    env = envs[task["env"]]
    initial = env.state_hash()
    v = validate_task(task, env, sandbox, ValidateConfig(timeout=2.0))
    expect = task["meta"]["expect"]
    got = "valid" if v["valid"] else v["reason"]
    assert got == expect, json.dumps(v, indent=1)[:3000]
    assert env.state_hash() == initial  # the stage leaves the environment as it found it
    if v["valid"]:
        assert [c["check"] for c in v["checks"]] == [
            "compile", "failure_case_count", "noop_run", "solution_run", "failure_case_runs"]
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
    cfg = ValidateConfig(sandbox=sandbox.backend_name, workers=2, timeout=2.0)
    summary = validate_file(str(src), str(out), rejected=str(rej), config=cfg, show_progress=False)
    ok = [json.loads(x) for x in out.read_text().splitlines()]
    bad = [json.loads(x) for x in rej.read_text().splitlines()]
    expect_ok = [t["id"] for t in ALL_TASKS if t["meta"]["expect"] == "valid"]
    assert [r["id"] for r in ok] == expect_ok  # input order kept
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


def test_airline_set_is_nontrivial():
    assert sum(t["meta"]["expect"] == "valid" for t in AIRLINE_TASKS) >= 2
