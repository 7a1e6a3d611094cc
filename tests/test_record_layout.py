"""Records for reading by hand (issue 18): a trajectory line starts with its summary and ends with its
conversation; a failed propose episode is a record of its own kind, not a task with empty parts; and
sca report reads both layouts of propose's rejected file for the funnel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _sandbox_util import backend_or_skip
from _scripted import ScriptedModel, ScriptedRoles
from cat_sets import RETAIL_TASKS, write_jsonl
from test_propose import FLAWED, ORDER  # a challenger answer whose solution fails its evaluate()

from sandbox.config import SandboxConfig
from sca.cat import ValidateConfig
from sca.records import EVAL_RESULT, TRAJECTORY, RecordError
from sca.records.schema import (
    FAILED_EPISODE,
    TRAJECTORY_CONVERSATION,
    TRAJECTORY_SUMMARY,
    summary_first,
    with_field,
)
from stages import report as rp
from stages.eval import EvalConfig, eval_file
from stages.propose import ProposeConfig, propose_file
from stages.rollout import RolloutConfig, rollout_file

CANCEL_TASK = next(t for t in RETAIL_TASKS if t["id"] == "ret-valid-cancel")
LOOK = f'THOUGHT: look the order up END THOUGHT\nACTION:\nprint(get_order_details(order_id="{ORDER}")["status"])\n'
CANCEL = (f'THOUGHT: cancel it END THOUGHT\nACTION:\ncancel_pending_order(order_id="{ORDER}", '
          'reason="no longer needed")\n')
DONE = "THOUGHT: it is done END THOUGHT\nYour order is cancelled."

TASK_PARTS = ("instruction", "evaluation_function", "solution", "failure_cases")


@pytest.fixture(autouse=True)
def _bwrap():
    backend_or_skip("bwrap")


def lines(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if x.strip()]


def check_layout(line: str) -> dict:
    """A record line laid out for reading: summary keys first in their order, conversation last."""
    record = json.loads(line)
    keys = list(record)
    head = [k for k in TRAJECTORY_SUMMARY if k in record]
    tail = [k for k in TRAJECTORY_CONVERSATION if k in record]
    assert keys[:len(head)] == head, keys
    assert keys[len(keys) - len(tail):] == tail, keys
    assert keys == list(summary_first(record))
    # what a reader sees first: the outcome, before a word of the system prompt
    assert line.index('"reward"') < line.index('"termination"') < line.index('"messages"')
    assert line.index('"assistant_token_ids"') > line.index('"messages"')
    return record


def test_summary_first_moves_keys_and_nothing_else():
    record = {"messages": [1], "models": {}, "assistant_token_ids": [], "extra": 1, "reward": 0, "id": "t#0",
              "tool_calls": [], "instruction": "x", "task_id": "t", "trial": 0}
    out = summary_first(record)
    assert out == record  # the same keys and values
    assert list(out) == ["id", "task_id", "trial", "reward", "instruction", "models", "extra", "messages",
                         "tool_calls", "assistant_token_ids"]


def test_a_field_added_to_a_finished_record_goes_before_its_conversation():
    assert list(with_field({"id": "a", "reward": 1, "messages": [], "tool_calls": []}, "run", "r1")) == [
        "id", "reward", "run", "messages", "tool_calls"]
    assert list(with_field({"id": "a", "env": "retail", "meta": {}}, "run", "r1")) == ["id", "env", "run", "meta"]
    assert with_field({"id": "a", "run": "old", "meta": {}}, "run", "r1") == {"id": "a", "run": "r1", "meta": {}}
    assert list(with_field({"id": "a"}, "run", "r1")) == ["id", "run"]


def test_a_rollout_record_starts_with_its_summary_and_ends_with_its_conversation(tmp_path):
    src = write_jsonl(tmp_path / "tasks.jsonl", [CANCEL_TASK])
    out = tmp_path / "traj.jsonl"
    model = ScriptedRoles(lambda turn, conv: [LOOK, CANCEL, DONE][turn],
                          lambda turn, conv: "Cancel my skateboard order, please." if turn == 0 else "###STOP###")
    rollout_file(str(src), str(out), RolloutConfig(trials=1, sandbox=SandboxConfig(backend="bwrap", workers=1)),
                 executor_model=model, user_model=model, show_progress=False)
    (line,) = lines(out)
    record = check_layout(line)
    TRAJECTORY.check(record)
    assert list(record)[:6] == ["id", "task_id", "trial", "env", "format", "reward"]
    assert record["reward"] == 1 and record["format"] == "cat" and record["reward_source"] == "evaluate"
    assert list(record)[-3:] == ["messages", "tool_calls", "assistant_token_ids"]
    # no field renamed or lost: every field of the documented record is there
    assert {"instruction", "evaluation", "termination", "infra_error", "steps", "final_answer", "answer",
            "tool_calls_omitted", "action_format", "tokens", "timings", "models"} <= set(record)


def test_an_eval_record_puts_the_benchmarks_fields_in_the_summary(tmp_path):
    out = tmp_path / "eval.jsonl"
    wrong = ScriptedRoles(lambda turn, conv: "THOUGHT: guess END THOUGHT\n-1")
    eval_file(EvalConfig(envs=["calculation"], limit=1, trials=1, sandbox=SandboxConfig(backend="bwrap", workers=1)),
              str(out), executor_model=wrong, show_progress=False)
    (line,) = lines(out)
    record = check_layout(line)
    EVAL_RESULT.check(record)
    assert list(record)[:8] == ["id", "task_id", "trial", "env", "split", "benchmark_task_id", "reward", "scorer"]


def _propose(tmp_path, name, script, **over):
    v = ValidateConfig(SandboxConfig(backend="bwrap", workers=2, timeout=5.0))
    cfg = ProposeConfig(**{"env": "retail", "n": 1, "max_steps": 2, "concurrency": 2, "validate": v, **over})
    out, rej = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.failed.jsonl"
    propose_file(cfg, str(out), rejected=str(rej), model=ScriptedModel(script), show_progress=False)
    return out, [json.loads(x) for x in lines(rej)]


def test_failed_propose_episodes_are_records_of_their_own_kind(tmp_path):
    out, failed = _propose(tmp_path, "flawed", lambda turn, conv: FLAWED, max_episodes=2)
    assert len(failed) == 2
    for r in failed:
        FAILED_EPISODE.check(r)
        assert list(r)[:6] == ["kind", "id", "env", "format", "reason", "steps"]
        assert (r["kind"], r["env"], r["format"], r["reason"], r["steps"]) == ("failed_episode", "retail", "cat",
                                                                            "invalid_answer", 2)
        assert not set(TASK_PARTS) & set(r)  # no task field: it is no task
        assert set(r["last_answer"]) == set(TASK_PARTS) and ORDER in r["last_answer"]["instruction"]
        assert (r["validation"]["reason"], r["validation"]["failed_check"]) == ("solution_fails", "solution_run")
        assert list(r)[-1] == "meta" and list(r["meta"])[-1] == "transcript"
        assert r["meta"]["status"] == "failed" and r["meta"]["transcript"][1]["content"].startswith("THOUGHT")
    # the report's funnel reads them beside the (empty) accepted output: both reached "code runs"
    got = rp.report([out], tmp_path / "report", plots=False)
    (funnel,) = got.funnels
    assert funnel.counts == (2, 2, 0, 0) and {rc.reason: rc.count for rc in funnel.reasons} == {"solution_fails": 2}

    _, failed = _propose(tmp_path, "silent", lambda turn, conv: "no idea", max_episodes=1)
    (r,) = failed
    FAILED_EPISODE.check(r)
    assert r["reason"] == "max_steps" and "last_answer" not in r and "validation" not in r
    assert not set(TASK_PARTS) & set(r)


def test_a_duplicate_stays_a_task_record(tmp_path):
    fixed = FLAWED.replace('reason="ordered by mistake")\n</solution>', 'reason="no longer needed")\n</solution>')
    out, rejected = _propose(tmp_path, "dup", lambda turn, conv: fixed, n=2, max_episodes=2)
    (dup,) = rejected
    assert "kind" not in dup and dup["meta"]["status"] == "duplicate" and dup["instruction"]
    assert lines(out) and "kind" not in json.loads(lines(out)[0])


@pytest.mark.parametrize("change, message", [
    (lambda r: {**r, "instruction": ""}, "instruction: a failed episode has no instruction"),
    (lambda r: {k: v for k, v in r.items() if k != "validation"}, "validation: the last answer's validation"),
    (lambda r: {k: v for k, v in r.items() if k != "last_answer"}, "last_answer: a validation without the answer"),
    (lambda r: {**r, "format": "instruction-only"}, "last_answer.evaluation_function: not a part of"),
    (lambda r: {**r, "kind": "task"}, "kind: expected one of failed_episode"),
    (lambda r: {**r, "reason": ""}, "reason: must not be empty"),
])
def test_the_failed_episode_schema_refuses_a_task_in_disguise(change, message):
    good = {"kind": "failed_episode", "id": "retail-s0-e00001", "env": "retail", "format": "cat",
            "reason": "invalid_answer", "steps": 2, "last_answer": {p: "" for p in TASK_PARTS[:3]},
            "validation": {"valid": False, "reason": "compile", "failed_check": "compile"}, "meta": {}}
    FAILED_EPISODE.check(good)
    with pytest.raises(RecordError, match=message.replace("(", r"\(")):
        FAILED_EPISODE.check(change(good))
