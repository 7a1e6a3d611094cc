"""`sca train` never resumes a checkpoint directory made with other result-changing settings.

A run writes its settings (stages/train.py's RESULT_SETTINGS) to ``sca_run.json`` in the directory before
anything loads; a rerun into a directory holding a checkpoint compares its own: another learning rate exits 2
naming it, before training; the same settings resume (``--set resume_from_checkpoint=true``); ``--overwrite``
starts afresh; a directory of an older sca (no sca_run.json) resumes with a warning. One-step runs of the tiny
random model of conftest.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sca.records.io import InputError
from sca_cli.app import app

TINY = Path(__file__).resolve().parent / "fixtures" / "trajectories" / "tiny.jsonl"
#: one step, saved as checkpoint-1 too (what a resume resumes from)
ONE_STEP = ("--set", "max_steps=1", "--set", "per_device_train_batch_size=2", "--max-length", "256",
            "--set", "save_strategy=steps", "--set", "save_steps=1")
RESUME = ("--set", "resume_from_checkpoint=true")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(out: Path, model: str, *args: str):
    return CliRunner().invoke(app, ["train", str(TINY), "-o", str(out), "--algo", "rft", "--model", model,
                                    *ONE_STEP, *args])


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert lines[-1].startswith("error: "), result.output
    return lines[-1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state(out: Path) -> dict[str, float]:
    """Every file of the directory, with when it was last written."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("resume") / "ckpt"
    r = train(out, tiny_model, "--lr", "1e-5")
    assert r.exit_code == 0, r.output
    return out


def test_a_run_records_its_settings_before_training(trained, tiny_model):
    run = json.loads((trained / "sca_run.json").read_text())["result_settings"]
    assert run["algo"] == "rft" and run["model"] == tiny_model and run["learning_rate"] == 1e-5
    assert run["max_steps"] == 1 and run["max_length"] == 256 and run["global_batch_size"] == 2
    assert run["input"] == sha256(TINY)
    # what does not change the checkpoint is not compared
    assert not {"save_strategy", "save_steps", "logging_steps", "report_to", "resume_from_checkpoint",
                "output_dir", "dataloader_num_workers"} & set(run)
    assert (trained / "checkpoint-1").is_dir()


def test_another_learning_rate_exits_2_naming_it_before_training(trained, tiny_model):
    before = state(trained)
    for extra in ((), RESUME):  # resuming or not, the directory is refused before anything loads
        line = error_line(train(trained, tiny_model, "--lr", "2e-5", *extra))
        assert line == (f"error: {trained}: made with learning_rate=1e-05; this run: learning_rate=2e-05 "
                        "(--overwrite starts afresh, or write to another directory)")
    line = error_line(train(trained, tiny_model, "--lr", "2e-5", "--set", "seed=7", *RESUME))
    assert "made with learning_rate=1e-05 seed=42; this run: learning_rate=2e-05 seed=7" in line
    assert state(trained) == before  # nothing written: no new checkpoint, the recorded settings kept


def test_the_same_file_with_other_records_is_another_run(tmp_path, tiny_model):
    data = tmp_path / "t.jsonl"
    data.write_bytes(TINY.read_bytes())
    out = tmp_path / "ckpt"

    def run(*args):
        return CliRunner().invoke(app, ["train", str(data), "-o", str(out), "--algo", "rft", "--model", tiny_model,
                                        *ONE_STEP, *args])

    assert run().exit_code == 0
    data.write_text("".join(TINY.read_text().splitlines(keepends=True)[:-1]))  # one record fewer
    line = error_line(run(*RESUME))
    assert f"made with input={sha256(TINY)}; this run: input={sha256(data)}" in line


def test_the_same_settings_resume_or_say_it_is_done(trained, tiny_model):
    # not asked to resume: the directory holds a finished checkpoint
    assert "already holds a checkpoint" in error_line(train(trained, tiny_model, "--lr", "1e-5"))
    recorded = (trained / "sca_run.json").read_text()
    step = state(trained / "checkpoint-1")
    r = train(trained, tiny_model, "--lr", "1e-5", "--set", "logging_steps=5", *RESUME)  # logging may change
    assert r.exit_code == 0, r.output
    assert "without checking" not in r.output  # the recorded settings were compared, and matched
    summary = json.loads((trained / "train_summary.json").read_text())["summary"]
    assert summary["steps"] == 1  # resumed at step 1 of 1: nothing more to train
    assert state(trained / "checkpoint-1") == step  # resumed from it, not trained over it afresh
    assert (trained / "sca_run.json").read_text() == recorded


def test_overwrite_starts_afresh(tmp_path, tiny_model):
    out = tmp_path / "ckpt"
    assert train(out, tiny_model, "--lr", "1e-5").exit_code == 0
    assert "--overwrite starts afresh" in error_line(train(out, tiny_model, "--lr", "2e-5", "--overwrite", *RESUME))
    r = CliRunner().invoke(app, ["train", str(TINY), "-o", str(out), "--algo", "rft", "--model", tiny_model,
                                 "--lr", "2e-5", "--set", "max_steps=1", "--max-length", "256", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "sca_run.json").read_text())["result_settings"]["learning_rate"] == 2e-5
    # the replaced run's step checkpoints are gone: a later resume cannot pick one up
    assert not (out / "checkpoint-1").exists()
    assert json.loads((out / "train_summary.json").read_text())["settings"]["learning_rate"] == 2e-5


def test_an_older_directory_resumes_with_a_warning(tmp_path, tiny_model):
    out = tmp_path / "ckpt"
    assert train(out, tiny_model, "--lr", "1e-5").exit_code == 0
    (out / "sca_run.json").unlink()  # as an sca that did not write one left it
    r = train(out, tiny_model, "--lr", "2e-5", *RESUME)
    assert r.exit_code == 0, r.output
    assert "warning: " in r.output and "without checking that this run's are the same" in r.output
    assert not (out / "sca_run.json").exists()  # its settings stay unknown: nothing claims to describe them


def test_an_unfinished_run_is_not_trained_over_unasked(tmp_path, tiny_model):
    out = tmp_path / "ckpt"
    assert train(out, tiny_model, "--lr", "1e-5").exit_code == 0
    for name in ("config.json", "model.safetensors", "train_summary.json"):  # as if stopped after checkpoint-1
        (out / name).unlink()
    line = error_line(train(out, tiny_model, "--lr", "1e-5"))
    assert "(checkpoint-1) of an unfinished run; --set resume_from_checkpoint=true resumes it" in line


def test_settings_that_were_not_recorded_are_not_compared(tmp_path):
    from sca.training.fit import claim_output

    out = tmp_path / "ckpt"
    (out / "checkpoint-3").mkdir(parents=True)
    (out / "sca_run.json").write_text(json.dumps({"result_settings": {"learning_rate": 1e-5}}))
    # a setting a later sca records (here: seed) is not held against a directory of an earlier one
    assert claim_output(out, {"learning_rate": 1e-5, "seed": 42}, overwrite=False, resuming=True) is None
    with pytest.raises(InputError, match="made with learning_rate=1e-05; this run: learning_rate=0.001"):
        claim_output(out, {"learning_rate": 1e-3, "seed": 42}, overwrite=False, resuming=True)
    # an empty directory, or one holding only the settings of a run that saved nothing, is anyone's
    (out / "checkpoint-3").rmdir()
    assert claim_output(out, {"learning_rate": 1e-3}, overwrite=False, resuming=False) is None
    assert json.loads((out / "sca_run.json").read_text())["result_settings"] == {"learning_rate": 1e-3}


def test_report_to_tensorboard_writes_the_training_loss(tmp_path, tiny_model):
    """--report-to tensorboard reaches TRL's trainer: event files under the checkpoint, read back by
    tensorboard's own reader (tensorboard is a test dependency)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "ckpt"
    r = train(out, tiny_model, "--report-to", "tensorboard", "--set", "logging_steps=1")
    assert r.exit_code == 0, r.output
    [logdir] = {p.parent for p in out.rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(logdir))
    events.Reload()
    [(step, loss)] = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert step == 1 and loss > 0


def test_report_to_a_missing_library_is_one_line_before_the_model_loads(tmp_path, tiny_model, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("tensorboard")
                        else real(name, *a))
    out = tmp_path / "ckpt"
    line = error_line(train(out, tiny_model, "--report-to", "tensorboard"))
    assert line == "error: --report-to tensorboard needs the tensorboard package: pip install tensorboard"
    assert not (out / "sca_run.json").exists()
