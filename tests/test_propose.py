"""`sca propose`: prompt, parsing, and whole challenger episodes with a scripted model."""

from __future__ import annotations

import json

import pytest

from _scripted import ScriptedModel
from _servers import ReplayServer
from sca.agent.challenger import challenger_prompt, normalise, parse_turn
from stages.propose import ProposeConfig, propose_file
from sandbox.config import SandboxConfig
from envs.retail import remove_order_ids
from sca.cat import ValidateConfig

ORDER = "#W2974929"  # Fatima Anderson's pending skateboard order

EXPLORE = """THOUGHT: Look at the user's orders first. END THOUGHT
ACTION:
```python
u = get_user_details(user_id="fatima_anderson_2157")
for oid in u["orders"]:
    print(oid, get_order_details(order_id=oid)["status"])
```
"""

FLAWED = f"""THOUGHT: A cancellation task. END THOUGHT
ANSWER:
<instruction>Cancel my skateboard order {ORDER} because I no longer need it.</instruction>
<evaluation_function>
def evaluate():
    o = get_order_details(order_id="{ORDER}")
    return o["status"] == "cancelled" and o["cancel_reason"] == "no longer needed"
</evaluation_function>
<solution>
cancel_pending_order(order_id="{ORDER}", reason="ordered by mistake")
</solution>
<failure_case>pass</failure_case>
<failure_case>get_user_details(user_id="fatima_anderson_2157")</failure_case>
<failure_case>cancel_pending_order(order_id="{ORDER}", reason="ordered by mistake")</failure_case>
"""

FIXED = FLAWED.replace(
    '<solution>\ncancel_pending_order(order_id="{0}", reason="ordered by mistake")'.format(ORDER),
    '<solution>\ncancel_pending_order(order_id="{0}", reason="no longer needed")'.format(ORDER),
)


def config(**over):
    v = ValidateConfig(SandboxConfig(backend="bwrap", workers=2, timeout=5.0))
    base = dict(env="retail", n=1, max_steps=5, concurrency=2, validate=v)
    base.update(over)
    return ProposeConfig(**base)


def read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_parse_turn_action_answer_and_invalid():
    t = parse_turn(EXPLORE)
    assert t.kind == "action" and "get_user_details" in t.code and "```" not in t.code
    assert t.thought == "Look at the user's orders first."
    t = parse_turn(FLAWED + "END ANSWER")
    assert t.kind == "answer" and len(t.task["failure_cases"]) == 3
    assert t.task["evaluation_function"].startswith("def evaluate():")
    assert parse_turn("I think we should cancel.").kind == "invalid"
    bad = parse_turn("THOUGHT: x END THOUGHT\nANSWER: <instruction>x</instruction>")
    assert bad.kind == "invalid" and "<evaluation_function>" in bad.error


def test_prompt_has_tools_policy_user_and_rules():
    from envs import make_env
    import random

    env = make_env("retail")
    ctx = env.challenger_context(random.Random(1))
    p = challenger_prompt(env, ctx)
    assert ctx["user_id"] in p
    for t in env.tools():
        assert t.signature() in p
    assert env.policy.strip()[:60] in p
    assert "Invent nothing" in p and "run your solution and your evaluation function" in p
    assert "END ACTION" in p and "<failure_case>" in p


def test_order_ids_removed_and_normalised():
    assert remove_order_ids("Cancel order #W2974929, please.") == "Cancel order, please."
    assert normalise("Cancel  my Order!") == normalise("cancel my order")


def test_episode_explores_fails_gets_traceback_and_revises(tmp_path):
    script = {0: EXPLORE, 1: FLAWED, 2: FIXED}
    model = ScriptedModel(lambda turn, conv: script[turn])
    out, rej = tmp_path / "tasks.jsonl", tmp_path / "failed.jsonl"
    s = propose_file(config(n=1), str(out), rejected=str(rej), model=model, show_progress=False)
    assert s.valid == 1 and s.episodes == 1 and s.failed == 0
    [rec] = read(out)
    assert rec["validation"]["valid"] is True
    assert ORDER not in rec["instruction"] and rec["meta"]["original_instruction"].count(ORDER) == 1
    kinds = [(a["kind"], a.get("valid"), a.get("reason")) for a in rec["meta"]["attempts"]]
    assert kinds == [("action", None, None), ("answer", False, "solution_fails"), ("answer", True, None)]
    transcript = rec["meta"]["transcript"]
    assert [m["role"] for m in transcript] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert "#W2974929 pending" in transcript[2]["content"]  # the observation of the ACTION
    assert "VALIDATION: The task is invalid" in transcript[4]["content"]
    assert transcript[3]["content"].rstrip().endswith("END ANSWER")  # stop string put back
    assert rec["meta"]["tokens"]["prompt"] == 300
    meta = json.loads((tmp_path / "tasks.jsonl.meta.json").read_text())
    assert meta["counts"]["accepted"] == 1 and meta["settings"]["env"] == "retail"
    # the written task passes `sca validate` on its own
    from stages.validate import validate_file
    v = validate_file(str(out), str(tmp_path / "re.jsonl"), config=config().validate, show_progress=False)
    assert v.accepted == 1


def test_failed_episodes_duplicates_and_budget(tmp_path):
    def script(turn, conv):
        return "I am not sure what to do." if turn % 2 == 0 else FIXED

    model = ScriptedModel(script)
    out, rej = tmp_path / "t.jsonl", tmp_path / "r.jsonl"
    s = propose_file(config(n=3, max_steps=2, max_episodes=4, concurrency=2), str(out), rejected=str(rej),
                     model=model, show_progress=False)
    # every episode writes the same task: one is kept, the rest are duplicates
    assert s.episodes == 4 and s.valid == 1 and s.duplicates == 3
    assert len(read(out)) == 1 and len(read(rej)) == 3
    assert all(r["meta"]["status"] == "duplicate" for r in read(rej))
    assert model.calls[0] == 2  # two episodes generated together in one call

    garbage = ScriptedModel(lambda turn, conv: "no idea")
    s = propose_file(config(n=2, max_steps=2, max_episodes=3), str(tmp_path / "g.jsonl"),
                     rejected=str(tmp_path / "gr.jsonl"), model=garbage, show_progress=False)
    assert s.valid == 0 and s.episodes == 3 and s.reasons == {"max_steps": 3}
    failed = read(tmp_path / "gr.jsonl")
    assert "FORMAT ERROR" in failed[0]["meta"]["transcript"][2]["content"]


def test_resume_continues_to_n(tmp_path):
    counter = iter(range(1000))

    def script(turn, conv):  # every episode writes a different (valid) task
        if turn == 0:
            return FIXED.replace("because I no longer need it", f"(ref {next(counter)}), I no longer need it")
        return "no idea"

    out = tmp_path / "t.jsonl"
    propose_file(config(n=1), str(out), model=ScriptedModel(script), show_progress=False)
    assert len(read(out)) == 1
    s = propose_file(config(n=3), str(out), model=ScriptedModel(script), show_progress=False)
    assert s.resumed_valid == 1 and s.valid == 2
    ids = [r["id"] for r in read(out)]
    assert len(ids) == len(set(ids)) == 3


def test_benchmark_test_tasks_count_as_duplicates(tmp_path):
    from sca.benchmarks import benchmark

    bench = benchmark("retail").tasks(split="test")[0].instruction
    task = FIXED.replace(f"Cancel my skateboard order {ORDER} because I no longer need it.", bench)
    s = propose_file(config(n=1, max_episodes=1), str(tmp_path / "t.jsonl"),
                     model=ScriptedModel(lambda turn, conv: task), show_progress=False)
    assert s.duplicates == 1 and s.valid == 0


@pytest.mark.slow
def test_real_default_model_short_run(tmp_path):
    """The bundled SmolLM2-135M on CPU: it rarely writes a valid task; the run must end cleanly."""
    from typer.testing import CliRunner
    from sca_cli.app import app

    out, rej = tmp_path / "t.jsonl", tmp_path / "r.jsonl"
    # calculation: its prompt is ~4x shorter than retail's, which on a 2-core CPU is most of the time
    r = CliRunner().invoke(app, ["propose", "--env", "calculation", "--n", "1", "--max-episodes", "2", "--max-steps", "2",
                                 "--concurrency", "2", "--max-new-tokens", "48", "-o", str(out), "--rejected", str(rej),
                                 "--sandbox", "bwrap", "--seed", "1"])
    assert r.exit_code == 0, r.output
    records = (read(out) if out.exists() else []) + read(rej)
    assert len(records) == 2
    for rec in records:
        assert rec["env"] == "calculation" and rec["meta"]["model"] == "SmolLM2-135M-Instruct"
        t = rec["meta"]["transcript"]
        assert t[0]["role"] == "user" and all(m["role"] in ("user", "assistant") for m in t)
        assert rec["meta"]["tokens"]["completion"] > 0
    meta = json.loads((tmp_path / "t.jsonl.meta.json").read_text())
    assert meta["status"] == "finished" and meta["settings"]["model"]["backend"] == "hf"


def test_cli_propose_over_two_openai_servers(tmp_path):
    """`sca propose --backend openai --base-url A --base-url B` against local servers replaying a script."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from typer.testing import CliRunner
    from sca_cli.app import app

    hits = []
    script = {0: EXPLORE + "END ACTION", 1: FIXED + "END ANSWER"}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            hits.append(self.server.server_port)
            turn = sum(m["role"] == "assistant" for m in body["messages"])
            reply = {"choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": script[turn]}}],
                     "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "t.jsonl"
        args = ["propose", "--env", "retail", "--n", "1", "--concurrency", "2", "--max-episodes", "2",
                "--backend", "openai", "--model", "served-model", "--sandbox", "bwrap", "-o", str(out),
                "--rejected", str(tmp_path / "r.jsonl")]
        for s in servers:
            args += ["--base-url", f"http://127.0.0.1:{s.server_port}/v1"]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
    finally:
        for s in servers:
            s.shutdown()
    recs = read(out)
    assert len(recs) == 1 and recs[0]["meta"]["model"] == "served-model"
    assert {p for p in hits} == {s.server_port for s in servers}  # round-robin over both
    meta = json.loads((tmp_path / "t.jsonl.meta.json").read_text())
    assert meta["settings"]["model"]["backend"] == "openai"


# -- what the challenger is told, and when an episode or a run ends ----------------------------------

# the solution reads a field that the order does not have: KeyError on line 3 of the code
CRASHING = FIXED.replace(
    f'<solution>\ncancel_pending_order(order_id="{ORDER}", reason="no longer needed")',
    f'<solution>\no = get_order_details(order_id="{ORDER}")\nprint(o["status"])\nreason = o["refund_reason"]\n'
    f'cancel_pending_order(order_id="{ORDER}", reason="no longer needed")',
)

GARBAGE = "I am not sure what to do."


def test_validation_reason_detail_and_traceback_reach_the_next_prompt(tmp_path):
    from sca.cat import REASONS

    seen = {}

    def script(turn, conv):
        seen[turn] = [dict(m) for m in conv]
        return {0: CRASHING, 1: FIXED}[turn]

    s = propose_file(config(n=1), str(tmp_path / "t.jsonl"), model=ScriptedModel(script), show_progress=False)
    assert s.valid == 1 and s.episodes == 1
    conv = seen[1]  # what the model was given for its second reply
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "user"]
    fb = conv[-1]["content"]
    assert fb.startswith("VALIDATION: The task is invalid: " + REASONS["solution_error"] + ".\n"), fb
    assert "the solution raised KeyError: 'refund_reason'\n" in fb  # the detail
    tb = fb.split("\nTraceback:\n", 1)[1]  # and the traceback of the code, line by line
    assert 'File "<code>", line 3, in <module>' in tb
    assert 'reason = o["refund_reason"]' in tb
    assert "\nKeyError: 'refund_reason'\n" in tb
    assert fb.rstrip().endswith(f"The environment was reset. Revise the task and answer again.\n\n"
                                f"({config().max_steps - 1} replies left)")


CANCEL_ACTION = f"""THOUGHT: Try the cancellation myself first. END THOUGHT
ACTION:
cancel_pending_order(order_id="{ORDER}", reason="no longer needed")
print(get_order_details(order_id="{ORDER}")["status"])
"""


def test_answer_after_own_writes_is_judged_from_the_initial_state(tmp_path):
    # the challenger cancels the order in an ACTION, then answers "cancel the order": its no-op run
    # must see the order pending again, or the task would be rejected as trivial (noop_passes)
    script = {0: CANCEL_ACTION, 1: FIXED}
    out = tmp_path / "t.jsonl"
    s = propose_file(config(n=1), str(out), rejected=str(tmp_path / "r.jsonl"),
                     model=ScriptedModel(lambda turn, conv: script.get(turn, GARBAGE)), show_progress=False)
    assert s.valid == 1 and s.failed == 0, s.reasons
    [rec] = read(out)
    assert rec["meta"]["transcript"][2]["content"].startswith("OBSERVATION:\ncancelled\n")  # the write happened
    assert [(a["kind"], a.get("status"), a.get("valid")) for a in rec["meta"]["attempts"]] == [
        ("action", "ok", None), ("answer", None, True)]
    assert rec["validation"]["runs"][0]["run"] == "evaluate after no action"


def test_resume_drops_an_instruction_already_in_the_output(tmp_path):
    out, rej = tmp_path / "t.jsonl", tmp_path / "r.jsonl"
    s = propose_file(config(n=1), str(out), rejected=str(rej), model=ScriptedModel(lambda turn, conv: FIXED),
                     show_progress=False)
    assert s.valid == 1 and len(read(out)) == 1
    # the same request again, only in another case and without the final full stop
    again = FIXED.replace(f"Cancel my skateboard order {ORDER} because I no longer need it.",
                          f"cancel my SKATEBOARD order {ORDER} because I no longer need it")
    assert again != FIXED
    s = propose_file(config(n=2, max_episodes=2), str(out), rejected=str(rej),
                     model=ScriptedModel(lambda turn, conv: again), show_progress=False)
    assert (s.resumed_valid, s.episodes, s.valid, s.duplicates) == (1, 1, 0, 1)
    assert [r["id"] for r in read(out)] == ["retail-s0-e00000"]  # not written twice
    [dup] = read(rej)
    assert dup["id"] == "retail-s0-e00001" and dup["meta"]["status"] == "duplicate"
    assert dup["validation"]["valid"] is True  # a valid task, dropped only as a duplicate


def test_default_episode_budget_is_twenty_per_wanted_task(tmp_path):
    model = ScriptedModel(lambda turn, conv: GARBAGE)
    cfg = config(n=1, max_steps=1)
    assert cfg.max_episodes is None
    s = propose_file(cfg, str(tmp_path / "t.jsonl"), rejected=str(tmp_path / "r.jsonl"), model=model,
                     show_progress=False)
    assert s.episodes == 20 and s.valid == 0 and s.reasons == {"max_steps": 20}
    assert model.calls == [1] * 20  # n=1: one episode at a time, one reply each
    assert len(read(tmp_path / "r.jsonl")) == 20


def test_max_steps_is_the_exact_number_of_replies(tmp_path):
    turns = []

    def script(turn, conv):
        turns.append(turn)
        return GARBAGE

    rej = tmp_path / "r.jsonl"
    s = propose_file(config(n=1, max_steps=3, max_episodes=2), str(tmp_path / "t.jsonl"), rejected=str(rej),
                     model=ScriptedModel(script), show_progress=False)
    assert s.episodes == 2 and s.reasons == {"max_steps": 2}
    assert sorted(turns) == [0, 0, 1, 1, 2, 2]  # three replies asked of each episode, no more
    for rec in read(rej):
        assert rec["meta"]["steps"] == 3
        t = rec["meta"]["transcript"]
        assert [m["role"] for m in t] == ["user", "assistant", "user", "assistant", "user", "assistant"]
        assert t[0]["content"].startswith("Begin. You have 3 replies in all")
        assert t[2]["content"].endswith("(2 replies left)") and t[4]["content"].endswith("(1 replies left)")


def _observations(tmp_path, name, cfg, action):
    script = {0: action}
    rej = tmp_path / f"{name}.r.jsonl"
    propose_file(cfg, str(tmp_path / f"{name}.jsonl"), rejected=str(rej),
                 model=ScriptedModel(lambda turn, conv: script.get(turn, GARBAGE)), show_progress=False)
    [rec] = read(rej)
    return rec["meta"]["transcript"][2]["content"]


def test_long_observations_are_cut_at_the_limit(tmp_path):
    action = "THOUGHT: print a lot END THOUGHT\nACTION:\nprint('x' * 5000)\nEND ACTION"
    assert ProposeConfig().observation_limit == 4000
    obs = _observations(tmp_path, "default", config(max_steps=2, max_episodes=1), action)
    assert obs == "OBSERVATION:\n" + "x" * 4000 + "\n... (1000 more characters cut)\n\n(1 replies left)"
    obs = _observations(tmp_path, "small", config(max_steps=2, max_episodes=1, observation_limit=100), action)
    assert obs == "OBSERVATION:\n" + "x" * 100 + "\n... (4900 more characters cut)\n\n(1 replies left)"
    short = "THOUGHT: a little END THOUGHT\nACTION:\nprint('x' * 100)\nEND ACTION"
    obs = _observations(tmp_path, "exact", config(max_steps=2, max_episodes=1, observation_limit=100), short)
    assert obs == "OBSERVATION:\n" + "x" * 100 + "\n\n(1 replies left)"  # at the limit: nothing cut


def test_cli_max_steps_and_default_budget_reach_the_run(tmp_path):
    from typer.testing import CliRunner
    from sca_cli.app import app

    server = ReplayServer(lambda messages: GARBAGE)
    try:
        out, rej = tmp_path / "t.jsonl", tmp_path / "r.jsonl"
        r = CliRunner().invoke(app, ["propose", "--env", "retail", "--n", "1", "--max-steps", "2",
                                     "--backend", "openai", "--model", "m", "--base-url", server.url,
                                     "--sandbox", "bwrap", "-o", str(out), "--rejected", str(rej)])
        assert r.exit_code == 0, r.output
    finally:
        server.close()
    failed = read(rej)
    assert len(failed) == 20  # no --max-episodes: 20 x n
    assert all(rec["meta"]["steps"] == 2 for rec in failed)
    assert all(sum(m["role"] == "assistant" for m in rec["meta"]["transcript"]) == 2 for rec in failed)
    assert len(server.requests) == 40
    meta = json.loads((tmp_path / "t.jsonl.meta.json").read_text())
    assert meta["settings"]["max_steps"] == 2 and meta["settings"]["max_episodes"] is None
