"""A resume never mixes settings; outputs without ceremony (a default under runs/, -o DIR refused); provenance
and the run's id in every sidecar and record; the seed a record was sampled with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _sandbox_util import backend_or_skip
from _scripted import ScriptedRoles
from cat_sets import RETAIL_TASKS, write_jsonl
from typer.testing import CliRunner

from sandbox.config import SandboxConfig
from sca.cat import ValidateConfig
from sca.inference.config import ModelConfig
from sca.records.io import InputError, output_path
from sca.records.provenance import git_commit, provenance
from sca.records.stage_run import SettingsChanged, StageRun, differences, result_settings
from sca_cli.app import app
from stages.rollout import RolloutConfig, rollout_file
from stages.validate import validate_file

ROOT = Path(__file__).resolve().parent.parent
CANCEL_TASK = next(t for t in RETAIL_TASKS if t["id"] == "ret-valid-cancel")
ORDER = "#W2974929"
LOOK = f'THOUGHT: look END THOUGHT\nACTION:\nprint(get_order_details(order_id="{ORDER}")["status"])\n'
DONE = "THOUGHT: done END THOUGHT\nIt is pending."


def customer(turn, conv):
    return "Hi, what is the status of my order?" if turn == 0 else "Thanks! ###STOP###"


@pytest.fixture(autouse=True)
def _bwrap():
    backend_or_skip("bwrap")


def read(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def meta(path):
    return json.loads(Path(f"{path}.meta.json").read_text())


def vconfig(**over):
    return ValidateConfig(SandboxConfig(backend="bwrap", workers=1), **over)


# -- the rule -----------------------------------------------------------------------------------------
def test_result_settings_pick_the_declared_paths_less_what_never_changes_results():
    settings = {"seed": 1, "concurrency": 8, "executor": {"model": "m", "temperature": 0.7, "base_urls": ["u"]},
                "user": None, "sandbox": {"timeout": 10, "workers": 4}}
    picked = result_settings(settings, ("seed", "executor", "user", "sandbox.timeout"))
    assert picked == {"seed": 1, "executor.model": "m", "executor.temperature": 0.7, "user": None,
                      "sandbox.timeout": 10}
    # a setting an older sca did not record is not compared; one it did is
    assert differences({"seed": 1}, {"seed": 1, "trials": 4}) == []
    assert differences({"user": None}, {"user.model": "x"}) == ["user", "user.model"]


def test_validate_onto_an_output_of_other_checks_stops_and_names_each_difference(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", RETAIL_TASKS[:2])
    out = tmp_path / "ok.jsonl"
    validate_file(str(src), str(out), config=vconfig(min_failure_cases=3), show_progress=False)
    before, sidecar = out.read_bytes(), Path(f"{out}.meta.json").read_bytes()
    with pytest.raises(SettingsChanged) as e:
        validate_file(str(src), str(out), config=vconfig(min_failure_cases=5, verification_only=True),
                      show_progress=False)
    assert str(e.value) == (f"{out}: made with min_failure_cases=3 verification_only=false; this run: "
                            "min_failure_cases=5 verification_only=true (--overwrite starts afresh, or write to "
                            "another file)")
    assert out.read_bytes() == before and Path(f"{out}.meta.json").read_bytes() == sidecar  # nothing touched
    # what does not change a verdict may change: the workers
    validate_file(str(src), str(out), config=ValidateConfig(SandboxConfig(backend="bwrap", workers=2)),
                  show_progress=False)
    assert meta(out)["status"] == "finished"
    # --overwrite starts afresh, and its sidecar describes only its own records
    validate_file(str(src), str(out), config=vconfig(min_failure_cases=2), overwrite=True, show_progress=False)
    m = meta(out)
    assert m["settings"]["min_failure_cases"] == 2 and m["previous_runs"] == []
    assert len(read(out)) == 2 and {r["run"] for r in read(out)} == {m["run"]}


def test_the_cli_exits_2_with_the_differences(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", RETAIL_TASKS[:1])
    out = tmp_path / "ok.jsonl"
    args = ["validate", str(src), "-o", str(out), "--sandbox", "bwrap", "--workers", "1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    r = CliRunner().invoke(app, [*args, "--min-failure-cases", "5"])
    assert r.exit_code == 2
    assert "made with min_failure_cases=3; this run: min_failure_cases=5" in r.output
    assert CliRunner().invoke(app, [*args, "--min-failure-cases", "5", "--overwrite"]).exit_code == 0


def rollout(tmp_path, out, model, **over):
    src = write_jsonl(tmp_path / "tasks.jsonl", [CANCEL_TASK])
    config = RolloutConfig(**{"trials": 2, "concurrency": 2, "sandbox": SandboxConfig(backend="bwrap", workers=1),
                              **over})
    return rollout_file(str(src), str(out), config, executor_model=model, user_model=model, show_progress=False)


def test_rollout_with_another_model_or_temperature_stops_before_any_model_loads(tmp_path):
    model = ScriptedRoles(lambda turn, conv: [LOOK, DONE][turn], customer)
    out = tmp_path / "traj.jsonl"
    rollout(tmp_path, out, model, seed=3)
    # records name their run, and the seed their run sampled with (each call's seed is hashed from it)
    m = meta(out)
    for r in read(out):
        assert r["run"] == m["run"]
        assert r["models"]["executor"]["sampling"]["seed"] == 3 == m["settings"]["seed"]
    assert m["settings"]["models"]["executor"]["sampling"]["seed"] == 3
    # no executor_model given: a model that cannot load would fail the run if it were loaded
    other = ModelConfig(model="ckpt/does-not-exist", temperature=0.0)
    with pytest.raises(SettingsChanged) as e:
        rollout(tmp_path, out, None, seed=3, executor=other)
    assert "executor.model=null executor.temperature=0.7; this run: executor.model=ckpt/does-not-exist " \
           "executor.temperature=0.0" in str(e.value)
    with pytest.raises(SettingsChanged, match="made with seed=3; this run: seed=4"):
        rollout(tmp_path, out, None, seed=4)
    # concurrency and servers may change: more trials of the same settings resume
    summary = rollout(tmp_path, out, model, seed=3, trials=3, concurrency=1)
    assert summary.trajectories == 1 and len(read(out)) == 3


# -- outputs without ceremony ---------------------------------------------------------------------------
def test_the_default_output_is_a_new_file_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = output_path(None, "validate", "data/tasks.raw.jsonl")
    assert first.startswith("runs/validate-tasks.raw-") and first.endswith(".jsonl")
    Path("runs").mkdir()
    Path(first).write_text("")
    second = output_path(None, "validate", "data/tasks.raw.jsonl")
    assert second != first  # never an earlier run's output by accident, even in the same second
    assert output_path(None, "train-rft", "t.jsonl", directory=True).startswith("runs/train-rft-t-")
    assert output_path("given.jsonl", "validate", "x") == "given.jsonl"
    with pytest.raises(InputError, match="runs: is a directory; -o names the file to write"):
        output_path("runs", "validate", "x")
    assert output_path("runs", "train-rft", "x", directory=True) == "runs"


def test_validate_without_o_writes_under_runs_and_says_where_first(tmp_path):
    src = write_jsonl(tmp_path / "tasks.jsonl", RETAIL_TASKS[:1])
    p = subprocess.run([sys.executable, "-m", "sca_cli.app", "validate", str(src), "--sandbox", "bwrap",
                        "--workers", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    first = p.stderr.splitlines()[0]
    assert first.startswith("output: runs/validate-tasks-")
    written = tmp_path / first.split(": ", 1)[1]
    assert [r["id"] for r in read(written)] == [RETAIL_TASKS[0]["id"]]


@pytest.mark.parametrize("argv", [
    ["validate", "IN", "-o", "DIR"],
    ["rollout", "IN", "-o", "DIR", "--model", "ckpt/does-not-exist"],
    ["eval", "--env", "calculation", "-o", "DIR", "--model", "ckpt/does-not-exist"],
    ["propose", "--env", "calculation", "-o", "DIR", "--model", "ckpt/does-not-exist"],
    ["audit", "IN", "-o", "DIR"],
])
def test_o_naming_a_directory_is_one_line_and_exit_2_before_any_model_loads(tmp_path, argv):
    src = write_jsonl(tmp_path / "in.jsonl", RETAIL_TASKS[:1])
    (tmp_path / "d").mkdir()
    argv = [str(src) if a == "IN" else str(tmp_path / "d") if a == "DIR" else a for a in argv]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2, r.output
    assert "is a directory; -o names the file to write" in r.output and "Traceback" not in r.output
    assert not list((tmp_path / "d").iterdir())


def test_the_readme_headline_needs_no_o(tmp_path):
    """`sca propose --env retail --n 800` as the README writes it: the output is chosen, and said, first (the
    model here cannot load, so the run stops right after)."""
    p = subprocess.run([sys.executable, "-m", "sca_cli.app", "propose", "--env", "retail", "--n", "800",
                        "--model", str(tmp_path / "no-model")], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert "Missing option" not in p.stderr
    assert p.stderr.splitlines()[0].startswith("output: runs/propose-retail-")


# -- provenance -------------------------------------------------------------------------------------------
def test_every_sidecar_says_where_it_was_made(tmp_path):
    out = tmp_path / "o.jsonl"
    with StageRun("validate", {"accepted": str(out)}) as run:
        run.write("accepted", {"id": "a"})
    p = meta(out)["provenance"]
    assert p["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(p["libraries"]) == {"sca", "torch", "transformers", "trl", "tau2", "vllm"}
    from importlib.metadata import version

    assert p["libraries"]["torch"] == version("torch") and p["libraries"]["sca"] == version("sca-toolkit")
    assert p["host"] and p == provenance()
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        if head.returncode == 0:
            assert p["git_commit"] == head.stdout.strip()


def test_the_commit_is_read_from_a_checkout_and_none_outside_one(tmp_path):
    assert git_commit(tmp_path) is None
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_text("# pack-refs with: peeled\n" + "a" * 40 + " refs/heads/main\n")
    assert git_commit(tmp_path / "repo" / "sub") == "a" * 40  # packed
    (git / "refs" / "heads" / "main").write_text("b" * 40 + "\n")
    assert git_commit(tmp_path / "repo") == "b" * 40  # loose beats packed
    (git / "HEAD").write_text("c" * 40 + "\n")
    assert git_commit(tmp_path / "repo") == "c" * 40  # detached
    # a worktree: .git is a file naming the git directory
    (tmp_path / "wt").mkdir()
    (tmp_path / "wt" / ".git").write_text(f"gitdir: {git}\n")
    assert git_commit(tmp_path / "wt") == "c" * 40
