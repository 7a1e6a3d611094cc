"""The executor's system prompt once per file (issue 18): sca rollout and sca eval write each record's
system prompt (about 11 KB, the same for every task of an environment) as a reference to its text in
the sidecar, by hash, unless --keep-system-prompt; every reader of sca puts the text back, so training
sees the same tokens; a reference whose text is nowhere is one line and exit 2; a resume keeps the
earlier runs' prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _sandbox_util import backend_or_skip
from _scripted import ScriptedRoles
from _servers import ReplayServer
from cat_sets import RETAIL_TASKS, write_jsonl
from typer.testing import CliRunner

from sandbox.config import SandboxConfig
from sca.records import EVAL_RESULT, TRAINING_TRAJECTORY, TRAJECTORY
from sca.records.io import InputError, StreamedInput, load_records
from sca.records.schema import RecordError, prompt_sha256
from sca_cli.app import app
from stages.eval import EvalConfig, eval_file
from stages.rollout import RolloutConfig, rollout_file

ORDER = "#W2974929"
CANCEL_TASK = next(t for t in RETAIL_TASKS if t["id"] == "ret-valid-cancel")
LOOK = f'THOUGHT: look the order up END THOUGHT\nACTION:\nprint(get_order_details(order_id="{ORDER}")["status"])\n'
CANCEL = (f'THOUGHT: cancel it END THOUGHT\nACTION:\ncancel_pending_order(order_id="{ORDER}", '
          'reason="no longer needed")\n')
DONE = "THOUGHT: it is done END THOUGHT\nYour order is cancelled."
runner = CliRunner()


def _model() -> ScriptedRoles:
    return ScriptedRoles(lambda turn, conv: [LOOK, CANCEL, DONE][min(turn, 2)],
                         lambda turn, conv: "Cancel my skateboard order, please." if turn == 0 else "###STOP###")


def _rollout(tasks: Path, out: Path, trials: int = 1, **over) -> None:
    config = RolloutConfig(trials=trials, sandbox=SandboxConfig(backend="bwrap", workers=1), **over)
    rollout_file(str(tasks), str(out), config, executor_model=(m := _model()), user_model=m, show_progress=False)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _sidecar(path: Path) -> dict:
    return json.loads(Path(f"{path}.meta.json").read_text())


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """One retail trial written twice by the same scripted model: the new way, and with --keep-system-prompt."""
    backend_or_skip("bwrap")
    d = tmp_path_factory.mktemp("sysprompt")
    tasks = write_jsonl(d / "tasks.jsonl", [CANCEL_TASK])
    _rollout(tasks, d / "ref.jsonl")
    _rollout(tasks, d / "kept.jsonl", keep_system_prompt=True)
    return {"tasks": tasks, "ref": d / "ref.jsonl", "kept": d / "kept.jsonl"}


def test_a_rollout_writes_the_system_prompt_once_in_the_sidecar(written):
    (record,) = _lines(written["ref"])
    (kept,) = _lines(written["kept"])
    text = kept["messages"][0]["content"]
    assert kept["messages"][0] == {"role": "system", "content": text} and len(text) > 1000
    digest = prompt_sha256(text)
    assert record["messages"][0] == {"role": "system", "content": None, "content_sha256": digest}
    assert record["messages"][1:] == kept["messages"][1:]
    assert text not in written["ref"].read_text()  # the line is the smaller by the whole prompt
    assert _sidecar(written["ref"])["system_prompts"] == {digest: text}
    assert "system_prompts" not in _sidecar(written["kept"])
    TRAJECTORY.check(record)  # the reference form is a valid record as written (sca report reads it so)


def test_no_record_is_on_disk_before_its_prompt_is_in_the_sidecar(written, tmp_path):
    out = tmp_path / "traj.jsonl"
    seen = []

    class Watch:  # called right after each record is written (as --report-to is)
        def trial(self, record):
            named = {r["messages"][0]["content_sha256"] for r in _lines(out)}
            held = set(_sidecar(out).get("system_prompts") or ())
            seen.append(named <= held)

    config = RolloutConfig(trials=2, concurrency=1, sandbox=SandboxConfig(backend="bwrap", workers=1))
    rollout_file(str(written["tasks"]), str(out), config, executor_model=(m := _model()), user_model=m,
                 show_progress=False, metrics=Watch())
    assert seen == [True, True]


def test_every_reader_gets_the_text_back(written):
    (kept,) = _lines(written["kept"])
    for schema in (TRAJECTORY, TRAINING_TRAJECTORY):
        (restored,) = load_records(written["ref"], schema).records
        assert restored["messages"] == kept["messages"]
        assert list(restored["messages"][0]) == ["role", "content"]
    (streamed,) = list(StreamedInput(written["ref"], TRAJECTORY).scan())
    assert streamed["messages"] == kept["messages"]


def test_rft_trains_on_the_same_tokens_either_way(written, tmp_path):
    from transformers import AutoTokenizer

    from sca.inference.default_model import default_model_path
    from sca.training.configs import build_config
    from sca.training.fit import prepare

    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    config = build_config("rft", tmp_path / "unused")
    prepared = {}
    for name in ("ref", "kept"):
        records = load_records(written[name], TRAINING_TRAJECTORY).records
        _, prep = prepare("rft", records, tok, config, str(written[name]))
        prepared[name] = prep
    assert prepared["ref"].examples == 1
    assert prepared["ref"].rows == prepared["kept"].rows
    # the system prompt is in what the model reads (as context, not trained on)
    ids = prepared["ref"].rows[0]["input_ids"]
    text = _lines(written["kept"])[0]["messages"][0]["content"]
    assert text[:200] in tok.decode(ids)


def test_a_reference_without_its_sidecar_is_one_line_and_exit_2(written, tmp_path):
    lone = tmp_path / "lone.jsonl"
    lone.write_bytes(written["ref"].read_bytes())
    digest = _lines(lone)[0]["messages"][0]["content_sha256"]
    with pytest.raises(InputError) as e:
        load_records(lone, TRAINING_TRAJECTORY)
    assert str(e.value) == (f"{lone}:1: messages[0]: system prompt {digest[:12]} not in {lone}.meta.json "
                            "(write with --keep-system-prompt to keep it in each record)")
    r = runner.invoke(app, ["train", str(lone), "-o", str(tmp_path / "ckpt"), "--algo", "rft"])
    assert r.exit_code == 2, r.output
    assert f"system prompt {digest[:12]} not in" in r.output and "Traceback" not in r.output
    # a sidecar that holds other prompts only is no better
    Path(f"{lone}.meta.json").write_text(json.dumps({"system_prompts": {"0" * 64: "another prompt"}}))
    with pytest.raises(InputError, match="not in"):
        load_records(lone, TRAJECTORY)


def test_a_reference_on_stdin_has_no_sidecar(written, monkeypatch, tmp_path):
    r = runner.invoke(app, ["audit", "--sheet", "1", "-", "-o", str(tmp_path / "sheet.csv")],
                      input=written["ref"].read_text())
    assert r.exit_code == 2, r.output
    assert "<stdin>:1: messages[0]: system prompt" in r.output and "standard input has none" in r.output
    # the text kept in the record reads from stdin as before
    r = runner.invoke(app, ["audit", "--sheet", "1", "-", "-o", str(tmp_path / "sheet2.csv")],
                      input=written["kept"].read_text())
    assert r.exit_code == 0, r.output


def test_the_schema_refuses_a_malformed_reference():
    record = {"messages": [{"role": "system", "content": None, "content_sha256": "abc"}]}
    with pytest.raises(RecordError, match=r"messages\[0\]\.content_sha256"):
        TRAJECTORY.extra_checks[0](record)
    record = {"messages": [{"role": "system", "content": None}]}
    with pytest.raises(RecordError, match=r"messages\[0\]\.content"):
        TRAJECTORY.extra_checks[0](record)
    # only the system prompt may be a reference
    record = {"messages": [{"role": "system", "content": "s"},
                           {"role": "user", "content": None, "content_sha256": "a" * 64}]}
    with pytest.raises(RecordError, match=r"messages\[1\]\.content"):
        TRAJECTORY.extra_checks[0](record)


def test_a_resumed_rollout_keeps_the_earlier_prompts(written, tmp_path):
    out = tmp_path / "traj.jsonl"
    _rollout(written["tasks"], out, trials=1)
    first = _sidecar(out)["system_prompts"]
    _rollout(written["tasks"], out, trials=2, keep_system_prompt=True)  # a layout, not a setting: resumes
    meta = _sidecar(out)
    assert meta["system_prompts"] == first
    assert all("system_prompts" not in run for run in meta["previous_runs"])  # once, not per run
    one, two = _lines(out)
    assert one["messages"][0]["content"] is None and isinstance(two["messages"][0]["content"], str)
    assert [r["messages"][0]["content"] for r in load_records(out, TRAJECTORY).records] == \
        [two["messages"][0]["content"]] * 2
    _rollout(written["tasks"], out, trials=3)  # the new way again: the prompt is already there
    assert _sidecar(out)["system_prompts"] == first
    assert len(load_records(out, TRAJECTORY).records) == 3


def test_overwrite_starts_the_prompts_afresh(written, tmp_path):
    out = tmp_path / "traj.jsonl"
    _rollout(written["tasks"], out)
    Path(f"{out}.meta.json").write_text(json.dumps({**_sidecar(out), "system_prompts": {"f" * 64: "stale"}}))
    config = RolloutConfig(trials=1, sandbox=SandboxConfig(backend="bwrap", workers=1))
    rollout_file(str(written["tasks"]), str(out), config, executor_model=(m := _model()), user_model=m,
                 show_progress=False, overwrite=True)
    assert "f" * 64 not in _sidecar(out)["system_prompts"]


def test_stdout_keeps_the_text(written, capfd):
    config = RolloutConfig(trials=1, sandbox=SandboxConfig(backend="bwrap", workers=1))
    rollout_file(str(written["tasks"]), "-", config, executor_model=(m := _model()), user_model=m,
                 show_progress=False)
    (line,) = [x for x in capfd.readouterr().out.splitlines() if x.startswith("{")]
    assert isinstance(json.loads(line)["messages"][0]["content"], str)


def test_eval_writes_the_reference_too(tmp_path):
    backend_or_skip("bwrap")
    wrong = ScriptedRoles(lambda turn, conv: "THOUGHT: guess END THOUGHT\n-1")
    config = {"envs": ["calculation"], "limit": 1, "trials": 1, "sandbox": SandboxConfig(backend="bwrap", workers=1)}
    eval_file(EvalConfig(**config), str(tmp_path / "ref.jsonl"), executor_model=wrong, show_progress=False)
    eval_file(EvalConfig(**config, keep_system_prompt=True), str(tmp_path / "kept.jsonl"), executor_model=wrong,
              show_progress=False)
    (ref,), (kept,) = _lines(tmp_path / "ref.jsonl"), _lines(tmp_path / "kept.jsonl")
    text = kept["messages"][0]["content"]
    assert ref["messages"][0]["content"] is None
    assert _sidecar(tmp_path / "ref.jsonl")["system_prompts"] == {prompt_sha256(text): text}
    (restored,) = load_records(tmp_path / "ref.jsonl", EVAL_RESULT).records
    assert restored["messages"] == kept["messages"]


def test_report_reads_the_reference_form(written):
    from sca.report.inputs import read_source

    src = read_source(written["ref"])
    assert src.kind == "rollout" and [r["reward"] for r in src.records] == [1]


@pytest.mark.parametrize("command", ["rollout", "eval"])
@pytest.mark.parametrize("keep", [False, True])
def test_the_keep_system_prompt_flag(written, tmp_path, command, keep):
    backend_or_skip("bwrap")
    out = tmp_path / "out.jsonl"
    where = [str(written["tasks"])] if command == "rollout" else ["--env", "calculation", "--limit", "1"]
    server = ReplayServer(lambda messages: "THOUGHT: done END THOUGHT\nCancelled.")
    try:
        r = runner.invoke(app, [command, *where, "-o", str(out), "--trials", "1", "--backend", "openai", "--model",
                                "m", "--base-url", server.url, "--sandbox", "bwrap",
                                *(["--keep-system-prompt"] if keep else [])])
    finally:
        server.close()
    assert r.exit_code == 0, r.output
    (record,) = _lines(out)
    assert isinstance(record["messages"][0]["content"], str) is keep
    assert ("system_prompts" in _sidecar(out)) is not keep
