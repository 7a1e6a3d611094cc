"""The `sca` command line: help, envs, bad input handling, pipes, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cat_sets import RETAIL_TASKS, cat, write_jsonl
from sca_cli.app import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def test_version_and_help_list_the_stages():
    from sca import __version__

    r = run("--version")
    assert r.exit_code == 0 and r.output.strip() == f"sca {__version__}"
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("envs", "validate"):
        assert cmd in r.output
    for cmd in ("envs", "validate"):
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "Examples:" in r.output


def test_help_imports_no_heavy_module():
    probe = (
        "import sys\nsys.argv = ['sca', '--help']\nfrom sca_cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'vllm', 'tau2', 'docker') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_envs_lists_every_environment_with_tool_counts():
    r = run("envs", "--json")
    assert r.exit_code == 0, r.output
    listed = {e["name"]: e for e in json.loads(r.output)}
    assert {"retail", "airline"} <= set(listed)
    assert listed["retail"]["tools"] == listed["retail"]["read_tools"] + listed["retail"]["write_tools"]
    assert listed["retail"]["write_tools"] >= 6 and listed["retail"]["user_facing"] is True
    r = run("envs")
    assert r.exit_code == 0 and "retail" in r.output and "airline" in r.output


def test_envs_show_retail_prints_tools_and_policy():
    from envs import make_env

    env = make_env("retail")
    r = run("envs", "show", "retail")
    assert r.exit_code == 0, r.output
    for t in env.tools():
        assert t.name in r.output
    assert "cancel_pending_order(order_id: str, reason: str)" in r.output
    assert "write" in r.output and "read" in r.output
    assert env.policy.strip().splitlines()[0][:40] in r.output
    r = run("envs", "show", "retail", "--json")
    doc = json.loads(r.output)
    kinds = {t["name"]: t["kind"] for t in doc["tool_list"]}
    assert kinds["cancel_pending_order"] == "write" and kinds["get_order_details"] == "read"
    assert doc["policy"] == env.policy


def test_envs_show_unknown_is_one_line_exit_2():
    r = run("envs", "show", "nowhere")
    assert r.exit_code == 2
    assert "unknown environment 'nowhere'" in r.output and "Traceback" not in r.output


# -- bad input: FILE:LINE: problem, exit 2, never a traceback ------------------------------------
GOOD = RETAIL_TASKS[0]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{oops", ":2: not valid JSON"),
        (json.dumps({**GOOD, "id": "x", "solution": None}), ":2: solution: expected string, got null"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "instruction"} | {"id": "x"}), ":2: instruction: missing required field"),
        (json.dumps({**GOOD, "id": "x", "env": "mars"}), ":2: env: unknown environment 'mars'"),
    ],
)
def test_validate_bad_input(tmp_path, line, message):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    r = run("validate", str(src), "-o", str(tmp_path / "out.jsonl"), "--sandbox", "subprocess")
    assert r.exit_code == 2, r.output
    assert f"{src}{message}" in r.output.replace("\n", "")
    assert "Traceback" not in r.output
    assert not (tmp_path / "out.jsonl").exists()  # nothing started


def test_validate_missing_input_and_bad_option(tmp_path):
    r = run("validate", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "o.jsonl"))
    assert r.exit_code == 2 and "none.jsonl: no such file" in r.output
    r = run("validate", str(tmp_path / "none.jsonl"), "-o", "x", "--sandbox", "vm")
    assert r.exit_code == 2 and "--sandbox must be" in r.output


def test_validate_skip_invalid_and_empty_input(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("{oops\n" + json.dumps(RETAIL_TASKS[2]) + "\n")
    out = tmp_path / "out.jsonl"
    r = run("validate", str(src), "-o", str(out), "--skip-invalid", "--sandbox", "bwrap", "--workers", "1")
    assert r.exit_code == 0, r.output
    assert "in.jsonl:1: not valid JSON" in r.output
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [RETAIL_TASKS[2]["id"]]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = run("validate", str(empty), "-o", str(tmp_path / "o2.jsonl"), "--sandbox", "bwrap")
    assert r.exit_code == 0 and "found 0 records" in r.output


def test_validate_pipes_stdin_to_stdout():
    tasks = "".join(json.dumps(t) + "\n" for t in RETAIL_TASKS[:3])
    p = subprocess.run([sys.executable, "-m", "sca_cli.app", "validate", "-", "-o", "-", "--sandbox", "bwrap"],
                       input=tasks, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    ids = [json.loads(x)["id"] for x in p.stdout.splitlines()]  # stdout is pure JSONL
    assert ids == [t["id"] for t in RETAIL_TASKS[:3]]
    assert "accepted" in p.stderr


@pytest.mark.slow
def test_killed_validate_resumes_without_loss_or_repeat(tmp_path):
    base = RETAIL_TASKS[0]
    tasks = [{**base, "id": f"k{i:03d}"} for i in range(60)]
    tasks += [cat(f"bad{i}", "retail", "solution_error", "x", base["evaluation_function"], "1/0\n",
                  "pass\n", "pass\n", "pass\n") for i in range(10)]
    src = write_jsonl(tmp_path / "raw.jsonl", tasks)
    out, rej = tmp_path / "ok.jsonl", tmp_path / "rej.jsonl"
    cmd = [sys.executable, "-m", "sca_cli.app", "validate", str(src), "-o", str(out), "--rejected", str(rej),
           "--sandbox", "bwrap", "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if out.exists() and len(out.read_bytes().splitlines()) >= 5:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = out.read_text().count("\n")
    assert 5 <= first < 60, "the kill must land mid-run"
    # simulate a kill in the middle of a write as well
    with open(out, "a") as f:
        f.write('{"id": "k9')
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    ok = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    bad = [json.loads(x)["id"] for x in rej.read_text().splitlines()]
    assert sorted(ok) == sorted(t["id"] for t in tasks[:60])  # every id exactly once
    assert sorted(bad) == sorted(t["id"] for t in tasks[60:])
    meta = json.loads((tmp_path / "ok.jsonl.meta.json").read_text())
    assert meta["status"] == "finished" and meta["counts"]["resumed"] >= first
    assert meta["previous_runs"][0]["status"] == "running"  # the killed run is on record


def test_envs_tasks_lists_splits_and_official_m3_tasks():
    r = run("envs", "tasks", "retail", "--split", "test", "--json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)) == 40
    r = run("envs", "tasks", "calculation", "--json")
    assert len([t for t in json.loads(r.output) if t["split"] == "test"]) >= 40
    fixture = ROOT / "tests" / "fixtures" / "m3tooleval"
    r = run("envs", "tasks", "calculation", "--m3tooleval-dir", str(fixture), "--json")
    assert r.exit_code == 0, r.output
    official = json.loads(r.output)
    assert official and all(t["id"].startswith("m3/") for t in official)
    r = run("envs", "tasks", "airline", "--split", "nope")
    assert r.exit_code == 2 and "unknown split 'nope'" in r.output
    r = run("envs", "tasks", "retail", "--m3tooleval-dir", str(fixture))
    assert r.exit_code == 2
