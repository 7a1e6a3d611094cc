"""The example scripts: the paper's recipes use flags that exist, and the tiny loop runs end to end."""

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
SCRIPTS = ["quickstart.sh", "tiny_cpu.sh", "self_improve.sh", "distill.sh"]


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
    for script in ("tiny_cpu.sh", "self_improve.sh", "distill.sh"):
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
