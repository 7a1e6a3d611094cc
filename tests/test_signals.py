"""SIGINT and SIGTERM stop a stage cleanly: whole records only, an interrupted sidecar, one line saying how to
resume, exit 128 + the signal; the rerun of the same command resumes. Real subprocesses, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _sandbox_util import backend_or_skip
from _servers import ReplayServer
from cat_sets import write_jsonl

from sca.records.stage_run import Interrupted, StageRun, exit_code

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _bwrap():
    backend_or_skip("bwrap")


def slow_tasks(n: int) -> list[dict]:
    """Calculation tasks whose solution spins a while in the sandbox: a run is still going when the signal comes."""
    return [{"id": f"s{i:03d}", "env": "calculation", "instruction": "How long is the string abc?",
             "evaluation_function": "def evaluate(answer):\n    return answer == 3\n",
             "solution": "x = 0\nfor i in range(1500000):\n    x += 1\nanswer = string_length(string='abc')\n",
             "failure_cases": ["answer = 1\n", "answer = 2\n", "answer = 4\n"]} for i in range(n)]


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen) -> None:
    """Until `path` holds `n` lines (or the process ended, which the caller's assertions then show)."""
    deadline = time.monotonic() + 300  # a guard against a hung test, not a timing assertion
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.05)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]  # every line whole


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_validate_keeps_whole_records_says_how_to_resume_and_resumes(tmp_path, sig):
    tasks = slow_tasks(40)
    src = write_jsonl(tmp_path / "in.jsonl", tasks)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "sca_cli.app", "validate", str(src), "-o", str(out), "--sandbox", "bwrap",
           "--workers", "2"]
    # a process group of its own, signalled as a whole: what a terminal's Ctrl-C and Slurm do
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for_lines(out, 3, proc)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    kept = records(out)
    assert 3 <= len(kept) < len(tasks), "the signal must land mid-run"
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == f"interrupted: rerun the same command to resume ({len(kept)} records kept in {out})"
    assert "Traceback" not in err
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["counts"]["accepted"] == len(kept)
    assert {r["run"] for r in kept} == {meta["run"]}

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    done = records(out)
    assert sorted(r["id"] for r in done) == [t["id"] for t in tasks]  # every task once: none lost, none twice
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["status"] == "finished" and meta["counts"]["resumed"] == len(kept)
    assert meta["previous_runs"][-1]["status"] == "interrupted"
    assert {r["run"] for r in done[len(kept):]} == {meta["run"]}


AGENT = "THOUGHT: answer END THOUGHT\nThe length is 3."


def test_a_signalled_rollout_on_a_served_model_stops_and_resumes(tmp_path):
    """`sca rollout` on a (scripted) OpenAI-compatible server that answers slowly: SIGTERM mid-run."""
    tasks = [{**slow_tasks(1)[0], "id": f"r{i}"} for i in range(12)]
    src = write_jsonl(tmp_path / "tasks.jsonl", tasks)
    out = tmp_path / "traj.jsonl"
    server = ReplayServer(lambda messages: AGENT, delay=0.3)
    try:
        cmd = [sys.executable, "-m", "sca_cli.app", "rollout", str(src), "-o", str(out), "--trials", "2",
               "--backend", "openai", "--base-url", server.url, "--model", "scripted", "--concurrency", "2",
               "--sandbox", "bwrap", "--workers", "1"]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        wait_for_lines(out, 2, proc)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 143, err
        kept = records(out)
        assert 2 <= len(kept) < 24
        assert err.splitlines()[-1] == f"interrupted: rerun the same command to resume ({len(kept)} records kept in {out})"
        assert json.loads((tmp_path / "traj.jsonl.meta.json").read_text())["status"] == "interrupted"
        again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        assert sorted(r["id"] for r in records(out)) == sorted(f"r{i}#{t}" for i in range(12) for t in range(2))
    finally:
        server.close()


def test_an_interrupt_in_the_library_marks_the_sidecar_and_reraises(tmp_path, capsys):
    """Without a command line: the KeyboardInterrupt goes on to the caller, after the sidecar and the hint."""
    out = tmp_path / "o.jsonl"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as e:
        with StageRun("validate", {"accepted": str(out)}) as run:
            run.write("accepted", {"id": "a"})
            raise Interrupted(signal.SIGTERM)
    assert exit_code(e.value) == 143
    assert json.loads((tmp_path / "o.jsonl.meta.json").read_text())["status"] == "interrupted"
    assert capsys.readouterr().err.strip() == f"interrupted: rerun the same command to resume (1 records kept in {out})"
    assert signal.getsignal(signal.SIGTERM) == before  # the process's own handler again


def test_records_arriving_after_an_interrupt_are_dropped_whole(tmp_path):
    out = tmp_path / "o.jsonl"
    run = StageRun("validate", {"accepted": str(out)})
    with pytest.raises(KeyboardInterrupt):
        with run:
            run.write("accepted", {"id": "a"})
            raise KeyboardInterrupt
    run.write("accepted", {"id": "late"})  # a worker thread's result after the interrupt: the rerun does it
    assert [r["id"] for r in records(out)] == ["a"]

