"""`sca report`: the funnel, reward, Pass@k, training and comparison sections, on the fixture runs
of tests/fixtures/report (written by its make_fixtures.py, whose docstring holds the hand counts)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sca import metrics
from sca.report import inputs, render, sections
from sca_cli.app import app
from stages import report as rp

FIX = Path(__file__).resolve().parent / "fixtures" / "report" / "run"
BASE, RFT = FIX / "eval_base.jsonl", FIX / "eval_rft.jsonl"
PLOTS = {"funnel.png", "rewards_trajectories.png", "pass_at_k.png", "training.png"}
runner = CliRunner()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "report"
    r = runner.invoke(app, ["report", str(FIX), "-o", str(out), "--compare", str(BASE), str(RFT)])
    return r, out


@pytest.fixture(scope="module")
def rep(tmp_path_factory):
    out = tmp_path_factory.mktemp("lib") / "report"
    return rp.report([FIX], out, compare=(BASE, RFT))


# -- the files written ---------------------------------------------------------------------------------


def check_png(path: Path) -> tuple[int, int]:
    """A whole, valid PNG: signature, every chunk's CRC, IHDR first and IEND last; its size."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, kinds = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in {kind!r}"
        kinds.append(kind)
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_cli_writes_every_plot_as_a_valid_png(cli_run):
    r, out = cli_run
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.glob("*.png")} == PLOTS
    import matplotlib.image

    for name in PLOTS:
        w, h = check_png(out / name)
        assert w >= 300 and h >= 200
        pixels = matplotlib.image.imread(out / name)
        assert pixels.shape[:2] == (h, w) and pixels.std() > 0  # decodes, and is not blank
    assert f"wrote {out / 'README.md'}" in r.output.replace("\n", "")


def test_readme_lists_every_plot_and_table(rep, cli_run):
    readme = rep.readme.read_text()
    assert {p.path.name for p in rep.plots} == PLOTS == {p.name for p in rep.out_dir.glob("*.png")}
    for plot in rep.plots:
        assert f"![{plot.caption}]({plot.path.name})" in readme
        assert f"\n*{plot.caption}*\n" in readme  # the one-line caption under it
        assert "\n" not in plot.caption
    titles = [t.title for t in rep.tables]
    assert {"Inputs", "Funnel stage of a validation record", "Validation funnel", "Rewards per task",
            "Pass@k per environment", "Training"} <= set(titles)
    assert any(t.startswith("Rejection reasons") for t in titles) and any(t.startswith("Comparison") for t in titles)
    for table in rep.tables:
        assert f"**{table.title}**" in readme
        assert "| " + " | ".join(table.columns) + " |" in readme
        for row in table.rows:
            assert "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" in readme
    assert readme.count("](") == len(rep.plots)
    # the CLI's page is the same page
    _, out = cli_run
    assert (out / "README.md").read_text().count("**") == readme.count("**")
    # the funnel's definition is on the page
    assert "proposed but has no code" in readme and "failed_check" in readme


def test_terminal_shows_the_tables(cli_run):
    r, _ = cli_run
    for title in ("Inputs", "Validation funnel", "Rewards per task", "Pass@k per environment", "Training"):
        assert title in r.output
    assert "47.7%" in r.output and "Traceback" not in r.output


# -- the funnel --------------------------------------------------------------------------------------


def test_funnel_matches_the_hand_count(rep):
    by_kind = {f.kind: f for f in rep.funnels}
    assert set(by_kind) == {"propose", "validate"}
    prop, val = by_kind["propose"], by_kind["validate"]
    # tests/fixtures/report/make_fixtures.py: 13 episodes -> 7 code runs -> 5 solution passes -> 3 valid
    assert prop.counts == (13, 7, 5, 3)
    assert (prop.no_answer, prop.duplicates) == (2, 1)
    assert {rc.reason: rc.count for rc in prop.reasons} == {
        "no answer (max_steps)": 1, "no answer (context_limit)": 1, "compile": 1, "noop_passes": 1,
        "solution_error": 1, "timeout": 1, "solution_fails": 1, "answer_not_typeable": 1,
        "failure_case_passes": 1, "evaluate_error": 1, "duplicate": 1}
    assert sorted(prop.files) == ["episodes.failed.jsonl", "tasks.raw.jsonl"]  # the rejected output came along
    assert prop.model == "meta-llama/Llama-3.1-8B-Instruct"
    # 15 tasks -> 9 -> 7 -> 4
    assert val.counts == (15, 9, 7, 4)
    reasons = {rc.reason: (rc.count, dict(rc.checks), sections.FUNNEL_STAGES[rc.stage]) for rc in val.reasons}
    assert reasons == {
        "compile": (2, {"compile": 2}, "proposed"),
        "failure_case_count": (1, {"failure_case_count": 1}, "proposed"),
        "noop_passes": (1, {"noop_run": 1}, "proposed"),
        "sandbox_error": (1, {"noop_run": 1}, "proposed"),
        "solution_error": (1, {"solution_run": 1}, "proposed"),
        "solution_fails": (2, {"solution_run": 2}, "code runs"),
        "failure_case_error": (1, {"failure_case_runs": 1}, "solution passes"),
        "failure_case_passes": (2, {"failure_case_runs": 2}, "solution passes"),
    }
    from sca.cat import REASONS

    readme = rep.readme.read_text()
    assert "| 13 (100.0%) | 7 (53.8%) | 5 (38.5%) | 3 (23.1%) |" in readme
    assert "| 15 (100.0%) | 9 (60.0%) | 7 (46.7%) | 4 (26.7%) |" in readme
    # 13 and 15 proposed: too few for a rate; the paper's row is left out, the table's note says so
    assert "| 100.0% | 47.7% | 9.5% | 5.2% |" not in readme
    assert "(paper: Llama-3.1-8B, retail: 100.0% / 47.7% / 9.5% / 5.2%) are not beside these runs" in readme
    assert (prop.paper_not_comparable, val.paper_not_comparable) == (
        "13 proposed: too few for a rate (the paper's line needs 50 or more)",
        "15 proposed: too few for a rate (the paper's line needs 50 or more)")
    for reason in reasons:
        assert REASONS[reason] in readme


def test_funnel_of_the_accepted_output_alone_brings_its_rejected_output(tmp_path):
    r = rp.report([FIX / "tasks.jsonl"], tmp_path / "r", plots=False)
    assert [f.counts for f in r.funnels] == [(15, 9, 7, 4)]
    assert r.sources[1].told_by.startswith("rejected output of tasks.jsonl")


@pytest.mark.parametrize("validation, stage", [
    (None, 0),
    ({"valid": True}, 3),
    ({"valid": False, "reason": "compile", "failed_check": "compile"}, 0),
    ({"valid": False, "reason": "failure_case_count", "failed_check": "failure_case_count"}, 0),
    ({"valid": False, "reason": "noop_passes", "failed_check": "noop_run"}, 0),
    ({"valid": False, "reason": "timeout", "failed_check": "noop_run"}, 0),
    ({"valid": False, "reason": "solution_error", "failed_check": "solution_run"}, 0),
    ({"valid": False, "reason": "evaluate_error", "failed_check": "solution_run"}, 0),
    ({"valid": False, "reason": "solution_fails", "failed_check": "solution_run"}, 1),
    ({"valid": False, "reason": "answer_not_typeable", "failed_check": "answer_round_trip"}, 1),
    ({"valid": False, "reason": "failure_case_passes", "failed_check": "failure_case_runs"}, 2),
    ({"valid": False, "reason": "timeout", "failed_check": "failure_case_runs"}, 2),
    # without failed_check: the failing entry of checks, else the check of the reason
    ({"valid": False, "reason": "timeout", "checks": [{"check": "compile", "ok": True},
                                                      {"check": "failure_case_runs", "ok": False}]}, 2),
    ({"valid": False, "reason": "solution_fails"}, 1),
])
def test_funnel_stage_of_each_validation(validation, stage):
    assert sections.funnel_stage(validation) == stage


def test_funnel_stage_refuses_what_it_cannot_place():
    with pytest.raises(ValueError, match="unknown check 'typecheck'"):
        sections.funnel_stage({"valid": False, "reason": "compile", "failed_check": "typecheck"})
    with pytest.raises(ValueError, match="which check"):
        sections.funnel_stage({"valid": False, "reason": "timeout"})


# -- rewards per task ------------------------------------------------------------------------------


def test_reward_buckets_match_the_fixture(rep):
    (s,) = rep.rewards
    # t1 all, t2 and t4 some, t3 and t5 none, t6 only infrastructure failures
    assert (s.tasks, s.none, s.some, s.all) == (5, 2, 2, 1)
    assert (s.trials, s.rewarded, s.excluded, s.empty_tasks) == (19, 7, 5, 1)
    assert s.infra == {"inference": 3, "sandbox": 2}
    assert s.mean_reward == pytest.approx(7 / 19)
    assert sorted(s.rates) == pytest.approx([0, 0, 1 / 3, 0.5, 1])
    assert s.k == 4  # from the meta's settings
    assert s.summary == metrics.summarize(read_jsonl(FIX / "trajectories.jsonl"), 4)
    assert s.terminations == {"max_steps": 12, "user_stop": 7, "error": 5}
    readme = rep.readme.read_text()
    assert "| 2 (40.0%) | 2 (40.0%) | 1 (20.0%) |" in readme and "5 (inference 3, sandbox 2)" in readme
    assert f"{s.mean_reward:.3f}" in readme


# -- Pass@k across runs ------------------------------------------------------------------------------


def test_pass_table_matches_sca_metrics(rep):
    readme = rep.readme.read_text()
    rows = {(r.run, r.env): r for r in rep.pass_rows}
    names = {BASE: "meta-llama/Llama-3.1-8B-Instruct", RFT: "ckpt/rft-round1"}  # meta model; a path shortened
    assert set(rows) == {(n, env) for n in names.values() for env in ("calculation", "retail")}
    for path, name in names.items():
        records = read_jsonl(path)
        for env in ("calculation", "retail"):
            expected = metrics.summarize([r for r in records if r["env"] == env], 4)
            row = rows[name, env]
            assert row.summary == expected and row.k == 4 and row.split == "test"
            cells = [f"{100 * expected.pass1:.1f}% [{100 * expected.pass1_ci[0]:.1f}, {100 * expected.pass1_ci[1]:.1f}]",
                     f"{100 * expected.pass_k:.1f}% [{100 * expected.pass_k_ci[0]:.1f}, {100 * expected.pass_k_ci[1]:.1f}]"]
            line = next(ln for ln in readme.splitlines() if ln.startswith(f"| {name} | {env} |"))
            assert all(c in line for c in cells), line
    assert rows[names[RFT], "retail"].summary.excluded == 1
    # the paper's Table 1 beside Llama-3.1-8B-Instruct itself, not beside the fine-tuned checkpoint
    assert rows[names[BASE], "calculation"].paper == (20.3, 43.8)
    assert rows[names[BASE], "retail"].paper == (8.9, 15.7)
    assert rows[names[RFT], "calculation"].paper is None
    assert "| 20.3% / 43.8% |" in readme and "| 8.9% / 15.7% |" in readme


def _eval_copy(tmp_path, name, change_record, settings=None):
    """A copy of the base eval run (Llama-3.1-8B-Instruct) with its records and meta settings changed."""
    path = tmp_path / name
    path.write_text("".join(json.dumps(change_record(r)) + "\n" for r in read_jsonl(BASE)))
    meta = json.loads(BASE.with_name(BASE.name + ".meta.json").read_text())
    meta["settings"].update(settings or {})
    meta["outputs"] = {"results": name}
    path.with_name(name + ".meta.json").write_text(json.dumps(meta))
    return path


def test_table_1_only_beside_the_papers_benchmark(tmp_path):
    """The paper's figures sit beside the same model only on the same benchmark: not beside our
    held-out calculation tasks, a tau2 run not scored by tau2, another split, a --limit subset, an
    airline run that kept the tasks solved by doing nothing."""
    def held_out(r):
        return dict(r, benchmark_task_id=r["benchmark_task_id"].replace("m3/", "")) if r["env"] == "calculation" else r

    def other_split(r):
        return dict(r, split="train")

    def airline(r):
        return dict(r, env="airline") if r["env"] == "retail" else r

    def rows_of(path):
        sources, _ = inputs.collect([path])
        src = next(s for s in sources if s.kind == "eval")
        rows, notes = sections.build_pass_rows(src, 4, n_boot=10, seed=0)
        return {r.env: r for r in rows}, notes

    rows, notes = rows_of(BASE)
    assert rows["calculation"].paper == (20.3, 43.8) and rows["retail"].paper == (8.9, 15.7) and not notes
    rows, notes = rows_of(_eval_copy(tmp_path, "held.jsonl", held_out))
    assert rows["calculation"].paper is None and rows["retail"].paper == (8.9, 15.7)
    assert rows["calculation"].not_comparable.startswith("our held-out tasks")
    assert notes == [f"{rows['calculation'].run}, calculation: no paper figure beside it: "
                     + rows["calculation"].not_comparable]
    rows, _ = rows_of(_eval_copy(tmp_path, "unscored.jsonl", lambda r: dict(r, scorer="m3_tolerant")))
    assert rows["retail"].paper is None and rows["retail"].not_comparable == "not scored by tau2's evaluator"
    rows, _ = rows_of(_eval_copy(tmp_path, "train.jsonl", other_split))
    assert rows["retail"].paper is None and rows["retail"].not_comparable.startswith("split 'train'")
    rows, _ = rows_of(_eval_copy(tmp_path, "limit.jsonl", lambda r: r, {"limit": 3}))
    assert rows["retail"].paper is None and rows["calculation"].paper is None
    rows, _ = rows_of(_eval_copy(tmp_path, "air.jsonl", airline))
    assert rows["airline"].paper is None and rows["airline"].not_comparable.startswith("the paper left out")
    rows, _ = rows_of(_eval_copy(tmp_path, "air-drop.jsonl", airline, {"drop_noop_solvable": True}))
    assert rows["airline"].paper == (2.5, 10.0)


@pytest.mark.parametrize("name, yes", [
    ("meta-llama/Llama-3.1-8B-Instruct", True), ("/models/Meta-Llama-3.1-8B-Instruct/", True),
    ("llama-3.1-8b-instruct", True), ("ckpt/llama-3.1-8b-instruct-rft", False), ("Llama-3.1-70B-Instruct", False),
    (None, False),
])
def test_paper_model_is_llama_8b_instruct_itself(name, yes):
    assert sections.is_paper_model(name) is yes


# -- training ---------------------------------------------------------------------------------------


def test_training_curves(rep):
    (c,) = rep.curves
    assert c.name == "ckpt-rft" and c.model == "meta-llama/Llama-3.1-8B-Instruct"
    steps, loss = c.series("loss")
    assert steps == list(range(1, 11)) and loss[0] == pytest.approx(1.7)
    assert c.series("eval_loss")[0] == [5, 10]
    table = next(t for t in rep.tables if t.title == "Training")
    assert table.rows[0][:4] == ["ckpt-rft", "meta-llama/Llama-3.1-8B-Instruct", "10", "1.7"]


# -- the paired comparison --------------------------------------------------------------------------


def test_compare_gives_the_verdicts(rep, cli_run):
    a, b = read_jsonl(BASE), read_jsonl(RFT)
    got = {(c.env, c.metric): c.comparison for c in rep.comparisons}
    for env in ("calculation", "retail"):
        for metric in ("pass1", "pass_k"):
            want = metrics.compare([r for r in a if r["env"] == env], [r for r in b if r["env"] == env], 4, metric,
                                   name_a="meta-llama/Llama-3.1-8B-Instruct", name_b="ckpt/rft-round1")
            assert got[env, metric] == want
    assert got["calculation", "pass1"].verdict.endswith("larger than the noise.")
    assert "within the noise" in got["retail", "pass1"].verdict
    r, _ = cli_run
    text = r.output.replace("\n", " ")
    assert ("calculation (test): ckpt/rft-round1 is better than meta-llama/Llama-3.1-8B-Instruct on Pass@1 by "
            "62.5 points (95% CI") in text
    assert "larger than the noise." in text and "within the noise" in text
    readme = rep.readme.read_text()
    for c in got.values():
        assert c.verdict in readme


def _verdict_word(sentence: str) -> str:
    """The verdict cell a comparison's sentence calls for (sca.metrics's three verdicts)."""
    if sentence.endswith("larger than the noise."):
        return "larger than the noise"
    return "borderline" if ": borderline:" in sentence else "within the noise"


def test_compare_tables_verdict_cell_is_the_verdict_of_the_sentence(rep):
    """The table's short verdict and the sentence below it say the same, the borderline case included
    (p below 1 - confidence, an interval that touches zero)."""
    import dataclasses

    table = next(t for t in rep.tables if t.title.startswith("Comparison"))
    cells = {(row[0], row[1]): row[-1] for row in table.rows}
    assert cells == {("calculation (test)", "Pass@1"): "larger than the noise",
                     ("calculation (test)", "Pass@4"): "within the noise",
                     ("retail (test)", "Pass@1"): "within the noise", ("retail (test)", "Pass@4"): "within the noise"}
    for r in rep.comparisons:
        label = "Pass@1" if r.metric == "pass1" else "Pass@4"
        assert cells[f"{r.env} ({r.split})", label] == _verdict_word(r.comparison.verdict)
    real = next(r for r in rep.comparisons if r.metric == "pass1" and r.env == "calculation")
    c = real.comparison
    for p, ci in ((0.03, (0.0, 0.2)), (0.03, (-0.2, 0.0)), (0.03, (0.01, 0.2)), (0.2, (0.01, 0.2))):
        verdict = metrics._verdict(c.name_a, c.name_b, "Pass@1", 0.1, ci, p, c.tasks, c.confidence)
        changed = dataclasses.replace(c, mean_diff=0.1, ci=ci, p_value=p, significant=p < 0.05 and not ci[0] <= 0 <= ci[1],
                                      verdict=verdict)
        (row,) = render.compare_table([sections.CompareRow("calculation", "test", "pass1", changed)], "A", "B").rows
        assert row[-1] == _verdict_word(verdict)
        assert row[-1] == {(0.03, 0.0): "borderline", (0.03, -0.2): "borderline", (0.03, 0.01): "larger than the noise",
                           (0.2, 0.01): "within the noise"}[p, ci[0]]


def test_compare_notes_an_environment_only_one_run_has(tmp_path):
    """A's retail results relabelled airline: airline is only in A, retail only in B; each row says which."""
    a = tmp_path / "a.jsonl"
    relabelled = [{**r, "env": "airline", "task_id": r["task_id"].replace("retail/", "airline/"),
                   "id": r["id"].replace("retail/", "airline/")} if r["env"] == "retail" else r
                  for r in read_jsonl(BASE)]
    a.write_text("".join(json.dumps(r) + "\n" for r in relabelled))
    b = tmp_path / "b.jsonl"
    shutil.copy(RFT, b)
    got = rp.report([], tmp_path / "out", compare=(a, b), plots=False)
    names = {s.path.name: s.name for s in got.sources}
    assert names["a.jsonl"] != names["b.jsonl"]
    notes = {(r.env, r.metric): r.note for r in got.comparisons if r.comparison is None}
    assert notes == {("airline", "pass1"): f"only in {names['a.jsonl']}", ("airline", "pass_k"): f"only in {names['a.jsonl']}",
                     ("retail", "pass1"): f"only in {names['b.jsonl']}", ("retail", "pass_k"): f"only in {names['b.jsonl']}"}
    table = next(t for t in got.tables if t.title.startswith("Comparison"))
    rows = {(row[0], row[1]): row for row in table.rows}
    assert rows["airline (test)", "pass1"][2:] == ["-"] * 6 + [f"only in {names['a.jsonl']}"]
    assert rows["retail (test)", "pass_k"][-1] == f"only in {names['b.jsonl']}"
    readme = got.readme.read_text()
    assert f"* airline (test), pass1: only in {names['a.jsonl']}" in readme
    assert [r.env for r in got.comparisons if r.comparison is not None] == ["calculation", "calculation"]


# -- telling what a file is ------------------------------------------------------------------------------


def test_kinds_told_from_the_records_without_sidecars(tmp_path):
    d = tmp_path / "run"
    (d / "ck").mkdir(parents=True)
    for name in ("trajectories.jsonl", "eval_base.jsonl", "episodes.failed.jsonl", "tasks.rejected.jsonl"):
        shutil.copy(FIX / name, d / name)
    lines = read_jsonl(FIX / "ckpt-rft" / "train_log.jsonl")
    (d / "ck" / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (d / "ck" / "train_log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (d / "raw.jsonl").write_text(json.dumps({"id": "a", "env": "retail", "instruction": "x",
                                             "evaluation_function": "def evaluate():\n    return True\n",
                                             "solution": "", "failure_cases": []}) + "\n")
    (d / "empty.jsonl").write_text("")
    r = rp.report([d, d / "ck" / "log.jsonl"], tmp_path / "out", plots=False)
    kinds = {s.path.name: (s.kind, s.told_by) for s in r.sources}
    assert kinds == {
        "trajectories.jsonl": ("rollout", "fields"), "eval_base.jsonl": ("eval", "fields"),
        "episodes.failed.jsonl": ("propose", "fields"), "tasks.rejected.jsonl": ("validate", "fields"),
        "train_log.jsonl": ("train", "fields"), "log.jsonl": ("train", "fields"),
        "raw.jsonl": (None, "fields"), "empty.jsonl": (None, "-"),
    }
    # in a directory, what has nothing to report is skipped with a note
    assert any("raw.jsonl: skipped" in n for n in r.notes) and any("empty.jsonl: skipped" in n for n in r.notes)
    # no meta: the eval run is named by its records' model
    assert [row.run for row in r.pass_rows][:1] == ["meta-llama/Llama-3.1-8B-Instruct"]
    # a run named by nothing but its file
    bare = tmp_path / "bare"
    bare.mkdir()
    recs = read_jsonl(BASE)
    for x in recs:
        x["models"] = {}
    (bare / "mine.jsonl").write_text("".join(json.dumps(x) + "\n" for x in recs))
    r = rp.report([bare / "mine.jsonl"], tmp_path / "out2", plots=False)
    assert {row.run for row in r.pass_rows} == {"mine"}


# -- bad input: one line, exit 2 -------------------------------------------------------------------------


def _traj(**change):
    rec = read_jsonl(FIX / "trajectories.jsonl")[0]
    rec.update(change)
    return {k: v for k, v in rec.items() if v != "DROP"}


def _bad_cases():
    ok = json.dumps(_traj())
    val = read_jsonl(FIX / "tasks.rejected.jsonl")[0]
    val["validation"]["failed_check"] = "typecheck"
    raw = {"id": "a", "env": "retail", "instruction": "x", "evaluation_function": "", "solution": "",
           "failure_cases": []}
    return [
        ("not_json", {"bad.jsonl": ok + "\n{oops\n"}, "bad.jsonl:2: not valid JSON"),
        ("no_reward", {"bad.jsonl": json.dumps(_traj(reward="DROP")) + "\n"},
         "bad.jsonl:1: reward: missing required field"),
        ("reward_2", {"bad.jsonl": ok + "\n" + json.dumps(_traj(id="t1#9", trial=9, reward=2)) + "\n"},
         "bad.jsonl:2: reward"),
        ("duplicate", {"bad.jsonl": ok + "\n" + ok + "\n"}, "bad.jsonl:2: id: duplicate id"),
        ("unknown", {"bad.jsonl": json.dumps({"hello": 1}) + "\n"}, "bad.jsonl:1: cannot tell what this is"),
        ("stage", {"bad.jsonl": ok + "\n", "bad.jsonl.meta.json": json.dumps({"stage": "bake"})},
         "bad.jsonl.meta.json: unknown stage 'bake'"),
        ("meta_json", {"bad.jsonl": ok + "\n", "bad.jsonl.meta.json": "{"}, "bad.jsonl.meta.json: not valid JSON"),
        ("meta_kind", {"bad.jsonl": ok + "\n", "bad.jsonl.meta.json": json.dumps({"stage": "validate"})},
         "bad.jsonl:1: evaluation_function: missing required field"),
        ("check", {"bad.jsonl": json.dumps(val) + "\n"}, "bad.jsonl:1: validation.failed_check: unknown check"),
        ("raw_tasks", {"bad.jsonl": json.dumps(raw) + "\n"}, "bad.jsonl:1: CaT tasks without a validation object"),
        ("train", {"train_log.jsonl": json.dumps({"step": "one", "loss": 1.0}) + "\n"},
         "train_log.jsonl:1: step: missing or not an integer"),
    ]


@pytest.mark.parametrize("files, message", [c[1:] for c in _bad_cases()], ids=[c[0] for c in _bad_cases()])
def test_bad_input_is_one_line_exit_2(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    target = tmp_path / next(iter(files))
    r = runner.invoke(app, ["report", str(target), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert message in r.output and str(tmp_path) in r.output
    assert not (tmp_path / "out" / "README.md").exists()


def test_missing_input_and_bad_compare(tmp_path):
    r = runner.invoke(app, ["report", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "none.jsonl: no such file" in r.output and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(app, ["report", str(FIX), "-o", str(tmp_path / "o"), "--compare", str(BASE),
                            str(FIX / "tasks.jsonl")])
    assert r.exit_code == 2 and "tasks.jsonl: --compare takes two eval" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = runner.invoke(app, ["report", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no input" in r.output


def test_help_stays_light():
    r = runner.invoke(app, ["report", "--help"])
    assert r.exit_code == 0 and "Examples:" in r.output and "--compare" in r.output
    probe = ("import sys\nsys.argv = ['sca', '--help']\nfrom sca_cli.app import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print('LOADED', [m for m in ('matplotlib', 'numpy', 'stages.report', 'rich') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in out


# == the comparison across task formats and the verifier audit (issue 17) ==============================
# tests/fixtures/report/ablation, written by make_fixtures.py (its docstring holds the hand counts)

ABL = Path(__file__).resolve().parent / "fixtures" / "report" / "ablation"
FUNNEL_MIN = 50  # sca.paper.FUNNEL_MIN_PROPOSALS, as the tests expect it
ABL_PLOTS = {"formats.png", "format_funnel.png", "audit.png", "labels.png"}
REBUTTAL = {"zero-shot": (8.9, 15.7), "instruction-only": (9.8, 18.3), "eval-only": (8.9, 20.8), "cat": (13.0, 25.2)}


@pytest.fixture(scope="module")
def abl(tmp_path_factory):
    return rp.report([ABL], tmp_path_factory.mktemp("abl") / "report")


def _abl_copy(tmp_path) -> Path:
    dst = tmp_path / "ablations"
    shutil.copytree(ABL, dst)
    return dst


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _rewrite_jsonl(path: Path, change) -> None:
    path.write_text("".join(json.dumps(change(r)) + "\n" for r in read_jsonl(path)))


def test_format_comparison_matches_the_hand_count(abl):
    rows = {r.format: r for r in abl.format_rows}
    assert [r.format for r in abl.format_rows] == ["zero-shot", "instruction-only", "eval-only", "cat"]
    hand = {"zero-shot": (4 / 24, 3 / 6), "instruction-only": (4 / 24, 3 / 6), "eval-only": (5 / 24, 4 / 6),
            "cat": (9 / 24, 5 / 6)}
    files = {"zero-shot": ABL / "eval.base.jsonl", **{f: ABL / f / "eval.jsonl" for f in hand if f != "zero-shot"}}
    readme = abl.readme.read_text()
    for fmt, (p1, p4) in hand.items():
        r = rows[fmt]
        assert (r.summary.pass1, r.summary.pass_k) == pytest.approx((p1, p4))
        assert r.summary == metrics.summarize(read_jsonl(files[fmt]), 4) and r.k == 4 and r.env == "retail"
        assert r.paper is not None and r.paper[1] == REBUTTAL[fmt] and r.not_comparable is None
        line = next(ln for ln in readme.splitlines() if ln.startswith(f"| {fmt} |"))
        s = r.summary
        assert f"{100 * s.pass1:.1f}% [{100 * s.pass1_ci[0]:.1f}, {100 * s.pass1_ci[1]:.1f}]" in line
        assert f"| {REBUTTAL[fmt][0]:.1f}% / {REBUTTAL[fmt][1]:.1f}% |" in line
    assert rows["cat"].told_by == "its directory (cat/)" and rows["cat"].base_model == "meta-llama/Llama-3.1-8B-Instruct"
    assert rows["zero-shot"].told_by.startswith("not an sca checkpoint")
    assert [r.paper[0] for r in abl.format_rows] == ["zero-shot", "PAE", "SCA no filtering", "SCA"]


def test_no_format_section_without_runs_of_a_format(rep):
    """The run fixture has cat tasks and evals of models whose training nobody can tell: no comparison."""
    assert rep.format_rows == [] and "Comparison across task formats" not in [h for h, _ in rep.sections]
    assert "formats.png" not in {p.path.name for p in rep.plots}


@pytest.mark.parametrize("case, where, change, why", [
    ("other base", "cat/ckpt/train_summary.json",
     lambda d: d["summary"].update(model="Qwen/Qwen2.5-7B-Instruct"), "trained from Qwen/Qwen2.5-7B-Instruct"),
    ("sft", "cat/ckpt/train_summary.json", lambda d: d["summary"].update(algo="sft"), "trained with --algo sft"),
    ("limit", "cat/eval.jsonl.meta.json", lambda d: d["settings"].update(limit=3), "--limit 3"),
    ("split", "cat/eval.jsonl", lambda r: dict(r, split="train"), "split 'train'"),
    ("not tau2", "cat/eval.jsonl", lambda r: dict(r, scorer="m3_tolerant"), "not scored by tau2"),
    ("calculation", "cat/eval.jsonl", lambda r: dict(r, env="calculation"), "the rebuttal measured retail only"),
    ("airline", "cat/eval.jsonl", lambda r: dict(r, env="airline"), "the rebuttal measured retail only"),
    ("no checkpoint", "cat/ckpt", None, "the checkpoint's base model is unknown"),
])
def test_rebuttal_row_only_beside_what_the_rebuttal_measured(tmp_path, case, where, change, why):
    root = _abl_copy(tmp_path)
    target = root / where
    if change is None:
        shutil.rmtree(target)
    elif target.suffix == ".json":
        _edit_json(target, change)
    else:
        _rewrite_jsonl(target, change)
    got = rp.report([root], tmp_path / "out", plots=False)
    rows = {r.format: r for r in got.format_rows}
    assert rows["cat"].paper is None and why in rows["cat"].not_comparable
    for fmt in ("zero-shot", "instruction-only", "eval-only"):  # the others untouched
        assert rows[fmt].paper[1] == REBUTTAL[fmt]
    line = next(ln for ln in got.readme.read_text().splitlines() if ln.startswith("| cat |"))
    assert line.endswith("| - |")
    if rows["cat"].env == "retail":
        assert any(n.endswith(f"no rebuttal figure beside it: {rows['cat'].not_comparable}") for n in got.notes)


def test_zero_shot_row_only_for_the_papers_model(tmp_path):
    root = _abl_copy(tmp_path)
    model = "Qwen/Qwen2.5-7B-Instruct"
    _rewrite_jsonl(root / "eval.base.jsonl", lambda r: {**r, "models": {"executor": {"model": model}}})
    _edit_json(root / "eval.base.jsonl.meta.json", lambda d: d["settings"].update(models={"executor": {"model": model}}))
    rows = {r.format: r for r in rp.report([root], tmp_path / "out", plots=False).format_rows}
    assert rows["zero-shot"].paper is None and rows["zero-shot"].not_comparable == "not Llama-3.1-8B-Instruct itself"
    assert rows["cat"].paper[1] == REBUTTAL["cat"]


def test_format_told_by_the_checkpoints_training_data_outside_the_layout(tmp_path):
    """Outside runs/<format>/, the trajectories the checkpoint was trained on tell the format; trajectories
    of several formats, or a model that is not here, leave the run out of the comparison, with a note."""
    mine = tmp_path / "mine"
    shutil.copytree(ABL / "eval-only", mine)
    got = rp.report([mine], tmp_path / "out", plots=False)
    (row,) = got.format_rows
    assert row.format == "eval-only" and row.told_by.startswith("the format of trajectories.jsonl")
    assert row.paper[1] == REBUTTAL["eval-only"]
    _rewrite_jsonl(mine / "trajectories.jsonl", lambda r: {**r, "format": "cat"} if r["trial"] == 0 else r)
    got = rp.report([mine, ABL / "cat" / "eval.jsonl"], tmp_path / "out2", plots=False)
    assert [r.format for r in got.format_rows] == ["cat"]
    assert any(n.endswith("mine/eval.jsonl: left out of the comparison across formats: trajectories.jsonl, the "
                          "checkpoint's training data, mixes formats") for n in got.notes), got.notes
    got = rp.report([FIX / "eval_rft.jsonl", ABL / "cat" / "eval.jsonl"], tmp_path / "out3", plots=False)
    assert any("eval_rft.jsonl: left out" in n and "its model is not here" in n for n in got.notes)


def test_a_format_directory_holding_another_format_is_noted(tmp_path):
    root = _abl_copy(tmp_path)
    _rewrite_jsonl(root / "cat" / "trajectories.jsonl", lambda r: {**r, "format": "eval-only"})
    got = rp.report([root], tmp_path / "out", plots=False)
    assert "cat/trajectories.jsonl: in cat/ but holds tasks of format eval-only" in got.notes


def test_funnel_per_format_matches_the_hand_count(abl):
    got = {f.format: (f.proposed, f.valid) for f in abl.format_funnels}
    assert got == {"cat": (5, 2), "eval-only": (4, 3), "instruction-only": (3, 2)}
    # the CaT funnel has the cat run only: compile (proposed), solution_fails (code runs), no answer, 2 valid
    assert [f.counts for f in abl.funnels] == [(5, 3, 2, 2)]
    table = next(t for t in abl.tables if t.title == "Funnel per task format")
    rows = {(r[0], r[1]): r[4:] for r in table.rows}
    assert rows["propose eval-only/tasks.raw.jsonl", "eval-only"] == ["4", "3 (75.0%)"]
    assert ("paper: Llama-3.1-8B, retail", "cat") not in rows  # 5 cat tasks proposed: too few for a rate
    assert "(paper: Llama-3.1-8B, retail, cat: 5.2% valid) are not beside these runs: 5 proposed" in table.note
    assert not any(fmt != "cat" and r[0].startswith("paper") for (_, fmt), r in zip(rows, table.rows))


def test_verification_only_tasks_are_a_pool_of_their_own(tmp_path):
    d = tmp_path / "v"
    d.mkdir()
    tasks = read_jsonl(FIX / "tasks.jsonl")
    for t in tasks[:2]:
        t["validation"]["check_set"] = ["compile", "noop_run", "solution_run", "answer_round_trip"]
    (d / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    got = rp.report([d / "tasks.jsonl"], tmp_path / "out", plots=False)
    assert {f.format: (f.proposed, f.valid) for f in got.format_funnels} == {"cat": (2, 2),
                                                                             "cat (verification only)": (2, 2)}


def test_audit_lax_rate_per_pool(abl):
    pools = {p.format: p for p in abl.audit}
    cat_pool, eval_pool = pools["cat"], pools["eval-only"]
    assert (cat_pool.tasks, cat_pool.audited, cat_pool.lax, cat_pool.skipped) == (5, 5, 2, 0)
    assert (cat_pool.mutants, cat_pool.accepted) == (18, 4) and cat_pool.rate == pytest.approx(0.4)
    lax = [{"task_id": str(i), "trial": 0, "reward": v} for i, v in enumerate([1, 0, 0, 1, 0])]
    assert cat_pool.rate_ci == metrics.summarize(lax, 1).pass1_ci
    assert cat_pool.rate_ci[0] < 0.4 < cat_pool.rate_ci[1]
    assert (eval_pool.tasks, eval_pool.audited, eval_pool.skipped, eval_pool.rate) == (3, 0, 3, None)
    readme = abl.readme.read_text()
    lo, hi = cat_pool.rate_ci
    assert f"| 5 | 5 | 0 | 18 | 4 | 2 | 40.0% [{100 * lo:.1f}, {100 * hi:.1f}] |" in readme
    assert "| 3 | 0 | 3 | 0 | 0 | 0 | - |" in readme


def test_hand_label_rates_as_figure_4(abl):
    rows = {r.format: r for r in abl.labels}
    assert (rows["cat"].tp, rows["cat"].fp, rows["cat"].tn, rows["cat"].fn) == (8, 1, 7, 4)
    assert rows["cat"].rates["false_positive_rate"][0] == pytest.approx(1 / 8)
    assert rows["eval-only"].rates["false_negative_rate"][0] == pytest.approx(1 / 4)
    assert rows["instruction-only"].rates["false_negative_rate"] is None
    readme = abl.readme.read_text()
    assert "| rates.json | cat | 20 | 8 | 1 | 7 | 4 | 12.5% [0.0, 32.5] | 33.3% [13.3, 53.3] |" in readme
    assert "| rates.json | instruction-only | 4 | 0 | 0 | 4 | 0 | 0.0% [0.0, 20.0] | - | - | - |" in readme
    assert "| cat | - | - | - | - | - | 0% | 30% | - | - |" in readme  # the paper's Figure 4, as a reference row
    assert "| verification only | - | - | - | - | - | - | 66% | - | - |" in readme


def test_cli_draws_the_formats_and_the_audit(tmp_path):
    out = tmp_path / "report"
    r = runner.invoke(app, ["report", str(ABL), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert ABL_PLOTS <= {p.name for p in out.glob("*.png")}
    for name in ABL_PLOTS:
        w, h = check_png(out / name)
        assert w >= 300 and h >= 200
    for title in ("Comparison across task formats", "Funnel per task format", "Verifier audit: lax rate per pool",
                  "Hand-labelled rewards (Figure 4)"):
        assert title in r.output
    readme = (out / "README.md").read_text()
    assert "## Comparison across task formats" in readme and "## Verifier audit" in readme
    assert "No data" not in readme


def test_no_data_where_there_is_none(tmp_path):
    got = rp.report([ABL / "cat" / "tasks.audit.jsonl"], tmp_path / "a", plots=False)
    (items,) = [i for h, i in got.sections if h == "Verifier audit"]
    from sca.report import page

    assert page.NO_LABELS in items and page.NO_AUDIT not in items
    got = rp.report([ABL / "rates.json"], tmp_path / "b", plots=False)
    items = dict(got.sections)["Verifier audit"]
    assert page.NO_AUDIT in items and [r.format for r in got.labels] == ["instruction-only", "eval-only", "cat"]
    got = rp.report([ABL / "eval-only" / "tasks.raw.jsonl"], tmp_path / "c", plots=False)
    items = dict(got.sections)["Comparison across task formats"]
    assert page.NO_FORMAT_RUNS in items and got.funnels == []  # no CaT task: no CaT funnel
    r = runner.invoke(app, ["report", str(ABL / "rates.json"), "-o", str(tmp_path / "d")])
    assert r.exit_code == 0 and "No data: no sca audit output" in r.output


def test_kinds_of_the_new_records_told_by_their_fields(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for name in ("trajectories.jsonl", "tasks.audit.jsonl", "episodes.failed.jsonl"):
        shutil.copy(ABL / "instruction-only" / name if name != "tasks.audit.jsonl" else ABL / "eval-only" / name,
                    d / name)
    raw = {"id": "a", "env": "retail", "format": "instruction-only", "instruction": "Cancel my order."}
    (d / "raw.jsonl").write_text(json.dumps(raw) + "\n")
    got = rp.report([d], tmp_path / "out", plots=False)
    kinds = {s.path.name: (s.kind, s.told_by) for s in got.sources}
    assert kinds == {"trajectories.jsonl": ("rollout", "fields"), "tasks.audit.jsonl": ("audit", "fields"),
                     "episodes.failed.jsonl": ("propose", "fields"), "raw.jsonl": (None, "fields")}
    (stats,) = got.rewards
    assert (stats.trials, stats.rewarded) == (4, 2)  # the judge's rewards, read as a rollout's


def _audit_line(**audit):
    rec = read_jsonl(ABL / "cat" / "tasks.audit.jsonl")[0]
    rec["audit"].update(audit)
    return json.dumps(rec) + "\n"


def _rates(change):
    data = json.loads((ABL / "rates.json").read_text())
    change(data)
    return json.dumps(data)


@pytest.mark.parametrize("name, text, message", [
    ("bad.jsonl", _audit_line(lax="yes"), "bad.jsonl:1: audit.lax: expected true, false or null"),
    ("bad.jsonl", _audit_line(mutants=-1), "bad.jsonl:1: audit.mutants: expected a count"),
    ("bad.jsonl", _audit_line(mutants=1, accepted=["a", "b"]), "bad.jsonl:1: audit.accepted: 2 accepted of 1"),
    ("bad.jsonl", json.dumps({**read_jsonl(ABL / "cat" / "tasks.audit.jsonl")[0], "format": "free"}) + "\n",
     "bad.jsonl:1: format: expected one of cat, eval-only, instruction-only"),
    ("rates.json", _rates(lambda d: d["by_format"]["cat"].update(n=21)), "rates.json: by_format.cat.n: 21 is not"),
    ("rates.json", _rates(lambda d: d["by_format"]["cat"].update(precision=[1.5, 0, 1])),
     "rates.json: by_format.cat.precision: expected [estimate, low, high]"),
    ("rates.json", _rates(lambda d: d.pop("by_format")), "rates.json: by_format: expected an object"),
    ("rates.json", "[1]", "rates.json: expected a JSON object"),
], ids=["lax", "mutants", "accepted", "format", "n", "rate", "by_format", "not_object"])
def test_bad_audit_input_is_one_line_exit_2(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    r = runner.invoke(app, ["report", str(tmp_path / name), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and message in r.output, r.output


# == plots that cannot mislead, and both layouts of propose's rejected file (issue 18) ==================
# Each plot function returns what it drew, panel by panel (render.Panel): these tests read that, not pixels.


def _all_panels(*reports):
    return [(plot.path.name, panel) for r in reports for plot in r.plots for panel in plot.panels]


def test_every_plot_says_what_it_drew(rep, abl):
    panels = _all_panels(rep, abl)
    assert {name for name, _ in panels} == {p.path.name for r in (rep, abl) for p in r.plots} >= PLOTS | ABL_PLOTS
    for name, panel in panels:
        for s in panel.series:
            if s.kind == "bars":  # a value and n on every bar
                assert len(s.texts) == len(s.points), (name, s)
                for (_, y), text in zip(s.points, s.texts):
                    assert text.startswith((f"{y:.1f}%", f"{y:g}/")), (name, text, y)
                    assert "n=" in text or "/" in text, (name, text)
            else:  # points as well as lines
                assert s.marker not in (None, "", " ", "None"), (name, s)
            if s.kind == "points" and s.texts:  # an estimate's value and its n beside it
                assert "%" in s.texts[0] and ("n=" in s.texts[0] or "/" in s.texts[0]), (name, s.texts)
        if not panel.data:
            assert panel.notes[0] == render.NO_DATA, (name, panel)


def test_a_one_step_training_run_says_too_few_points_and_no_data(tmp_path):
    curve = sections.TrainCurve(name="ck", file="ck/train_log.jsonl", model=None,
                                lines=[{"step": 1, "loss": 2.0, "learning_rate": 1e-5}])
    path = tmp_path / "training.png"
    loss, lr, grad, tps = render.plot_training([curve], path)
    check_png(path)
    assert [(s.label, s.kind, s.points) for s in loss.series] == [("ck", "points", [(1, 2.0)])]
    assert loss.notes == ["too few points for a curve: ck has 1"] and lr.notes == loss.notes
    for empty in (grad, tps):  # nothing logged: said, not an empty frame
        assert empty.series == [] and empty.notes == [render.NO_DATA]


def test_a_training_curve_of_enough_points_has_no_note(rep):
    loss, lr, _, _ = next(p.panels for p in rep.plots if p.path.name == "training.png")
    line = next(s for s in loss.series if s.label == "ckpt-rft")
    assert line.kind == "line" and len(line.points) == 10 and line.points[0] == (1, 1.7)
    ev = next(s for s in loss.series if s.label == "ckpt-rft (eval)")
    assert ev.kind == "points" and loss.notes == ["too few points for a curve: ckpt-rft (eval) has 2"]
    assert lr.notes == [] and lr.series[0].kind == "line"
    assert render.MIN_CURVE_POINTS == 3


def _pass_row(run, env, successes, k=2):
    records = [{"task_id": f"{env}/{i}", "trial": t, "reward": int(t < c)} for i, c in enumerate(successes)
               for t in range(k)]
    return sections.PassRow(run=run, file=f"{run}.jsonl", model=None, env=env, split="test", k=k,
                            summary=metrics.summarize(records, k, n_boot=20), paper=None)


def test_pass_at_k_at_zero_is_a_bar_with_its_value_and_a_missing_run_says_no_data(tmp_path):
    rows = [_pass_row("A", "retail", [0, 0, 0]), _pass_row("A", "calculation", [1, 2, 0, 0]),
            _pass_row("B", "retail", [2, 1, 0])]
    path = tmp_path / "pass.png"
    pass1, pass_k, hat = render.plot_pass(rows, path)
    check_png(path)
    a, b = pass1.data
    assert (a.label, a.kind, [y for _, y in a.points]) == ("A", "bars", [0.0, 37.5])
    assert a.texts == ["0.0%\nn=3", "37.5%\nn=4"]  # 0% is a bar with its value, not a blank
    assert b.label == "B" and len(b.points) == 1
    for panel in (pass1, pass_k, hat):
        assert panel.notes == ["no data: B on calculation (test)"]
        assert panel.references == []  # no paper row given: no diamond


@pytest.mark.parametrize("envs, fmt, proposed, why", [
    (["retail"], "cat", 50, None),
    (["retail"], "cat", 800, None),
    (["retail"], "cat", 49, "49 proposed: too few for a rate"),
    (["retail"], "cat", 2, "2 proposed: too few for a rate"),
    (["calculation"], "cat", 800, "env calculation: the paper's funnel is of retail tasks"),
    (["airline", "retail"], "cat", 800, "env airline, retail"),
    (["retail"], "eval-only", 800, "format eval-only: the paper's funnel is of cat tasks"),
    (["retail"], "cat (verification only)", 800, "format cat (verification only)"),
])
def test_the_funnels_rule_of_comparability(envs, fmt, proposed, why):
    from sca.paper import FUNNEL_MIN_PROPOSALS, funnel_not_comparable

    got = funnel_not_comparable(envs, fmt, proposed)
    assert (got is None) if why is None else got.startswith(why)
    assert FUNNEL_MIN_PROPOSALS == 50


def _validate_pool(tmp_path, n, env="retail"):
    """A validate run of `n` tasks: the fixture's four valid tasks, repeated under new ids."""
    valid = [t for t in read_jsonl(FIX / "tasks.jsonl") if t["validation"]["valid"]]
    d = tmp_path / f"{env}{n}"
    d.mkdir()
    path = d / "tasks.jsonl"
    path.write_text("".join(json.dumps({**valid[i % len(valid)], "id": f"t{i}", "env": env}) + "\n" for i in range(n)))
    return path


@pytest.mark.parametrize("n, env, comparable", [(52, "retail", True), (49, "retail", False),
                                                (52, "calculation", False)])
def test_the_papers_funnel_only_beside_a_comparable_run(tmp_path, n, env, comparable):
    got = rp.report([_validate_pool(tmp_path, n, env)], tmp_path / "out")
    (funnel,) = got.funnels
    assert (funnel.paper_not_comparable is None) is comparable
    (panel,) = next(p.panels for p in got.plots if p.path.name == "funnel.png")
    table = next(t for t in got.tables if t.title == "Validation funnel")
    readme = got.readme.read_text()
    if comparable:
        assert [s.points for s in panel.references] == [list(enumerate(sections.PAPER_FUNNEL[1]))]
        assert table.rows[-1][0] == sections.PAPER_FUNNEL[0] and "| 100.0% | 47.7% | 9.5% | 5.2% |" in readme
        assert not any("no paper funnel" in n for n in got.notes)
    else:
        assert panel.references == [] and panel.notes == [f"the paper's figures left out: {funnel.paper_not_comparable}"]
        assert not any(row[0] == sections.PAPER_FUNNEL[0] for row in table.rows)
        assert "are not beside these runs: " + funnel.paper_not_comparable in table.note
        assert f"validate tasks.jsonl: no paper funnel beside it: {funnel.paper_not_comparable}" in got.notes


def test_the_format_funnel_draws_the_papers_yield_only_where_comparable(abl, tmp_path):
    (panel,) = next(p.panels for p in abl.plots if p.path.name == "format_funnel.png")
    assert panel.references == []  # 5 cat tasks proposed: too few
    assert panel.notes == [(f"the paper's figures left out: 5 proposed: too few for a rate (the paper's line needs "
                            f"{FUNNEL_MIN} or more)")]
    funnels = [sections.FormatFunnel("propose a", "cat", None, ["retail"], 60, 3),
               sections.FormatFunnel("propose b", "cat", None, ["calculation"], 60, 3, "env calculation: ..."),
               sections.FormatFunnel("propose c", "eval-only", None, ["retail"], 60, 40, "format eval-only: ...")]
    (panel,) = render.plot_format_funnels(funnels, tmp_path / "f.png")
    assert [s.points for s in panel.references] == [[(0, 5.2)]] and panel.notes == []
    assert [s.texts for s in panel.data] == [["5.0%\n3/60"], ["5.0%\n3/60"], ["66.7%\n40/60"]]


def test_audit_and_label_plots_say_no_data_where_nothing_was_counted(abl):
    (audit,) = next(p.panels for p in abl.plots if p.path.name == "audit.png")
    assert [s.texts for s in audit.data] == [["40.0% 2/5"]]
    assert audit.notes == ["no data: eval-only/tasks.audit.jsonl (eval-only): no task audited"]
    fp, fn = next(p.panels for p in abl.plots if p.path.name == "labels.png")
    assert fn.notes == ["no data: rates.json (instruction-only): no case to count"] and fp.notes == []


def test_propose_rejected_files_of_both_layouts_give_the_same_funnel(tmp_path):
    """run/ keeps failed episodes as task records with empty parts (before issue 18); the ablation's
    are records of their own kind. Rewritten in the new layout, run/'s funnel is the same."""
    old = read_jsonl(FIX / "episodes.failed.jsonl")
    assert not any("kind" in r for r in old)
    assert all(r["kind"] == "failed_episode" for r in read_jsonl(ABL / "cat" / "episodes.failed.jsonl"))
    parts = ("instruction", "evaluation_function", "solution", "failure_cases")
    new = []
    for r in old:
        if r["meta"]["status"] != "failed":
            new.append(r)  # a duplicate stays a task
            continue
        rec = {"kind": "failed_episode", "id": r["id"], "env": r["env"], "format": "cat",
               "reason": r["meta"]["reason"], "steps": 3}
        if "validation" in r:
            rec.update(last_answer={p: r[p] for p in parts}, validation=r["validation"])
        new.append({**rec, "meta": r["meta"]})
    d = tmp_path / "run"
    d.mkdir()
    for name in ("tasks.raw.jsonl", "tasks.raw.jsonl.meta.json"):
        shutil.copy(FIX / name, d / name)
    (d / "episodes.failed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in new))
    got = rp.report([d / "tasks.raw.jsonl"], tmp_path / "out", plots=False)
    want = rp.report([FIX / "tasks.raw.jsonl"], tmp_path / "want", plots=False)
    (f,), (w,) = got.funnels, want.funnels
    assert f.counts == w.counts == (13, 7, 5, 3)
    assert {rc.reason: rc.count for rc in f.reasons} == {rc.reason: rc.count for rc in w.reasons}
    assert (f.no_answer, f.duplicates) == (2, 1)
    # a failed episode in disguise (a task field at its top) is bad input: one line, exit 2
    bad = dict(new[0], instruction="")
    (d / "episodes.failed.jsonl").write_text(json.dumps(bad) + "\n")
    r = runner.invoke(app, ["report", str(d / "tasks.raw.jsonl"), "-o", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "episodes.failed.jsonl:1: instruction: a failed episode has no instruction" in r.output
