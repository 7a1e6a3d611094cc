"""The example scripts: the paper's recipes use flags that exist, the tiny loop runs end to end, the ablation
runs its plumbing with a scripted model server, and bench/gpu_check.sh passes only real flags and says PASS or
FAIL per item."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from _sandbox_util import backend_or_skip
from typer.testing import CliRunner

from sca_cli.app import app

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["quickstart.sh", "tiny_cpu.sh", "self_improve.sh", "distill.sh", "ablations.sh", "../bench/gpu_check.sh"]


def scripts_env(**extra: str) -> dict[str, str]:
    """The environment to run an example script in: the `sca` of the running interpreter (installed next to
    it, as in a virtual environment, or in its scripts directory) first on PATH, with that interpreter's
    python3, so that a script runs this checkout even from a virtual environment that is not activated.
    Fails, saying so, where this interpreter has no `sca`."""
    places = [Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))]
    for place in places:
        if os.access(place / "sca", os.X_OK):
            return {**os.environ, **extra, "PATH": os.pathsep.join([str(place), os.environ.get("PATH", "")])}
    pytest.fail(f"no `sca` command for {sys.executable} (looked in {', '.join(map(str, dict.fromkeys(places)))}): "
                "install the project into this interpreter's environment (pip install -e .)")


def test_the_scripts_find_the_sca_of_this_interpreter(monkeypatch):
    """Even with a PATH that holds no `sca` (a virtual environment run without activating it)."""
    from sca import __version__

    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin"]))
    env = scripts_env()
    found = Path(shutil.which("sca", path=env["PATH"]))
    assert found.parent == Path(env["PATH"].split(os.pathsep)[0])
    out = subprocess.run(["bash", "-c", "sca --version"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"sca {__version__}", out.stderr


def sca_calls(script: str) -> list[tuple[str, list[str]]]:
    """Each `sca <command>` (or `-m sca_cli.app <command>`) of a script, with the flags it passes."""
    text = (ROOT / "examples" / script).read_text().replace("\\\n", " ")
    calls = []
    for line in text.splitlines():
        m = re.search(r"(?:^|\s)(?:sca|-m sca_cli\.app)\s+([a-z]+)\b(.*)", line.split("#", 1)[0])
        if m and not line.lstrip().startswith("#"):
            calls.append((m.group(1), re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(2))))
    return calls


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_valid_shell_and_pass_only_real_flags(script):
    subprocess.run(["bash", "-n", str(ROOT / "examples" / script)], check=True)
    for command, flags in sca_calls(script):
        help_text = CliRunner().invoke(app, [command, "--help"], terminal_width=200).output
        assert "Usage:" in help_text, (script, command)
        for flag in flags:
            assert flag in help_text, f"{script}: sca {command} has no {flag}"


def test_the_recipes_run_every_stage_of_the_loop():
    stages = {script: [c for c, _ in sca_calls(script)] for script in SCRIPTS}
    for script in ("tiny_cpu.sh", "self_improve.sh", "distill.sh", "ablations.sh"):
        assert {"propose", "validate", "rollout", "train", "eval", "report"} <= set(stages[script]), script
    train = dict(sca_calls("self_improve.sh"))["train"]
    assert "--preset" in train
    assert "--algo" in train and "rft" in (ROOT / "examples" / "self_improve.sh").read_text()
    assert "--algo sft" in (ROOT / "examples" / "distill.sh").read_text()
    assert "examples/tiny_cpu.sh" in (ROOT / "examples" / "quickstart.sh").read_text()


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the suite's 900 s is too short on a loaded 2-core machine
def test_the_tiny_loop_runs_on_cpu(tmp_path):
    """propose -> validate -> rollout -> train (rft) -> eval (base and trained) -> report, bundled model."""
    backend_or_skip("bwrap")
    out = tmp_path / "tiny"
    env = scripts_env(OUT=str(out), SANDBOX="bwrap")
    proc = subprocess.Popen(["bash", "examples/tiny_cpu.sh"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=2200)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and every stage it started, not just bash
        _, stderr = proc.communicate()
        pytest.fail(f"the tiny loop ran past 2200 s:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    trajectories = [json.loads(x) for x in (out / "trajectories.jsonl").read_text().splitlines()]
    assert trajectories and any(t["reward"] == 1 for t in trajectories)
    assert (out / "ckpt" / "config.json").exists() and (out / "ckpt" / "train_log.jsonl").read_text()
    for name in ("eval.base", "eval.trained"):
        summary = json.loads((out / f"{name}.jsonl.summary.json").read_text())
        assert summary["envs"]["retail"]["trials"] == 1
    trained = json.loads((out / "eval.trained.jsonl.meta.json").read_text())
    assert trained["settings"]["models"]["executor"]["path"] == str(out / "ckpt")
    page = (out / "report" / "README.md").read_text()
    for plot in ("funnel.png", "rewards_trajectories.png", "pass_at_k.png", "training.png"):
        assert (out / "report" / plot).stat().st_size > 1000 and f"({plot})" in page


# -- examples/ablations.sh: the comparison across task formats -------------------------------------------------

def test_the_ablation_runs_each_format_with_its_reward():
    """Every format is proposed with --task-format, PAE's rollout with a judge reward; the cat and eval-only
    pools are audited; a labelling sheet per format; training is rft, as the rebuttal's self-improvement."""
    text = (ROOT / "examples" / "ablations.sh").read_text()
    calls = sca_calls("ablations.sh")
    assert 'FORMATS=${FORMATS:-"cat eval-only instruction-only"}' in text
    assert "--task-format" in dict(calls)["propose"] and "--algo rft" in text
    assert 'reward=(--reward judge --judge-model "$JUDGE_MODEL")' in text and "--reward evaluate" in text
    assert '$fmt != instruction-only' in text  # instruction-only tasks have no solution to mutate
    audits = [flags for command, flags in calls if command == "audit"]
    assert ["--sandbox"] in audits and ["--sheet", "--tasks"] in audits and ["--labels"] in audits
    for variable in ("MODEL=${MODEL:-", "BACKEND=${BACKEND:-vllm}"):  # as in self_improve.sh
        assert variable in text and variable in (ROOT / "examples" / "self_improve.sh").read_text()


LOOK = 'THOUGHT: look the order up END THOUGHT\nACTION:\nprint(get_order_details(order_id="#W2974929")["status"])\n'
CANCEL = ('THOUGHT: cancel it END THOUGHT\nACTION:\ncancel_pending_order(order_id="#W2974929", '
          'reason="no longer needed")\n')
DONE = "THOUGHT: it is done END THOUGHT\nYour order is cancelled."
EXPLORE = ('THOUGHT: Look at the user first. END THOUGHT\nACTION:\n'
           'print(get_user_details(user_id="fatima_anderson_2157")["orders"])\n')
INSTRUCTION = "<instruction>Cancel my skateboard order #W2974929 because I no longer need it.</instruction>\n"
EVALUATE = ('<evaluation_function>\ndef evaluate():\n    o = get_order_details(order_id="#W2974929")\n'
            '    return o["status"] == "cancelled" and o["cancel_reason"] == "no longer needed"\n'
            '</evaluation_function>\n')
CAT_REST = ('<solution>\ncancel_pending_order(order_id="#W2974929", reason="no longer needed")\n</solution>\n'
            '<failure_case>pass</failure_case>\n'
            '<failure_case>get_user_details(user_id="fatima_anderson_2157")</failure_case>\n'
            '<failure_case>cancel_pending_order(order_id="#W2974929", reason="ordered by mistake")</failure_case>\n')
#: the challenger's answer in each format, told by the words of its prompt (sca.agent.challenger)
ANSWERS = {"an instruction, an evaluation function, a solution and failure cases": INSTRUCTION + EVALUATE + CAT_REST,
           "an instruction and an evaluation function": INSTRUCTION + EVALUATE,
           "written as an instruction": INSTRUCTION}


def scripted_reply(messages):
    """Every role of the ablation, told by its system prompt: the challenger explores once, then answers in its
    format; the simulated user asks and stops; the judge reads the episode and says SUCCESS; the executor looks
    the order up, cancels it and says so."""
    system = messages[0]["content"]
    turn = sum(m["role"] == "assistant" for m in messages)
    if system.startswith("You are the evaluator"):
        return "The order was cancelled with the reason asked for.\nVERDICT: SUCCESS"
    if "# Your scenario" in system:
        return "Hi, I want to cancel my skateboard order, I no longer need it." if turn == 0 else "Thanks! ###STOP###"
    if system.startswith("You are the challenger"):
        answer = next(a for words, a in ANSWERS.items() if words in system)
        return EXPLORE if turn == 0 else "THOUGHT: a sound task. END THOUGHT\nANSWER:\n" + answer + "END ANSWER"
    return [LOOK, CANCEL, DONE][min(turn, 2)]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_ablation_runs_with_a_scripted_model_server(tmp_path, tiny_model):
    """examples/ablations.sh end to end: three formats proposed, validated, rolled out (PAE's with the judge),
    trained (the tiny random model), evaluated, audited, compared in the report; then run again, it resumes."""
    from _servers import ReplayServer

    backend_or_skip("bwrap")
    out = tmp_path / "abl"
    server = ReplayServer(scripted_reply)
    env = scripts_env(OUT=str(out), MODEL=tiny_model, BACKEND="openai", BASE_URL=server.url, SANDBOX="bwrap",
                      TASKS="1", K="2", TRIALS="1", LIMIT="1", SHEET="2", ACCELERATE="python3")
    try:
        for attempt in ("first", "again"):
            proc = subprocess.run(["bash", "examples/ablations.sh"], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=1500, check=False)
            assert proc.returncode == 0, f"{attempt}: {proc.stderr[-4000:]}"
            if attempt == "first":
                first = {p: p.stat().st_mtime_ns for p in out.glob("*/ckpt/train_summary.json")}
    finally:
        server.close()
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/ckpt/train_summary.json")} == first  # not retrained

    def read(path):
        return [json.loads(x) for x in path.read_text().splitlines()]

    for fmt in ("cat", "eval-only", "instruction-only"):
        tasks = read(out / fmt / "tasks.jsonl")
        assert len(tasks) == 1 and {t.get("format", "cat") for t in tasks} == {fmt}, fmt
        trajectories = read(out / fmt / "trajectories.jsonl")
        assert len(trajectories) == 2 and all(t["reward"] == 1 for t in trajectories), fmt
        assert {t.get("reward_source") for t in trajectories} == {"judge" if fmt == "instruction-only" else "evaluate"}
        assert (out / fmt / "ckpt" / "config.json").exists() and (out / fmt / "eval.jsonl").read_text()
        assert (out / fmt / "sheet.csv").read_text().startswith("id,task_id,format,env,reward")
    assert [t["audit"]["lax"] for t in read(out / "cat" / "tasks.audit.jsonl")] == [False]
    assert [t["audit"]["lax"] for t in read(out / "eval-only" / "tasks.audit.jsonl")] == [None]
    assert not (out / "instruction-only" / "tasks.audit.jsonl").exists()
    assert any(r["messages"][0]["content"].startswith("You are the evaluator") for r in server.requests)  # the judge
    page = (out / "report" / "README.md").read_text()
    assert "## Comparison across task formats" in page and "## Verifier audit" in page
    for fmt in ("zero-shot", "instruction-only", "eval-only", "cat"):
        assert f"| {fmt} |" in page, fmt
    assert (out / "report" / "formats.png").stat().st_size > 1000


# -- bench/gpu_check.sh: its PASS / FAIL lines, with a stand-in sca ---------------------------------------------

def test_gpu_check_says_fail_per_item_and_exits_1(tmp_path):
    """No GPU here: an `sca` that fails, or succeeds without writing what the check reads, is a FAIL line per
    item, with the reason; the script exits 1. (Whether the items pass on a GPU is for a GPU to say.)"""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "sca").write_text('#!/bin/sh\necho "error: no GPU here ($2)" >&2\nexit 3\n')
    (stub / "sca").chmod(0o755)
    env = {**os.environ, "PATH": os.pathsep.join([str(stub), str(Path(sys.executable).parent), os.environ["PATH"]]),
           "OUT": str(tmp_path / "out"), "MODEL": "/nowhere"}
    proc = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    names = ["vllm-propose", "vllm-rollout", "vllm-eval", "grpo-vllm", "rft-bf16"]
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1 and [ln.split()[1] for ln in lines] == names, proc.stdout + proc.stderr
    assert all(ln.startswith("FAIL") and "exit 3: error: no GPU here" in ln for ln in lines), lines
    (stub / "sca").write_text("#!/bin/sh\nexit 0\n")  # runs, writes nothing: each check fails
    proc = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1 and len(lines) == 5 and all(ln.startswith("FAIL") for ln in lines), lines
    assert "No such file or directory" in lines[0]
