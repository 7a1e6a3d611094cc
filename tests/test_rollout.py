"""`sca rollout`: the executor over many turns, the simulated user, scoring by the task's own code,
infrastructure failures, resume; on the shared episode engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _sandbox_util import backend_or_skip, refuse_the_first_worker_start
from _scripted import ScriptedModel, ScriptedRoles
from _servers import ReplayServer
from cat_sets import RETAIL_TASKS, cat, write_jsonl
from typer.testing import CliRunner

from sandbox.config import SandboxConfig
from sca.agent.executor import ExecutorConfig
from sca.records import TRAJECTORY
from sca.records.io import SystemPrompts
from sca_cli.app import app
from stages.rollout import RolloutConfig, rollout_file

ROOT = Path(__file__).resolve().parent.parent
ORDER = "#W2974929"
CANCEL_TASK = next(t for t in RETAIL_TASKS if t["id"] == "ret-valid-cancel")  # cancel ORDER, "no longer needed"

LOOK = f'THOUGHT: look the order up END THOUGHT\nACTION:\nprint(get_order_details(order_id="{ORDER}")["status"])\n'
CANCEL = (f'THOUGHT: cancel it END THOUGHT\nACTION:\ncancel_pending_order(order_id="{ORDER}", '
          'reason="no longer needed")\n')
WRONG = (f'THOUGHT: cancel it END THOUGHT\nACTION:\ncancel_pending_order(order_id="{ORDER}", '
         'reason="ordered by mistake")\n')
DONE = "THOUGHT: it is done END THOUGHT\nYour order is cancelled."


def customer(turn, conv):
    return "Hi, I want to cancel my skateboard order, I no longer need it." if turn == 0 else "Thanks! ###STOP###"


def config(**over):
    base = dict(trials=2, concurrency=4, sandbox=SandboxConfig(backend="bwrap", workers=2))
    base.update(over)
    return RolloutConfig(**base)


def read(path):
    """The records of `path`, each system prompt back from the sidecar that holds it (tests/test_system_prompt.py)."""
    records = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    prompts = SystemPrompts(str(path))
    for r in records:
        prompts.restore(r)
    return records


@pytest.fixture(autouse=True)
def _bwrap():
    backend_or_skip("bwrap")


def run(tmp_path, tasks, model, name="out", **over):
    src = write_jsonl(tmp_path / f"{name}.tasks.jsonl", tasks)
    out = tmp_path / f"{name}.jsonl"
    summary = rollout_file(str(src), str(out), config(**over), executor_model=model, user_model=model,
                           show_progress=False)
    return summary, read(out)


def test_a_scripted_executor_and_user_solve_a_retail_task(tmp_path):
    model = ScriptedRoles(lambda turn, conv: [LOOK, CANCEL, DONE][turn], customer)
    summary, records = run(tmp_path, [CANCEL_TASK], model)
    assert [r["id"] for r in sorted(records, key=lambda r: r["id"])] == ["ret-valid-cancel#0", "ret-valid-cancel#1"]
    for r in records:
        TRAJECTORY.check(r)
        assert (r["reward"], r["termination"], r["steps"], r["infra_error"]) == (1, "user_stop", 3, None)
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant", "user"]
        assert "cancel_pending_order(order_id: str, reason: str)" in r["messages"][0]["content"]  # the tools
        assert r["messages"][1]["content"].startswith("Hi, I want to cancel")  # the simulated user spoke first
        assert r["messages"][2]["content"].endswith("END ACTION")  # the stop-cut marker put back
        assert r["messages"][3]["content"] == "OBSERVATION:\npending"
        assert r["messages"][5]["content"] == "OBSERVATION:\n(the code ran and printed nothing)"
        assert r["messages"][7]["content"] == "Thanks! ###STOP###"
        assert [(c["message"], c["name"]) for c in r["tool_calls"]] == [(2, "get_order_details"),
                                                                        (4, "cancel_pending_order")]
        assert r["tool_calls"][1]["arguments"] == {"order_id": ORDER, "reason": "no longer needed"}
        assert r["tool_calls"][1]["result"]["status"] == "cancelled"
        assert r["final_answer"] == "Your order is cancelled." and r["answer"] == "Your order is cancelled."
        assert r["evaluation"]["status"] == "ok" and r["evaluation"]["verdict"] is True
        assert r["tokens"]["executor"]["prompt"] == 300 and r["tokens"]["user"]["prompt"] == 200
        assert r["models"]["executor"]["model"] == "scripted" and r["models"]["user"]["model"] == "scripted"
        assert r["models"]["executor"]["sampling"]["stop"] == ["END ACTION", "END ANSWER"]
        assert len(r["assistant_token_ids"]) == 3  # one per assistant message (None: the double gives none)
    # the user never sees the executor's actions or observations, and speaks as "assistant" in its own view
    user_views = [c for c in model.conversations if "# Your scenario" in c[0]["content"]]
    assert user_views[0][1] == {"role": "user", "content": "Hi! How can I help you today?"}
    assert all("OBSERVATION" not in m["content"] and "ACTION" not in m["content"] for c in user_views for m in c)
    assert user_views[-1][-1] == {"role": "user", "content": "Your order is cancelled."}
    assert "Cancel your pending skateboard order" in user_views[0][0]["content"] or \
        CANCEL_TASK["instruction"] in user_views[0][0]["content"]
    assert (summary.tasks, summary.scored, summary.rewarded, summary.solved_all) == (1, 2, 2, 1)
    assert summary.pass1 == 1.0 and summary.terminations == {"user_stop": 2}


def test_each_episode_has_its_own_state(tmp_path):
    """Trial 0 cancels with the wrong reason, trial 1 with the right one: if the two shared a state,
    trial 1's cancellation would fail (already cancelled) and both would score the same."""
    def agent(turn, conv):
        wrong = "WRONG" in conv[1]["content"]
        return [WRONG if wrong else CANCEL, DONE][turn]

    def user(turn, conv):
        trial = conv[0]["content"]
        return "WRONG please cancel" if turn == 0 and _count(trial) else ("please cancel" if turn == 0 else "###STOP###")

    calls = {"n": 0}

    def _count(_):
        calls["n"] += 1
        return calls["n"] == 1  # the first conversation to start is told to do it wrong

    model = ScriptedRoles(agent, user)
    summary, records = run(tmp_path, [CANCEL_TASK], model, concurrency=2)
    assert sorted(r["reward"] for r in records) == [0, 1]
    assert summary.solved_some == 1 and summary.mean_reward == 0.5


def test_failing_and_step_limit(tmp_path):
    failing = ScriptedRoles(lambda turn, conv: [WRONG, DONE][turn], customer)
    summary, records = run(tmp_path, [CANCEL_TASK], failing, name="fail", trials=1)
    assert (records[0]["reward"], records[0]["termination"]) == (0, "user_stop")
    assert records[0]["evaluation"]["verdict"] is False
    looping = ScriptedRoles(lambda turn, conv: LOOK, customer)
    summary, records = run(tmp_path, [CANCEL_TASK], looping, name="loop", trials=1,
                           episode=ExecutorConfig(max_steps=4))
    r = records[0]
    assert (r["reward"], r["termination"], r["steps"]) == (0, "max_steps", 4)
    assert sum(m["role"] == "assistant" for m in r["messages"]) == 4
    assert r["messages"][-1]["content"] == "OBSERVATION:\npending"  # the last action ran, then the episode ended
    assert summary.terminations == {"max_steps": 1}


def test_an_executor_that_only_talks_to_the_user_stops_at_the_step_limit(tmp_path):
    """In a user-facing environment a message to the user at the last step ends the episode there."""
    talking = ScriptedRoles(lambda turn, conv: "THOUGHT: ask END THOUGHT\nWhich order do you mean?",
                            lambda turn, conv: "Please cancel my order." if turn == 0 else "The skateboard one.")
    _, (r,) = run(tmp_path, [CANCEL_TASK], talking, trials=1, episode=ExecutorConfig(max_steps=3))
    assert (r["termination"], r["steps"], r["reward"]) == ("max_steps", 3, 0), (r["termination"], r["steps"])
    assert sum(m["role"] == "assistant" for m in r["messages"]) == 3
    assert r["messages"][-1]["role"] == "assistant"  # the user never answered the last message


def test_the_default_step_cap_is_fifteen(tmp_path):
    looping = ScriptedRoles(lambda turn, conv: LOOK, customer)
    _, records = run(tmp_path, [CANCEL_TASK], looping, trials=1)
    assert (records[0]["termination"], records[0]["steps"]) == ("max_steps", 15)


def test_native_function_calling(tmp_path):
    """--action-format json: the model's tool calls go to the environment; each gets a tool message."""
    from sca.inference.base import Generation

    def call(i, name, args):
        return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}

    class Native(ScriptedRoles):
        def generate(self, conversations, sampling, tools=None):
            out = []
            for conv in conversations:
                if "# Your scenario" in conv[0]["content"]:
                    out += super().generate([conv], sampling, tools)
                    continue
                self.tools_seen = tools
                turn = sum(m["role"] == "assistant" for m in conv)
                if turn == 0:
                    out.append(Generation("THOUGHT: look it up and cancel END THOUGHT", 5, 5, "tool_calls", tool_calls=[
                        call(0, "get_order_details", {"order_id": ORDER}),
                        call(1, "cancel_pending_order", {"order_id": ORDER, "reason": "no longer needed"})]))
                elif turn == 1:
                    out.append(Generation("", 5, 5, "tool_calls", tool_calls=[call(2, "get_order_details", {"x": 1})]))
                else:
                    out.append(Generation("THOUGHT: done END THOUGHT\nYour order is cancelled.", 5, 5, "stop"))
            return out

    model = Native(None, customer)
    summary, records = run(tmp_path, [CANCEL_TASK], model, trials=1, episode=ExecutorConfig(action_format="json"))
    r = records[0]
    TRAJECTORY.check(r)
    assert (r["reward"], r["termination"], r["action_format"]) == (1, "user_stop", "json")
    assert {t["function"]["name"] for t in model.tools_seen} >= {"get_order_details", "cancel_pending_order"}
    roles = [m["role"] for m in r["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "tool", "assistant", "tool", "assistant", "user"]
    assert r["messages"][2]["tool_calls"][1]["function"]["name"] == "cancel_pending_order"
    assert [m.get("tool_call_id") for m in r["messages"] if m["role"] == "tool"] == ["call_0", "call_1", "call_2"]
    assert json.loads(r["messages"][3]["content"])["status"] == "pending"
    assert r["messages"][6]["content"].startswith("Error: get_order_details() got an unexpected keyword argument")
    assert [(c["message"], c["name"], c["error"] is None) for c in r["tool_calls"]] == [
        (2, "get_order_details", True), (2, "cancel_pending_order", True), (5, "get_order_details", False)]
    assert "ACTION" not in r["messages"][0]["content"]  # the json prompt offers no ACTION blocks...
    assert "get_order_details(order_id: str)" not in r["messages"][0]["content"]  # ...nor the Python signatures
    assert r["models"]["executor"]["sampling"]["stop"] == []


# -- answers: the conversion of the CaT contract, in validation and rollout alike -------------------------
CALC = [
    cat("calc-number", "calculation", "valid", "How long is the string abcd?",
        "def evaluate(answer):\n    return answer == 4\n", "answer = string_length(string='abcd')\n",
        "answer = 3\n", "answer = 5\n", "pass\n"),
    cat("calc-list", "calculation", "valid", "Give the largest and the smallest of 3, 9, 1 as a list.",
        "def evaluate(answer):\n    return answer == [9, 1]\n",
        "answer = [maximum_value(values=[3, 9, 1]), minimum_value(values=[3, 9, 1])]\n",
        "answer = [1, 9]\n", "answer = 9\n", "pass\n"),
    cat("calc-string", "calculation", "valid", "Reverse the string hello.",
        "def evaluate(answer):\n    return answer == 'olleh'\n", "answer = reverse_string(string='hello')\n",
        "answer = 'hello'\n", "answer = 'olle'\n", "pass\n"),
    cat("calc-digits-as-text", "calculation", "answer_not_typeable", "Write the number four as digits, as text.",
        "def evaluate(answer):\n    return answer == '4'\n", "answer = '4'\n",
        "answer = '5'\n", "answer = 'four'\n", "pass\n"),
]
FINALS = {"calc-number": "THOUGHT: it is 4 END THOUGHT\n4", "calc-list": "THOUGHT: done END THOUGHT\n```json\n[9, 1]\n```",
          "calc-string": "THOUGHT: reversed END THOUGHT\n'olleh'", "calc-digits-as-text": "THOUGHT: easy END THOUGHT\n4"}


def test_answers_are_converted_the_same_way_in_validation_and_rollout(tmp_path):
    from sca.cat import ValidateConfig
    from stages.validate import validate_file

    src = write_jsonl(tmp_path / "calc.jsonl", CALC)
    validate_file(str(src), str(tmp_path / "ok.jsonl"), rejected=str(tmp_path / "rej.jsonl"),
                  config=ValidateConfig(SandboxConfig(backend="bwrap", workers=1)), show_progress=False)
    verdicts = {r["id"]: "valid" if r["validation"]["valid"] else r["validation"]["reason"]
                for r in read(tmp_path / "ok.jsonl") + read(tmp_path / "rej.jsonl")}
    assert verdicts == {t["id"]: t["meta"]["expect"] for t in CALC}

    def agent(turn, conv):
        return FINALS[next(t["id"] for t in CALC if t["instruction"] == conv[1]["content"])]

    _, records = run(tmp_path, CALC, ScriptedModel(agent), trials=1)
    got = {r["task_id"]: (r["answer"], r["reward"], r["termination"]) for r in records}
    assert got == {"calc-number": (4, 1, "final_answer"), "calc-list": ([9, 1], 1, "final_answer"),
                   "calc-string": ("olleh", 1, "final_answer"), "calc-digits-as-text": (4, 0, "final_answer")}


def test_an_answer_or_tool_call_no_record_can_hold_cannot_crash_the_rollout(tmp_path):
    """A hex literal too long to write in decimal as the final answer, and native tool calls whose
    arguments are nesting bombs: the trials are scored (0), the records are written and readable."""
    from sca.inference.base import Generation

    bomb = "[" * 50_000 + "]" * 50_000
    deep = json.dumps({"order_id": json.loads("[" * 70 + "]" * 70)})

    class Hostile(ScriptedModel):
        def generate(self, conversations, sampling, tools=None):
            out = []
            for conv in conversations:
                turn = sum(m["role"] == "assistant" for m in conv)
                if conv[1]["content"].startswith("How long") or turn > 0:
                    out.append(Generation("THOUGHT: huge END THOUGHT\n0x" + "f" * 5000, 5, 5, "stop"))
                else:
                    out.append(Generation("", 5, 5, "tool_calls", tool_calls=[
                        {"id": "a", "type": "function", "function": {"name": "string_length", "arguments": bomb}},
                        {"id": "b", "type": "function", "function": {"name": "string_length", "arguments": deep}}]))
            return out

    tasks = [CALC[0], {**CALC[0], "id": "calc-2", "instruction": "Give the length of abcd."}]
    _, records = run(tmp_path, tasks, Hostile(None), trials=1, episode=ExecutorConfig(action_format="json"))
    by_id = {r["task_id"]: r for r in records}
    assert set(by_id) == {"calc-number", "calc-2"}
    assert all(r["reward"] == 0 and r["infra_error"] is None for r in records)
    assert by_id["calc-number"]["answer"] == "0x" + "f" * 5000  # text: no int a record could hold
    calls = by_id["calc-2"]["tool_calls"]
    assert [c["error"] for c in calls] == ["the arguments must be a JSON object nested at most 64 levels"] * 2
    assert calls[1]["arguments"] == deep  # kept as text
    assert calls[0]["arguments"]["_truncated"]["bytes"] == len(json.dumps(bomb))  # a stub: past 16 KiB
    for line in (tmp_path / "out.jsonl").read_text().splitlines():
        json.loads(line)


def test_a_rerun_with_more_tasks_runs_them_and_counts_only_this_runs_trials(tmp_path):
    """The output already holds 3 trials each of 2 tasks; a rerun with 4 tasks and 1 trial must run the 2
    new tasks (6 done ids > 4 wanted must not read as "nothing to do") and summarise 4 tasks x 1 trial."""
    model = ScriptedRoles(lambda turn, conv: [LOOK, CANCEL, DONE][turn], customer)
    tasks = [{**CANCEL_TASK, "id": f"t{i}"} for i in range(4)]
    summary, _ = run(tmp_path, tasks[:2], model, trials=3, name="out")
    assert (summary.tasks, summary.scored) == (2, 6)
    summary, records = run(tmp_path, tasks, model, trials=1, name="out")
    assert sorted(r["id"] for r in records) == ["t0#0", "t0#1", "t0#2", "t1#0", "t1#1", "t1#2", "t2#0", "t3#0"]
    assert (summary.tasks, summary.scored, summary.rewarded) == (4, 4, 4)
    assert summary.terminations == {"user_stop": 4}


# -- infrastructure failures -------------------------------------------------------------------------
def test_a_worker_killed_during_an_action_is_that_trials_own_failure(tmp_path, monkeypatch):
    """The worker running trial 0's action is killed from outside. The code can kill what it can reach,
    so once a run started, its worker's death is the run's own failure (an error the executor sees), never
    an infrastructure failure that would leave the trial out of every metric: the trial goes on and is scored."""
    built = []
    real_build = SandboxConfig.build

    def build(self, workers=None):
        sb = real_build(self, workers)
        built.append(sb)
        return sb

    monkeypatch.setattr(SandboxConfig, "build", build)
    slow = 'THOUGHT: wait END THOUGHT\nACTION:\nimport time\ntime.sleep(3)\n'
    model = ScriptedRoles(lambda turn, conv: [slow, CANCEL, DONE][turn], customer)
    killed = threading.Event()

    def killer():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not killed.is_set():
            busy = list(built[0]._busy) if built else []
            if busy:
                time.sleep(0.3)
                os.killpg(busy[0].pid, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.02)

    threading.Thread(target=killer, daemon=True).start()
    summary, records = run(tmp_path, [CANCEL_TASK], model, trials=2, concurrency=1)
    assert killed.is_set()
    assert all(r["infra_error"] is None for r in records) and summary.infra_failures == 0
    first = next(r for r in records if r["trial"] == 0)
    observation = first["messages"][[m["role"] for m in first["messages"]].index("assistant") + 1]["content"]
    assert "SandboxError" in observation, observation
    assert [r["reward"] for r in sorted(records, key=lambda r: r["trial"])] == [1, 1]  # the trial went on


def test_no_worker_to_start_an_action_is_an_infrastructure_failure_and_is_retried(tmp_path, monkeypatch):
    """The sandbox cannot start a worker for trial 0's first action (the engine went away): nothing of the
    trial ran there, so it is recorded with reward None and the kind of failure, counted apart, and
    --retry-failed runs it again."""
    refusals = refuse_the_first_worker_start(monkeypatch)
    model = ScriptedRoles(lambda turn, conv: [CANCEL, DONE][turn], customer)
    summary, records = run(tmp_path, [CANCEL_TASK], model, trials=2, concurrency=1)
    assert refusals == [1]
    failed = [r for r in records if r["infra_error"]]
    assert len(failed) == 1 and failed[0]["reward"] is None and failed[0]["termination"] == "error"
    assert failed[0]["infra_error"]["kind"] == "sandbox" and "no worker" in failed[0]["infra_error"]["message"]
    assert summary.infra_failures == 1 and summary.scored == 1 and summary.infra == {"sandbox": 1}
    # --retry-failed reruns it (a worker starts this time): every trial now scored, each id once
    summary, records = run(tmp_path, [CANCEL_TASK], model, trials=2, concurrency=1, retry_failed=True)
    assert sorted(r["id"] for r in records) == ["ret-valid-cancel#0", "ret-valid-cancel#1"]
    assert all(r["reward"] == 1 for r in records)
    assert summary.infra_failures == 0 and summary.scored == 2


def test_a_worker_lost_during_evaluate_is_that_trials_zero(tmp_path, monkeypatch):
    """evaluate() runs with what the executor left behind: a worker that dies under it is the trial's 0."""
    built = []
    real_build = SandboxConfig.build
    monkeypatch.setattr(SandboxConfig, "build", lambda self, workers=None: built.append(real_build(self, workers))
                        or built[-1])
    slow_evaluate = {**CANCEL_TASK, "id": "slow-eval",
                     "evaluation_function": "import time\ndef evaluate():\n    time.sleep(3)\n    return True\n"}
    model = ScriptedRoles(lambda turn, conv: DONE, customer)

    def killer():
        for _ in range(1500):
            busy = list(built[0]._busy) if built else []
            if busy:
                time.sleep(0.3)
                os.killpg(busy[0].pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    threading.Thread(target=killer, daemon=True).start()
    summary, records = run(tmp_path, [slow_evaluate], model, trials=1, concurrency=1)
    r = records[0]
    assert r["reward"] == 0 and r["infra_error"] is None, r
    assert r["evaluation"]["status"] == "sandbox_error" and r["termination"] == "user_stop"
    assert summary.infra_failures == 0 and summary.scored == 1


def test_a_record_keeps_what_the_code_sent_within_bounds(tmp_path):
    """An executor that spent its budget on arguments of refused calls once made a 38 MiB record (13 KB
    for an honest one), its episode holding the decoded arguments, about 18x their JSON, throughout."""
    from sandbox.result import is_stub
    from sca.agent.executor import KEEP_EPISODE_BYTES, MAX_CALL_RECORDS

    flood = ("THOUGHT: t END THOUGHT\nACTION:\nfor i in range(1100):\n    try:\n        "
             "get_order_details(order_id='#W' + str(i))\n    except ToolError:\n        pass\n")
    heavy = ("THOUGHT: t END THOUGHT\nACTION:\ntry:\n    get_user_details(user_id='u' * 3_000_000)\n"
             "except ToolError:\n    pass\n")
    model = ScriptedRoles(lambda turn, conv: [heavy, flood, CANCEL, DONE][turn], customer)
    _, (r,) = run(tmp_path, [CANCEL_TASK], model, trials=1)
    TRAJECTORY.check(r)
    assert r["reward"] == 1 and r["infra_error"] is None  # the honest part of the episode still counts
    calls = r["tool_calls"]
    assert len(calls) == MAX_CALL_RECORDS and r["tool_calls_omitted"] == 1 + 1100 + 1 - MAX_CALL_RECORDS
    assert is_stub(calls[0]["arguments"]) and calls[0]["arguments"]["_truncated"]["bytes"] == len('{"user_id":""}') + 3_000_000
    assert calls[1]["arguments"] == {"order_id": "#W0"} and calls[1]["error"]  # small ones kept in full
    kept = sum(len(json.dumps(c[k])) for c in calls for k in ("arguments", "result") if not is_stub(c[k]))
    assert kept <= KEEP_EPISODE_BYTES
    size = len(json.dumps(r))
    assert size < 400_000, size


def test_an_episode_keeps_payloads_within_bounds_across_its_actions(tmp_path):
    """1 MiB of payloads kept in full per episode, not per action: three actions of 40 calls with 12 kB of
    arguments each (each call under the 16 KiB kept in full, 1.4 MB in all) keep 1 MiB, the rest as stubs."""
    from sandbox.result import is_stub

    flood = ("THOUGHT: measure END THOUGHT\nACTION:\nfor i in range(40):\n"
             "    n = string_length(string=str(i % 10) * 12_000)\nprint(n)\n")
    model = ScriptedModel(lambda turn, conv: flood if turn < 3 else "THOUGHT: counted END THOUGHT\n4")
    _, (r,) = run(tmp_path, [CALC[0]], model, trials=1)
    assert r["reward"] == 1 and r["infra_error"] is None and r["steps"] == 4
    calls = r["tool_calls"]
    assert len(calls) == 120 and r["tool_calls_omitted"] == 0
    kept = [c for c in calls if not is_stub(c["arguments"])]
    assert 80 <= len(kept) < 120 and all(is_stub(c["arguments"]) for c in calls[len(kept):])  # kept first, then stubs
    size = sum(len(json.dumps(c[k], separators=(",", ":"))) for c in calls for k in ("arguments", "result")
               if not is_stub(c[k]))
    assert size <= 1 << 20, size  # 1 MiB an episode (docs/stages.md, "sca rollout")


def test_no_worker_to_start_evaluate_is_an_infrastructure_failure_and_is_retried(tmp_path, monkeypatch):
    """The sandbox cannot start a worker for the trial's evaluate(): nothing of the scoring ran, so the trial
    is an infrastructure failure (reward None), never a 0, and --retry-failed scores it."""
    refusals = refuse_the_first_worker_start(monkeypatch)
    model = ScriptedModel(lambda turn, conv: "THOUGHT: counted END THOUGHT\n4")  # no action: evaluate is the first run
    summary, (r,) = run(tmp_path, [CALC[0]], model, trials=1, concurrency=1)
    assert refusals == [1]
    assert (r["reward"], r["termination"], r["infra_error"]["kind"]) == (None, "final_answer", "sandbox"), r
    assert r["infra_error"]["message"].startswith("evaluate: no worker")
    assert summary.infra_failures == 1 and summary.scored == 0
    summary, (r,) = run(tmp_path, [CALC[0]], model, trials=1, concurrency=1, retry_failed=True)
    assert (r["reward"], r["infra_error"]) == (1, None) and summary.scored == 1


def test_reward_one_only_for_a_real_true(tmp_path):
    """evaluate() returning a truthy value that is no bool (the answer itself, 1, "True") scores 0."""
    truthy = [{**CALC[0], "id": f"calc-{name}", "instruction": f"How long is the string abcd? ({name})",
               "evaluation_function": f"def evaluate(answer):\n    return {expr}\n"}
              for name, expr in [("itself", "answer"), ("one", "int(answer == 4)"), ("text", "str(answer == 4)"),
                                 ("real", "answer == 4")]]
    _, records = run(tmp_path, truthy, ScriptedModel(lambda turn, conv: "THOUGHT: counted END THOUGHT\n4"), trials=1)
    got = {r["task_id"]: (r["reward"], r["evaluation"]["verdict"]) for r in records}
    assert got == {"calc-itself": (0, None), "calc-one": (0, None), "calc-text": (0, None), "calc-real": (1, True)}


def test_in_user_facing_environments_the_answer_is_the_last_message(tmp_path):
    question = {**CANCEL_TASK, "id": "how-many", "evaluation_function": "def evaluate(answer):\n    return answer == '3'\n"}
    model = ScriptedRoles(lambda turn, conv: "THOUGHT: counted END THOUGHT\n3", customer)
    _, records = run(tmp_path, [question], model, trials=1)
    assert (records[0]["final_answer"], records[0]["answer"], records[0]["reward"]) == ("3", "3", 1)


def test_a_backend_failing_for_good_is_an_infrastructure_failure(tmp_path):
    from sca.inference import ServerError

    class Down(ScriptedModel):
        def generate(self, conversations, sampling, tools=None):
            raise ServerError("the server kept failing")

    _, records = run(tmp_path, [CANCEL_TASK], Down(None), trials=1)
    assert records[0]["reward"] is None and records[0]["infra_error"]["kind"] == "inference"
    assert "kept failing" in records[0]["infra_error"]["message"]


# -- resume, and the command line -------------------------------------------------------------------
def _replay_reply(messages):
    if "# Your scenario" in messages[0]["content"]:
        return customer(sum(m["role"] == "assistant" for m in messages), messages)
    return [LOOK, CANCEL, DONE][sum(m["role"] == "assistant" for m in messages)]


def test_a_killed_rollout_resumes_per_task_and_trial(tmp_path):
    tasks = [{**CANCEL_TASK, "id": f"t{i}"} for i in range(4)]
    src = write_jsonl(tmp_path / "tasks.jsonl", tasks)
    out = tmp_path / "traj.jsonl"
    server = ReplayServer(_replay_reply, delay=0.05)
    cmd = [sys.executable, "-m", "sca_cli.app", "rollout", str(src), "-o", str(out), "--trials", "3", "--concurrency", "2",
           "--backend", "openai", "--model", "m", "--base-url", server.url, "--sandbox", "bwrap", "--workers", "1"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, cwd=ROOT)
        deadline = time.monotonic() + 120
        while (not out.exists() or len(out.read_text().splitlines()) < 3) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        before = len(read(out))
        assert 3 <= before < 12
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert again.returncode == 0, again.stderr
    finally:
        server.close()
    records = read(out)
    assert sorted(r["id"] for r in records) == sorted(f"t{i}#{j}" for i in range(4) for j in range(3))
    assert all(r["reward"] == 1 for r in records)
    meta = json.loads((tmp_path / "traj.jsonl.meta.json").read_text())
    assert meta["counts"]["resumed"] == before and meta["status"] == "finished"
    assert "trajectories" in again.stderr and "Pass@3" in again.stderr


def test_cli_bad_input_and_flags(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "env": "retail"}\n')
    r = CliRunner().invoke(app, ["rollout", str(bad), "-o", str(tmp_path / "o.jsonl")])
    assert r.exit_code == 2 and "bad.jsonl:1: instruction: missing required field" in r.output
    r = CliRunner().invoke(app, ["rollout", str(bad), "-o", str(tmp_path / "o.jsonl"), "--action-format", "xml"])
    assert r.exit_code == 2 and "--action-format must be one of code, json" in r.output
    r = CliRunner().invoke(app, ["rollout", str(bad), "-o", str(tmp_path / "o.jsonl"), "--user-base-url", "http://x"])
    assert r.exit_code == 2 and "--user-base-url goes with --user-backend openai" in r.output
    r = CliRunner().invoke(app, ["rollout", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "o.jsonl")])
    assert r.exit_code == 2 and "no such file" in r.output


@pytest.mark.slow
def test_the_default_model_on_cpu_writes_complete_records(tmp_path):
    tasks = [CANCEL_TASK, CALC[0]]
    src = write_jsonl(tmp_path / "t.jsonl", tasks)
    out = tmp_path / "traj.jsonl"
    r = CliRunner().invoke(app, ["rollout", str(src), "-o", str(out), "--trials", "1", "--max-steps", "1",
                                 "--max-new-tokens", "24", "--sandbox", "bwrap", "--concurrency", "2"])
    assert r.exit_code == 0, r.output
    records = read(out)
    assert sorted(x["task_id"] for x in records) == sorted(t["id"] for t in tasks)
    for x in records:
        TRAJECTORY.check(x)
        assert x["reward"] in (0, 1) and x["termination"] in ("final_answer", "user_stop", "max_steps", "context_limit")
        assert x["models"]["executor"]["model"] == "SmolLM2-135M-Instruct"
        assert x["tokens"]["executor"]["completion"] > 0
        ids = [t for t in x["assistant_token_ids"] if t is not None]
        assert len(x["assistant_token_ids"]) == sum(m["role"] == "assistant" for m in x["messages"])
        if hasattr(__import__("sca.inference.base", fromlist=["Generation"]).Generation, "token_ids"):
            assert ids and all(len(t) > 0 for t in ids)


# -- flags and limits reaching the episodes -------------------------------------------------------------
ACT = "THOUGHT: once more END THOUGHT\nACTION:\nprint(1)\n"  # an action, never an answer


def _cli_rollout(tmp_path, name, reply, *args):
    """`sca rollout` of CALC[0] on the openai backend, against a local server answering `reply(messages)`;
    the exit, the records, the request bodies the server got."""
    src = write_jsonl(tmp_path / "calc.tasks.jsonl", [CALC[0]])
    server = ReplayServer(reply)
    try:
        r = CliRunner().invoke(app, ["rollout", str(src), "-o", str(tmp_path / f"{name}.jsonl"), "--backend", "openai",
                                     "--model", "m", "--base-url", server.url, "--sandbox", "bwrap", *args])
    finally:
        server.close()
    assert r.exit_code == 0, r.output
    return r, read(tmp_path / f"{name}.jsonl"), server.requests


def test_max_steps_flag_reaches_the_executor(tmp_path):
    _, records, requests = _cli_rollout(tmp_path, "out", lambda messages: ACT, "--trials", "1", "--max-steps", "2")
    assert [(r["termination"], r["steps"]) for r in records] == [("max_steps", 2)]
    assert len(requests) == 2
    assert "You have at most 2 replies." in records[0]["messages"][0]["content"]


def test_seed_flag_changes_the_sampled_seeds(tmp_path):
    def seeds(name, seed):
        _, _, requests = _cli_rollout(tmp_path, name, lambda messages: "THOUGHT: counted END THOUGHT\n4",
                                      "--trials", "2", "--seed", seed)
        return sorted(body["seed"] for body in requests)

    first = seeds("a", "1")
    assert len(first) == 2 and len(set(first)) == 2
    assert seeds("b", "1") == first  # the same seed: the same sampling
    assert not set(seeds("c", "2")) & set(first)


def test_pass_at_k_of_the_summary_with_k_above_one(tmp_path):
    """Two trials of one task, the first wrong and the second right: Pass@1 50%, Pass@2 100% (one success
    among two trials, drawn two at a time)."""
    answers = iter(["3", "4"])
    r, records, _ = _cli_rollout(tmp_path, "out", lambda messages: f"THOUGHT: counted END THOUGHT\n{next(answers)}",
                                 "--trials", "2", "--concurrency", "1")
    assert sorted((x["trial"], x["reward"]) for x in records) == [(0, 0), (1, 1)]
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in r.output.splitlines() if line.startswith("│")]
    rows = {c[0]: c[1] for c in cells}
    assert rows["Pass@1"] == "50.0%" and rows["Pass@2"] == "100.0%"
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["summary"] == {"mean_reward": 0.5, "pass1": 0.5, "pass2": 1.0}


def test_summary_pass_at_k_per_task_and_with_fewer_trials_than_k():
    from stages.rollout import RolloutSummary, TaskTally

    # "a": 1 success in 4 trials, Pass@2 = 1 - C(3,2)/C(4,2) = 1/2; "b": one trial (the others infrastructure
    # failures), failed: Pass@2 taken as Pass@1 = 0; "c": 2 of 3, Pass@2 = 1 - C(1,2)/C(3,2) = 1
    s = RolloutSummary.build({}, {"a": TaskTally(4, 1), "b": TaskTally(1, 0), "c": TaskTally(3, 2)}, k=2)
    assert s.pass_k == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert s.pass1 == pytest.approx((1 / 4 + 0 + 2 / 3) / 3)
    assert (s.tasks, s.solved_none, s.solved_some, s.solved_all) == (3, 1, 2, 0)


def test_each_trial_samples_with_its_own_seeds(tmp_path):
    """The trial is part of what seeds an episode's turns: two trials of a task, played one after the other,
    never sample with the same seed (the same seed would make them the same trial twice)."""
    model = ScriptedModel(lambda turn, conv: ACT if turn == 0 else "THOUGHT: counted END THOUGHT\n4")
    _, records = run(tmp_path, [CALC[0]], model, trials=2, concurrency=1)
    assert sorted(r["trial"] for r in records) == [0, 1] and model.calls == [1, 1, 1, 1]
    seeds = [s.seed for s in model.samplings]
    assert None not in seeds and len(set(seeds)) == 4


def test_observations_are_cut_at_the_observation_limit(tmp_path):
    """ExecutorConfig.observation_limit: what an action printed (code) or a tool returned (json) is cut."""
    from sca.inference.base import Generation

    printing = ScriptedModel(lambda turn, conv: "THOUGHT: print END THOUGHT\nACTION:\nprint('y' * 100)\n"
                             if turn == 0 else "THOUGHT: counted END THOUGHT\n4")
    _, records = run(tmp_path, [CALC[0]], printing, name="code", trials=1, episode=ExecutorConfig(observation_limit=40))
    assert records[0]["messages"][3]["content"] == "OBSERVATION:\n" + "y" * 40 + "\n... (60 more characters cut)"

    class Calling(ScriptedModel):
        def generate(self, conversations, sampling, tools=None):
            call = {"id": "c0", "type": "function",
                    "function": {"name": "reverse_string", "arguments": json.dumps({"string": "z" * 100})}}
            return [Generation("", 5, 5, "tool_calls", tool_calls=[call]) if len(conv) == 2 else
                    Generation("THOUGHT: counted END THOUGHT\n4", 5, 5, "stop") for conv in conversations]

    _, records = run(tmp_path, [CALC[0]], Calling(None), name="json", trials=1,
                     episode=ExecutorConfig(action_format="json", observation_limit=40))
    tool = records[0]["messages"][3]
    assert tool["role"] == "tool" and tool["content"] == '"' + "z" * 39 + " ... (cut)"
    assert records[0]["tool_calls"][0]["result"] == "z" * 100  # the record keeps the whole result


def test_a_conversation_whose_generation_failed_is_an_inference_failure(tmp_path):
    """A backend that answers a batch but reports one conversation's generation as failed (finish_reason
    "error"): that trial is an infrastructure failure (reward None, kind inference), the other is scored."""
    from sca.inference.base import Generation

    class OneFails(ScriptedModel):
        def generate(self, conversations, sampling, tools=None):
            return [Generation("", 5, 0, "error") if "abcd" in conv[1]["content"] else
                    Generation("THOUGHT: reversed END THOUGHT\n'olleh'", 5, 5, "stop") for conv in conversations]

    summary, records = run(tmp_path, [CALC[0], CALC[2]], OneFails(None), trials=1)
    by_task = {r["task_id"]: r for r in records}
    failed = by_task["calc-number"]
    assert (failed["reward"], failed["termination"], failed["infra_error"]["kind"]) == (None, "error", "inference")
    assert failed["infra_error"]["message"] == "the agent model failed for this conversation"
    assert (by_task["calc-string"]["reward"], by_task["calc-string"]["infra_error"]) == (1, None)
    assert summary.infra == {"inference": 1} and summary.scored == 1


def test_transfer_and_out_of_scope_end_the_episode_as_stop_does(tmp_path):
    """tau2's user also ends on ###TRANSFER### and ###OUT-OF-SCOPE###: the episode ends there, as a user stop."""
    tokens = {"t-stop": "###STOP###", "t-transfer": "###TRANSFER###", "t-scope": "###OUT-OF-SCOPE###"}
    tasks = [{**CANCEL_TASK, "id": tid, "instruction": f"{CANCEL_TASK['instruction']} ({tid})"} for tid in tokens]

    def user(turn, conv):
        tid = next(t for t in tokens if f"({t})" in conv[0]["content"])
        return "Please cancel my order." if turn == 0 else f"I am done here. {tokens[tid]}"

    model = ScriptedRoles(lambda turn, conv: "THOUGHT: ask END THOUGHT\nWhich order?" if turn == 0 else LOOK, user)
    summary, records = run(tmp_path, tasks, model, trials=1)
    got = {r["task_id"]: (r["termination"], r["steps"], r["messages"][-1]["content"]) for r in records}
    assert got == {tid: ("user_stop", 1, f"I am done here. {token}") for tid, token in tokens.items()}
    assert summary.terminations == {"user_stop": 3}
