"""`sca eval`: the executor on the benchmarks, scored by their official scorers (tau2's evaluator,
the M3ToolEval-style tolerant scorer), with Pass@k and bootstrap intervals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _sandbox_util import backend_or_skip, refuse_the_first_worker_start
from _scripted import ScriptedRoles
from _servers import ReplayServer
from typer.testing import CliRunner

from sandbox.config import SandboxConfig
from sca.records import EVAL_RESULT
from sca_cli.app import app
from stages.eval import EvalConfig, eval_file


@pytest.fixture(autouse=True)
def _bwrap():
    backend_or_skip("bwrap")


def read(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def config(**over):
    base = dict(trials=1, concurrency=8, sandbox=SandboxConfig(backend="bwrap", workers=2))
    base.update(over)
    return EvalConfig(**base)


# -- M3ToolEval-style environments: the reference solutions pass, wrong answers fail --------------------
def solver(env_name):
    """An executor that runs each task's reference solution in an ACTION, then gives its answer."""
    from sca.benchmarks import benchmark

    by_instruction = {t.instruction: t for t in benchmark(env_name).tasks("test")}

    def agent(turn, conv):
        task = by_instruction[conv[1]["content"]]
        if turn == 0:
            return f"THOUGHT: solve it END THOUGHT\nACTION:\n{task.data['solution']}\nprint(repr(answer))\n"
        printed = conv[-1]["content"].split("\n")[1].strip()  # the OBSERVATION's first line: repr(answer)
        return f"THOUGHT: done END THOUGHT\n{printed}"

    return agent


@pytest.mark.parametrize("env_name", ["calculation", "web_browsing"])
def test_reference_solutions_score_one_and_wrong_answers_zero(tmp_path, env_name):
    out = tmp_path / "r.jsonl"
    summary = eval_file(config(envs=[env_name], trials=2), str(out), executor_model=ScriptedRoles(solver(env_name)),
                        show_progress=False)
    records = read(out)
    from sca.benchmarks import benchmark

    assert len(records) == 2 * len(benchmark(env_name).tasks("test"))
    for r in records:
        EVAL_RESULT.check(r)
        assert r["scorer"] == "m3_tolerant" and r["split"] == "test" and r["task_id"].startswith(f"{env_name}/")
        assert r["reward"] == 1, (r["task_id"], r["final_answer"], r["evaluation"])
    m = summary["envs"][env_name]
    assert m["pass1"] == 1.0 and m["pass_k"] == 1.0 and m["tasks"] == len(records) // 2 and m["trials"] == len(records)
    wrong = ScriptedRoles(lambda turn, conv: "THOUGHT: guess END THOUGHT\n-1")
    summary = eval_file(config(envs=[env_name], limit=5), str(tmp_path / "w.jsonl"), executor_model=wrong,
                        show_progress=False)
    assert summary["envs"][env_name]["pass1"] == 0.0
    assert all(r["reward"] == 0 and r["answer"] == -1 for r in read(tmp_path / "w.jsonl"))


def test_resume_per_task_and_trial_and_the_summary_file(tmp_path):
    out = tmp_path / "r.jsonl"
    first = eval_file(config(envs=["calculation"], limit=3, trials=2), str(out),
                      executor_model=ScriptedRoles(solver("calculation")), show_progress=False)
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:-2]) + "\n" + lines[-1][:10])  # two results lost, the last line torn
    model = ScriptedRoles(solver("calculation"))
    again = eval_file(config(envs=["calculation"], limit=3, trials=2), str(out), executor_model=model,
                      show_progress=False)
    records = read(out)
    assert sorted(r["id"] for r in records) == sorted(f"calculation/{t}#{j}" for t in
                                                      {r["benchmark_task_id"] for r in records} for j in range(2))
    assert len(records) == 6 and len([c for c in model.conversations if len(c) == 2]) == 2  # only the lost two ran
    saved = json.loads((tmp_path / "r.jsonl.summary.json").read_text())
    assert saved["envs"] == again["envs"] == first["envs"]
    assert saved["trials"] == 2 and saved["k"] == 2 and "paper" not in saved  # not a model the paper measured
    meta = json.loads((tmp_path / "r.jsonl.meta.json").read_text())
    assert meta["stage"] == "eval" and meta["summary"]["calculation"]["pass1"] == 1.0


def test_an_infrastructure_failure_stays_out_of_the_summary_and_is_retried(tmp_path, monkeypatch):
    """The sandbox cannot start a worker for the first task's action: that trial is recorded with reward
    None and left out of the summary, also when a rerun resumes the file; --retry-failed runs it again."""
    refusals = refuse_the_first_worker_start(monkeypatch)
    out = tmp_path / "r.jsonl"

    def evaluate(**over):
        cfg = config(envs=["calculation"], limit=2, concurrency=1, sandbox=SandboxConfig(backend="bwrap", workers=1),
                     **over)
        return eval_file(cfg, str(out), executor_model=ScriptedRoles(solver("calculation")), show_progress=False)

    m = evaluate()["envs"]["calculation"]
    assert refusals == [1] and (m["tasks"], m["trials"], m["excluded"], m["pass1"]) == (1, 1, 1, 1.0), m
    assert sorted(r["reward"] for r in read(out) if r["reward"] is not None) == [1]
    m = evaluate()["envs"]["calculation"]  # resumed: nothing to run, the failure still left out
    assert (m["tasks"], m["trials"], m["excluded"], m["pass1"]) == (1, 1, 1, 1.0), m
    m = evaluate(retry_failed=True)["envs"]["calculation"]
    assert (m["tasks"], m["trials"], m["excluded"], m["pass1"]) == (2, 2, 0, 1.0), m
    assert sorted(r["reward"] for r in read(out)) == [1, 1] and len({r["id"] for r in read(out)}) == 2


def _cli_eval(tmp_path, name, *args):
    server = ReplayServer(lambda messages: "THOUGHT: guess END THOUGHT\n0")
    try:
        return CliRunner().invoke(app, ["eval", *args, "--backend", "openai", "--base-url", server.url,
                                        "--model", "meta-llama/Llama-3.1-8B-Instruct", "--sandbox", "bwrap",
                                        "-o", str(tmp_path / name)])
    finally:
        server.close()


def test_cli_table_and_the_papers_row_only_where_the_benchmark_is_the_papers(tmp_path):
    fixture = Path(__file__).parent / "fixtures" / "m3tooleval"
    r = _cli_eval(tmp_path, "m3.jsonl", "--env", "calculation", "--m3tooleval-dir", str(fixture), "--trials", "4")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "m3.jsonl.summary.json").read_text())
    assert summary["paper"]["model"] == "Llama-3.1-8B-Instruct"
    assert summary["paper"]["table1"] == {"calculation": {"pass1": 20.3, "pass4": 43.8}}
    assert summary["paper"]["not_comparable"] == {}
    assert "Pass@4" in r.output and "20.3 / 43.8" in r.output and "no paper figure" not in r.output
    # our held-out tasks, a subset, 2 trials: the paper measured none of that; say why, show no figure
    r = _cli_eval(tmp_path, "held.jsonl", "--env", "calculation", "--limit", "2", "--trials", "2")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "held.jsonl.summary.json").read_text())
    assert summary["paper"]["table1"] == {}
    assert summary["paper"]["not_comparable"]["calculation"].startswith("our held-out tasks")
    assert "Pass@2" in r.output and "20.3" not in r.output
    assert "no paper figure beside calculation: our held-out tasks" in " ".join(r.output.split())


def test_which_runs_the_papers_table_1_compares_with():
    from stages.eval import paper_benchmark_envs

    m3 = "/some/checkout"
    assert paper_benchmark_envs(EvalConfig(envs=["retail", "calculation", "web_browsing"], m3tooleval_dir=m3)) == {
        "retail": None, "calculation": None, "web_browsing": None}
    why = paper_benchmark_envs(EvalConfig(envs=["all"], split="train", limit=3, trials=2))
    assert why["retail"].startswith("split 'train'") and why["airline"].startswith("split 'train'")
    assert why["calculation"].startswith("our held-out") and why["web_browsing"].startswith("our held-out")
    assert paper_benchmark_envs(EvalConfig(envs=["airline"]))["airline"].startswith("the paper left out")
    assert paper_benchmark_envs(EvalConfig(envs=["airline"], drop_noop_solvable=True)) == {"airline": None}
    assert paper_benchmark_envs(EvalConfig(envs=["retail"], limit=5))["retail"] == "--limit 5: a subset of the tasks"
    assert paper_benchmark_envs(EvalConfig(envs=["retail"], trials=2))["retail"].startswith("2 trials")


def test_the_summary_is_this_runs_tasks_and_trials_only(tmp_path):
    """The results file also holds an earlier run's other tasks and more trials: the summary of a run
    with fewer is computed from its own (task, trial) pairs; with -o - it is computed from memory."""
    out = tmp_path / "r.jsonl"
    eval_file(config(envs=["calculation"], limit=4, trials=3), str(out),
              executor_model=ScriptedRoles(solver("calculation")), show_progress=False)
    assert len(read(out)) == 12
    fewer = eval_file(config(envs=["calculation"], limit=2, trials=2), str(out),
                      executor_model=ScriptedRoles(solver("calculation")), show_progress=False)
    m = fewer["envs"]["calculation"]
    assert (m["tasks"], m["trials"]) == (2, 4)
    stdout = eval_file(config(envs=["calculation"], limit=2, trials=1), "-",
                       executor_model=ScriptedRoles(solver("calculation")), show_progress=False)
    m = stdout["envs"]["calculation"]
    assert (m["tasks"], m["trials"], m["pass1"]) == (2, 2, 1.0)


def test_cli_errors(tmp_path):
    r = CliRunner().invoke(app, ["eval", "--env", "chess", "-o", str(tmp_path / "r.jsonl")])
    assert r.exit_code == 2 and "no benchmark for chess" in r.output
    r = CliRunner().invoke(app, ["eval", "--env", "calculation", "--split", "dev", "-o", str(tmp_path / "r.jsonl")])
    assert r.exit_code == 2 and "calculation: no split 'dev'" in r.output
    r = CliRunner().invoke(app, ["eval", "--env", "retail", "--trials", "2", "--pass-k", "3", "-o", str(tmp_path / "r.jsonl")])
    assert r.exit_code == 2 and "pass_k (--pass-k) must be between 1 and trials (2), got 3" in r.output


# -- TauBench: tau2's own evaluator, through sca eval ----------------------------------------------------
def gold_replayer(domain):
    """An executor that replays each tau2 task's gold actions in one ACTION, then says every piece of
    required information; the scripted user names the task in its first message."""
    from sca.benchmarks import benchmark

    tasks = {t.id: t.data for t in benchmark(domain).tasks("test")}

    def user(turn, conv):
        task_id = conv[0]["content"].split("TASK-ID ", 1)[1].split()[0] if "TASK-ID " in conv[0]["content"] else "?"
        return f"I need help with task {task_id}." if turn == 0 else "Thank you. ###STOP###"

    def agent(turn, conv):
        task_id = conv[1]["content"].split("task ", 1)[1].rstrip(".")
        criteria = tasks[task_id]["evaluation_criteria"]
        if turn == 0:
            calls = "\n".join(f"try:\n    {a['name']}(**{a['arguments']!r})\nexcept ToolError as e:\n    print(e)"
                              for a in criteria.get("actions") or [])
            return f"THOUGHT: do it END THOUGHT\nACTION:\n{calls or 'pass'}\n"
        info = "; ".join(criteria.get("communicate_info") or []) or "All done."
        return f"THOUGHT: tell the user END THOUGHT\n{info}"

    return agent, user


def idle(domain):
    def user(turn, conv):
        return "Please help me." if turn == 0 else "###STOP###"

    return (lambda turn, conv: "THOUGHT: nothing to do END THOUGHT\nI cannot help with that."), user


@pytest.mark.slow
@pytest.mark.parametrize("domain", ["retail", "airline"])
def test_tau2s_evaluator_scores_gold_replays_one_and_doing_nothing_zero(tmp_path, monkeypatch, domain):
    """Every test task: replaying the gold actions and saying the required information scores 1;
    doing nothing scores 0 on every task that needs an action (and 1 on the tasks tau2 itself scores
    1 without any, which --drop-noop-solvable leaves out)."""
    from sca.agent import user_sim
    from sca.benchmarks import benchmark
    from sca.benchmarks.tau2 import noop_solvable

    tasks = benchmark(domain).tasks("test")
    by_instruction = {t.instruction.strip(): t.id for t in tasks}
    real = user_sim.system_prompt
    # the scripted user learns its task id from its own scenario (the real user gets the scenario only)
    monkeypatch.setattr(user_sim, "system_prompt",
                        lambda instruction: real(instruction) + f"\nTASK-ID {by_instruction[instruction.strip()]} ")
    agent, user = gold_replayer(domain)
    out = tmp_path / "gold.jsonl"
    summary = eval_file(config(envs=[domain], concurrency=8), str(out), executor_model=ScriptedRoles(agent, user),
                        show_progress=False)
    records = read(out)
    assert len(records) == len(tasks)
    failures = [(r["benchmark_task_id"], r["scorer_detail"]) for r in records if r["reward"] != 1]
    assert not failures, failures[:2]
    assert all(r["scorer"] == "tau2" and r["scorer_detail"]["tau2"]["reward_basis"] for r in records)
    assert all(r["scorer_detail"]["replay_mismatches"] == [] for r in records)  # our tools answer as tau2's
    assert summary["envs"][domain]["pass1"] == 1.0

    agent, user = idle(domain)
    out = tmp_path / "idle.jsonl"
    summary = eval_file(config(envs=[domain], concurrency=8), str(out), executor_model=ScriptedRoles(agent, user),
                        show_progress=False)
    rewards = {r["benchmark_task_id"]: r["reward"] for r in read(out)}
    expected = {t.id: int(noop_solvable(domain, t.data)) for t in tasks}
    assert rewards == expected
    needs_action = [t.id for t in tasks if t.data["evaluation_criteria"].get("actions")]
    assert needs_action and all(rewards[i] == 0 for i in needs_action if not expected[i])
    noop = sum(expected.values())
    summary = eval_file(config(envs=[domain], drop_noop_solvable=True), str(tmp_path / "drop.jsonl"),
                        executor_model=ScriptedRoles(agent, user), show_progress=False)
    assert summary["dropped_noop_solvable"] == {domain: noop}
    assert summary["envs"][domain]["tasks"] == len(tasks) - noop and summary["envs"][domain]["pass1"] == 0.0


def _episode(tool_calls, messages=None):
    from types import SimpleNamespace

    from sca.agent.executor import ExecutorConfig

    messages = messages or [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "THOUGHT: look END THOUGHT\nACTION:\nx\nEND ACTION"},
                            {"role": "user", "content": "OBSERVATION:\n..."},
                            {"role": "assistant", "content": "THOUGHT: ok END THOUGHT\nDone."},
                            {"role": "user", "content": "###STOP###"}]
    return SimpleNamespace(task_id="t", trial=0, final_answer="Done.", answer=None, messages=messages,
                           tool_calls=tool_calls, config=ExecutorConfig(), termination="user_stop")


def test_tau2_scoring_reports_replay_mismatches_and_survives_what_tau2_cannot_take():
    from envs import make_env
    from sca.benchmarks import benchmark
    from sca.benchmarks.tau2 import tau2_scorer

    task = benchmark("retail").tasks("test")[0]
    score = tau2_scorer("retail", task.data)
    real = make_env("retail").call("get_order_details", {"order_id": "#W2974929"})
    honest = {"message": 2, "name": "get_order_details", "arguments": {"order_id": "#W2974929"}, "result": real,
              "error": None}
    reward, detail = score(_episode([honest]))
    assert detail["status"] == "ok" and detail["replay_mismatches"] == []
    drifted = dict(honest, result={**real, "status": "delivered" if real["status"] != "delivered" else "pending"})
    refused = {"message": 2, "name": "get_order_details", "arguments": {"order_id": "#W0000000"}, "result": None,
               "error": "Order not found"}
    wrongly_ok = dict(refused, result={"order_id": "#W0000000"}, error=None)
    _, detail = score(_episode([drifted, refused, wrongly_ok]))
    assert [m["name"] for m in detail["replay_mismatches"]] == ["get_order_details", "get_order_details"]
    assert detail["replay_mismatches"][0]["tau2"].startswith('{"order_id": "#W2974929"')
    assert detail["replay_mismatches"][1]["tau2"].startswith("Error:")
    # a call no tool of ours ran (a name that is no string) is not shown to tau2, whose types would refuse it
    bad = {"message": 2, "name": ["get_order_details"], "arguments": {}, "result": None, "error": "x"}
    reward, detail = score(_episode([bad]))
    assert detail["status"] == "ok" and detail["replay_mismatches"] == []
    # a record the conversion cannot read (a message that is no text): the trial scores 0, the stage goes on
    broken = _episode([honest])
    broken.messages[4] = {"role": "assistant", "content": ["not", "text"]}
    reward, detail = score(broken)
    assert reward == 0 and detail["status"] == "scorer_error" and detail["error"].startswith(("TypeError", "Attrib"))


# -- flags reaching the episodes and the summary ---------------------------------------------------------
def _cli_eval_replies(tmp_path, name, reply, *args):
    """`sca eval` of the first held-out calculation task on the openai backend, against a local server that
    answers `reply(messages)`; the exit, the results, the request bodies the server got."""
    server = ReplayServer(reply)
    try:
        r = CliRunner().invoke(app, ["eval", "--env", "calculation", "--limit", "1", "--backend", "openai",
                                     "--base-url", server.url, "--model", "m", "--sandbox", "bwrap",
                                     "-o", str(tmp_path / f"{name}.jsonl"), *args])
    finally:
        server.close()
    assert r.exit_code == 0, r.output
    return r, read(tmp_path / f"{name}.jsonl"), server.requests


def _first_calculation_answer():
    from sca.benchmarks import benchmark

    return benchmark("calculation").tasks("test")[0].data["answer"]


def test_max_steps_flag_reaches_the_executor(tmp_path):
    _, results, requests = _cli_eval_replies(tmp_path, "r", lambda m: "THOUGHT: again END THOUGHT\nACTION:\nprint(1)\n",
                                             "--trials", "1", "--max-steps", "3")
    assert [(x["termination"], x["steps"]) for x in results] == [("max_steps", 3)]
    assert len(requests) == 3


def test_pass_k_flag_differs_from_trials(tmp_path):
    """--trials 3 --pass-k 2: one success in three trials is Pass@1 1/3, Pass@2 = 1 - C(2,2)/C(3,2) = 2/3 and
    pass^2 = 0 (Pass@3 would be 1)."""
    right = _first_calculation_answer()
    answers = iter(["-1", right, "-1"])
    r, results, _ = _cli_eval_replies(tmp_path, "r", lambda m: f"THOUGHT: answer END THOUGHT\n{next(answers)}",
                                      "--trials", "3", "--pass-k", "2", "--concurrency", "1")
    assert sorted(x["reward"] for x in results) == [0, 0, 1]
    summary = json.loads((tmp_path / "r.jsonl.summary.json").read_text())
    assert (summary["trials"], summary["k"]) == (3, 2)
    m = summary["envs"]["calculation"]
    assert m["k"] == 2 and (m["pass1"], m["pass_k"], m["pass_hat_k"]) == pytest.approx((1 / 3, 2 / 3, 0.0))
    assert "Pass@2" in r.output and "pass^2" in r.output and "Pass@3" not in r.output


def test_seed_flag_changes_the_sampled_seeds(tmp_path):
    def seeds(name, seed):
        _, _, requests = _cli_eval_replies(tmp_path, name, lambda m: "THOUGHT: guess END THOUGHT\n0",
                                           "--trials", "2", "--seed", seed)
        return sorted(body["seed"] for body in requests)

    first = seeds("a", "5")
    assert len(set(first)) == 2 and seeds("b", "5") == first
    assert not set(seeds("c", "6")) & set(first)


def test_the_table_has_one_pass_column_when_k_is_1(tmp_path):
    """With k = 1, Pass@k and pass^k are Pass@1: the header was `Pass@1 | Pass@1 | pass^1`."""
    from sca_cli.eval_cmd import print_summary

    m = {"tasks": 2, "trials": 2, "excluded": 0, "pass1": 0.5, "pass1_ci": [0.0, 1.0], "pass_k": 0.5,
         "pass_k_ci": [0.0, 1.0], "pass_hat_k": 0.5, "pass_hat_k_ci": [0.0, 1.0]}

    def header(k):
        from sca_cli.common import _console, set_output

        set_output(quiet=False)  # as `sca eval` without -q (an earlier test's -q may linger)
        with _console(True).capture() as cap:
            print_summary({"k": k, "trials": 2, "split": "test", "model": "m", "envs": {"calculation": m}})
        return cap.get()

    one = header(1)
    assert one.count("Pass@1") == 1 and "pass^1" not in one and "50.0 [0.0, 100.0]" in one
    two = header(2)
    assert two.count("Pass@1") == 1 and "Pass@2" in two and "pass^2" in two and two.count("50.0 [0.0, 100.0]") == 3
