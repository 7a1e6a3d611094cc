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
    assert listed["retail"]["tool_count"] == listed["retail"]["read_tools"] + listed["retail"]["write_tools"]
    assert "tools" not in listed["retail"]  # a count is tool_count; tools is a list (envs show --json)
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
    kinds = {t["name"]: t["kind"] for t in doc["tools"]}
    assert kinds["cancel_pending_order"] == "write" and kinds["get_order_details"] == "read"
    assert doc["tool_count"] == len(doc["tools"]) == len(env.tools()) and "tool_list" not in doc
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


# -- the limits of `sca validate` reach the sandbox ------------------------------------------------
def _question(id: str, solution: str, failures: int = 3) -> dict:
    # Fatima Anderson has 3 orders; the solution says "3" (a message to the user) after doing `solution`
    wrong = ["answer = '2'\n", "answer = '4'\n", "pass\n"]
    return cat(id, "retail", "", "How many orders have I placed?", "def evaluate(answer):\n    return answer == '3'\n",
               solution + "answer = '3'\n", *wrong[:failures])


def test_validate_timeout_memory_and_failure_case_flags_reach_the_checks(tmp_path):
    tasks = [
        _question("slow", "import time\ntime.sleep(1.5)\n"),
        _question("big", "block = bytearray(300 * 1024 * 1024)\n"),  # 300 MiB
        _question("one-failure", "", failures=1),
        _question("chatty", "for _ in range(4):\n    get_user_details(user_id='fatima_anderson_2157')\n"),
        _question("bulky", "try:\n    get_user_details(user_id='x' * 5000)\nexcept ToolError:\n    pass\n"),
    ]
    src = write_jsonl(tmp_path / "raw.jsonl", tasks)

    def verdicts(name, *flags):
        out, rej = tmp_path / f"{name}.ok.jsonl", tmp_path / f"{name}.rej.jsonl"
        r = run("validate", str(src), "-o", str(out), "--rejected", str(rej), "--sandbox", "bwrap", *flags)
        assert r.exit_code == 0, r.output
        got = {}
        for path in (out, rej):
            for line in path.read_text().splitlines():
                v = json.loads(line)["validation"]
                got[json.loads(line)["id"]] = "valid" if v["valid"] else (v["reason"], v["failed_check"])
        return got

    assert verdicts("tight", "--timeout", "1", "--memory-mb", "100", "--min-failure-cases", "1",
                    "--max-tool-calls", "3", "--max-tool-bytes", "4096") == {
        "slow": ("timeout", "solution_run"), "big": ("sandbox_error", "solution_run"), "one-failure": "valid",
        "chatty": ("solution_error", "solution_run"), "bulky": ("solution_error", "solution_run")}
    assert verdicts("default") == {
        "slow": "valid", "big": "valid", "one-failure": ("failure_case_count", "failure_case_count"),
        "chatty": "valid", "bulky": "valid"}
    rejected = {json.loads(x)["id"]: json.loads(x)["validation"] for x in
                (tmp_path / "tight.rej.jsonl").read_text().splitlines()}
    assert rejected["slow"]["detail"] == "the solution ran past 1 s"
    assert "100 MiB" in rejected["big"]["detail"]
    assert "BudgetExceeded" in rejected["chatty"]["detail"] and "max_tool_calls 3" in rejected["chatty"]["detail"]
    assert "BudgetExceeded" in rejected["bulky"]["detail"] and "4,096 bytes" in rejected["bulky"]["detail"]
    meta = json.loads((tmp_path / "tight.ok.jsonl.meta.json").read_text())["settings"]
    assert (meta["sandbox"]["timeout"], meta["sandbox"]["memory_mb"], meta["min_failure_cases"]) == (1.0, 100, 1)
    assert (meta["sandbox"]["max_tool_calls"], meta["sandbox"]["max_tool_bytes"]) == (3, 4096)


# -- `sca propose` refuses an unknown environment at once --------------------------------------------
def test_propose_unknown_environment_is_one_line_exit_2(tmp_path):
    out = tmp_path / "t.jsonl"
    p = subprocess.run([sys.executable, "-m", "sca_cli.app", "propose", "--env", "mars", "-o", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2, p.stderr
    from envs import env_names

    assert p.stderr == f"error: unknown environment 'mars' (available: {', '.join(env_names())})\n"
    assert p.stdout == ""
    assert not out.exists() and not (tmp_path / "t.jsonl.meta.json").exists()


# -- an environment from another package, through the `sca.envs` entry point ------------------------
@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    """A distribution installed on sys.path whose entry point `store` is the tests' StoreEnv."""
    import envs

    site = tmp_path / "site"
    dist = site / "sca_store_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sca-store-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[sca.envs]\nstore = _sandbox_util:StoreEnv\n")
    monkeypatch.syspath_prepend(str(site))
    envs._entry_points.cache_clear()
    yield "store"
    envs._entry_points.cache_clear()


def test_environment_from_an_entry_point(plugin_env, tmp_path):
    from _sandbox_util import StoreEnv
    from envs import env_names, make_env

    names = env_names()
    assert names[-1] == "store" and "retail" in names  # after the built-in ones
    assert isinstance(make_env("store"), StoreEnv)
    r = run("envs", "--json")
    assert r.exit_code == 0, r.output
    assert {e["name"]: e["tool_count"] for e in json.loads(r.output)}["store"] == len(StoreEnv().tools())

    tasks = [
        cat("store-add", "store", "valid", "Add two apples.", "def evaluate():\n    return get_value('apples') == 5\n",
            "increment('apples', 2)\n", "increment('apples')\n", "set_value('pears', 5)\n", "increment('nope', 2)\n"),
        cat("store-trivial", "store", "noop_passes", "Keep the note.",
            "def evaluate():\n    return get_value('note') == 'hello'\n", "pass\n", "pass\n", "pass\n", "pass\n"),
    ]
    src = write_jsonl(tmp_path / "raw.jsonl", tasks)
    out, rej = tmp_path / "ok.jsonl", tmp_path / "rej.jsonl"
    r = run("validate", str(src), "-o", str(out), "--rejected", str(rej), "--sandbox", "bwrap")
    assert r.exit_code == 0, r.output
    [ok] = [json.loads(x) for x in out.read_text().splitlines()]
    [bad] = [json.loads(x) for x in rej.read_text().splitlines()]
    assert ok["id"] == "store-add" and ok["validation"]["valid"] is True
    assert bad["id"] == "store-trivial" and bad["validation"]["reason"] == "noop_passes"


# -- one error mapping, and defaults stated once -------------------------------------------------------
def _errors():
    from envs import UnknownEnvironmentError
    from sandbox.result import SandboxUnavailable
    from sca.benchmarks.m3.official import OfficialTaskError
    from sca.inference.base import InferenceError, ServerError
    from sca.records.io import InputError

    return [  # (the error a stage raises, what the command prints, its exit code)
        (InputError("in.jsonl:3: not valid JSON"), "error: in.jsonl:3: not valid JSON", 2),
        (UnknownEnvironmentError("unknown environment 'mars'"), "error: unknown environment 'mars'", 2),
        (OfficialTaskError("no tasks in the checkout"), "error: no tasks in the checkout", 2),
        (SandboxUnavailable("bubblewrap not found"), "error: sandbox unavailable: bubblewrap not found", 2),
        (InferenceError("server down"), "error: model: server down", 1),
        (ServerError("502 after 5 tries"), "error: model: 502 after 5 tries", 1),
    ]


#: each command that runs a stage: its arguments, and the stage function it calls (module, name)
STAGE_COMMANDS = {
    "validate": (["validate", "in.jsonl", "-o", "out.jsonl"], ("stages.validate", "validate_file")),
    "propose": (["propose", "-o", "out.jsonl"], ("stages.propose", "propose_file")),
    "rollout": (["rollout", "in.jsonl", "-o", "out.jsonl"], ("stages.rollout", "rollout_file")),
    "eval": (["eval", "-o", "out.jsonl"], ("stages.eval", "eval_file")),
    "train": (["train", "in.jsonl", "-o", "ckpt", "--algo", "rft"], ("stages.train", "train")),
    "report": (["report", "-o", "rep"], ("stages.report", "report")),
    "audit": (["audit", "in.jsonl", "-o", "out.jsonl"], ("stages.audit", "audit_file")),
}


@pytest.mark.parametrize("command", sorted(STAGE_COMMANDS))
def test_every_command_maps_a_stage_error_to_the_same_message_and_exit_code(command, monkeypatch, tmp_path):
    import importlib

    args, (module, name) = STAGE_COMMANDS[command]
    monkeypatch.chdir(tmp_path)
    for error, message, code in _errors():
        def raising(*a, error=error, **kw):
            raise error

        monkeypatch.setattr(importlib.import_module(module), name, raising)
        r = runner.invoke(app, args)
        assert (r.exit_code, r.output.strip()) == (code, message), (command, error)
    # anything else is a bug: it keeps its traceback
    monkeypatch.setattr(importlib.import_module(module), name, lambda *a, **kw: 1 / 0)
    r = runner.invoke(app, args)
    assert isinstance(r.exception, ZeroDivisionError), (command, r.output)


def test_flag_defaults_are_stated_in_the_library_only():
    """A typer option in sca_cli defaults to nothing (None, False, or ... for a required one): every real
    default is a config field's, through sca_cli.common.flag."""
    import ast

    for path in sorted((ROOT / "sca_cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("Option", "Argument") and node.args):
                try:
                    default = ast.literal_eval(node.args[0])
                except ValueError:
                    continue  # not a literal: a value from elsewhere (flag's, from the config field)
                assert default is None or default is False or default is ..., (
                    f"{path.name}:{node.lineno}: a literal default; state it in the config dataclass")


def test_flags_show_the_configs_defaults_help_and_bounds():
    import typer

    from sandbox.config import SandboxConfig
    from sca.agent.config import ExecutorConfig
    from sca.inference.config import challenger_defaults
    from stages.config import EvalConfig, ProposeConfig, ReportConfig, RolloutConfig

    commands = typer.main.get_command(app).commands
    params = {c: {p.name: p for p in commands[c].params} for c in ("rollout", "eval", "propose", "report", "validate")}
    assert params["rollout"]["trials"].default == RolloutConfig.trials and params["eval"]["trials"].default == EvalConfig.trials
    assert params["eval"]["env"].default == EvalConfig().envs
    assert params["propose"]["n"].default == ProposeConfig.n
    assert params["propose"]["temperature"].default == challenger_defaults().temperature
    assert params["report"]["n_boot"].default == ReportConfig.n_boot == EvalConfig.n_boot
    for c in ("rollout", "eval"):
        assert params[c]["max_steps"].default == ExecutorConfig.max_steps
    for c in ("rollout", "eval", "propose", "validate"):
        memory = params[c]["memory_mb"]
        assert (memory.default, memory.min) == (SandboxConfig.memory_mb, 64)
        assert memory.help == "Memory cap of each process of a run, MiB."
