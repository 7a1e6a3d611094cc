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
    assert "| 100.0% | 47.7% | 9.5% | 5.2% |" in readme  # the paper's reference row
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
