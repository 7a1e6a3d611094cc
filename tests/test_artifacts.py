"""Records and JSONL artifacts: checking on read, resumable writing, meta sidecars."""

from __future__ import annotations

import json

import pytest

from sca.records.io import InputError, RecordWriter, load_records
from sca.records.stage_run import RunMeta
from sca.records import CAT_TASK, RecordError
from sca.records.stage_run import StageRun


def task(i: int = 0, **over):
    rec = {
        "id": f"t{i}", "env": "retail", "instruction": "do it",
        "evaluation_function": "def evaluate():\n    return True\n",
        "solution": "answer = 1\n", "failure_cases": ["x = 1", "x = 2", "x = 3"],
    }
    rec.update(over)
    return rec


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_valid_file_loads_with_hash_and_keeps_unknown_fields(tmp_path):
    p = write_lines(tmp_path / "in.jsonl", [json.dumps(task(0, extra={"k": 1})), "", json.dumps(task(1))])
    loaded = load_records(p, CAT_TASK)
    assert [r["id"] for r in loaded.records] == ["t0", "t1"]
    assert loaded.records[0]["extra"] == {"k": 1}
    assert len(loaded.sha256) == 64 and loaded.lines == 2


@pytest.mark.parametrize(
    "line, expected",
    [
        ("{not json", "in.jsonl:2: not valid JSON"),
        ("[1, 2]", "in.jsonl:2: expected a JSON object, got list"),
        (json.dumps({k: v for k, v in task(5).items() if k != "solution"}), "in.jsonl:2: solution: missing required field"),
        (json.dumps(task(5, failure_cases="x")), "in.jsonl:2: failure_cases: expected list, got string"),
        (json.dumps(task(5, failure_cases=["a", 3])), "in.jsonl:2: failure_cases[1]: expected string, got integer"),
        (json.dumps(task(5, id=7)), "in.jsonl:2: id: expected string, got integer"),
        (json.dumps(task(5, env="nowhere")), "in.jsonl:2: env: unknown environment 'nowhere'"),
        (json.dumps(task(5, meta=[1])), "in.jsonl:2: meta: expected object, got list"),
        (json.dumps(task(0)), "in.jsonl:2: id: duplicate id 't0' (first on line 1)"),
    ],
)
def test_bad_line_names_file_line_and_field(tmp_path, line, expected):
    p = write_lines(tmp_path / "in.jsonl", [json.dumps(task(0)), line, json.dumps(task(9))])
    with pytest.raises(InputError) as e:
        load_records(p, CAT_TASK)
    assert str(e.value).startswith(str(tmp_path / expected.split(":")[0]) + ":" + expected.split(":", 1)[1])
    # with skip_invalid the same line is reported and the others are kept
    skipped = []
    loaded = load_records(p, CAT_TASK, skip_invalid=True, on_skip=skipped.append)
    assert [r["id"] for r in loaded.records] == ["t0", "t9"]
    assert len(skipped) == 1 and expected.split(":", 2)[2].strip() in skipped[0]


def test_missing_input_and_directory_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match=r"nope.jsonl: no such file"):
        load_records(tmp_path / "nope.jsonl", CAT_TASK)
    with pytest.raises(InputError, match="is a directory"):
        load_records(tmp_path, CAT_TASK)


def test_empty_input_is_zero_records(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("")
    assert load_records(p, CAT_TASK).records == []


def test_schema_error_carries_field():
    with pytest.raises(RecordError) as e:
        CAT_TASK.check(task(0, instruction=None))
    assert e.value.field == "instruction"


def test_writer_resumes_and_cuts_torn_last_line(tmp_path):
    out = tmp_path / "out.jsonl"
    with RecordWriter(out) as w:
        w.write(task(0))
        w.write(task(1))
    with open(out, "a") as f:
        f.write('{"id": "t2", "env": "ret')  # a kill in the middle of a line
    w = RecordWriter(out)
    assert w.done_ids == {"t0", "t1"} and w.resumed == 2 and w.torn_bytes > 0
    w.write(task(2))
    w.close()
    lines = out.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["t0", "t1", "t2"]


def test_writer_refuses_corrupt_middle_and_overwrite_starts_afresh(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps(task(0)) + "\ngarbage\n" + json.dumps(task(1)) + "\n")
    with pytest.raises(InputError, match=r"out.jsonl:2: existing output is corrupt"):
        RecordWriter(out)
    with RecordWriter(out, overwrite=True) as w:
        assert w.done_ids == set()
        w.write(task(5))
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["t5"]


def test_meta_sidecar_records_runs_and_keeps_history(tmp_path, monkeypatch):
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(task(0))])
    loaded = load_records(src, CAT_TASK)
    out = tmp_path / "out.jsonl"
    monkeypatch.setattr("sys.argv", ["sca", "validate", str(src)])
    for _ in range(2):
        with StageRun("validate", {"accepted": str(out)}, inputs=[loaded], settings={"seed": 3}) as run:
            for r in run.pending(loaded.records):
                run.write("accepted", r)
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["stage"] == "validate" and meta["status"] == "finished"
    assert meta["inputs"][0]["sha256"] == loaded.sha256
    assert meta["settings"] == {"seed": 3}
    assert meta["command"][:2] == ["sca", "validate"]
    assert meta["counts"]["resumed"] == 1 and meta["counts"].get("accepted", 0) == 0
    assert len(meta["previous_runs"]) == 1 and meta["previous_runs"][0]["counts"]["accepted"] == 1
    assert meta["started_at"] <= meta["ended_at"]


def test_stage_run_refuses_same_file_twice(tmp_path):
    with pytest.raises(InputError, match="different files"):
        StageRun("x", {"a": str(tmp_path / "o"), "b": str(tmp_path / "o")})


def test_meta_marks_failed_runs(tmp_path):
    out = tmp_path / "o.jsonl"
    with pytest.raises(RuntimeError):
        with StageRun("x", {"a": str(out)}):
            raise RuntimeError("boom")
    assert json.loads(RunMeta(out, "x").path.read_text())["status"] == "failed: RuntimeError"
