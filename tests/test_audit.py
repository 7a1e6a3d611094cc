"""`sca audit`: mutation tests of evaluate() (a lax verifier is flagged, a tight one is not), the labelling
sheet (stratified, deterministic) and the rates its labels give (hand-computed), on the bwrap sandbox."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from _sandbox_util import StoreEnv, open_sandbox
from typer.testing import CliRunner

from sandbox.config import SandboxConfig
from sca.audit.config import AuditConfig
from sca.audit.labels import label_rates, read_labels, sheet_csv, sheet_rows
from sca.audit.mutants import audit_task, candidates, lax_rates
from sca.records.io import InputError
from sca_cli.app import app

runner = CliRunner()

ORDER = "#W2974929"  # pending, fatima_anderson_2157, who also has #W4111294 (cancelled) and #W4514908 (pending)
USER = "fatima_anderson_2157"
CANCEL = f'cancel_pending_order(order_id="{ORDER}", reason="no longer needed")\n'


def task(id, env, evaluate, solution, **more):
    return {"id": id, "env": env, "instruction": f"task {id}", "evaluation_function": evaluate,
            "solution": solution, "failure_cases": ["pass\n"], **more}


#: the issue's example: the instruction names the reason, evaluate() checks only that the order is cancelled
LAX_CANCEL = task("lax-cancel", "retail",
                  f'def evaluate():\n    return get_order_details(order_id="{ORDER}")["status"] == "cancelled"\n',
                  CANCEL)
TIGHT_CANCEL = task("tight-cancel", "retail",
                    f'def evaluate():\n    o = get_order_details(order_id="{ORDER}")\n'
                    '    return o["status"] == "cancelled" and o["cancel_reason"] == "no longer needed"\n', CANCEL)
CALC_LAX = task("calc-lax", "calculation", "def evaluate(answer):\n    return isinstance(answer, (int, float))\n",
                "answer = calculator(expression='12*7')\n")
CALC_TIGHT = task("calc-tight", "calculation", "def evaluate(answer):\n    return abs(float(answer) - 84) < 1e-6\n",
                  "answer = calculator(expression='12*7')\n")
#: the same address twice changes nothing: the repeated write leaves the solution's state
ADDRESS = task("address", "retail",
               f'def evaluate():\n    a = get_user_details(user_id="{USER}")["address"]\n'
               '    return a["address1"] == "1 Main St" and a["zip"] == "73301"\n',
               f'modify_user_address(user_id="{USER}", address1="1 Main St", address2="", city="Austin", state="TX", '
               'country="USA", zip="73301")\n')


@pytest.fixture(scope="module")
def sandbox():
    with open_sandbox("bwrap", timeout=5.0) as sb:
        yield sb


@pytest.fixture(scope="module")
def envs():
    from envs import make_env

    return {name: make_env(name) for name in ("retail", "calculation")}


def audit(t, envs, sandbox, **config):
    env = envs[t["env"]]
    before = env.state_hash()
    a = audit_task(t, env, sandbox, AuditConfig(SandboxConfig(backend="bwrap", timeout=5.0), **config))
    assert env.state_hash() == before  # the audit leaves the environment as it found it
    return a


# -- the mutants -----------------------------------------------------------------------------------------------


def test_a_verifier_that_ignores_the_reason_the_instruction_names_is_lax(envs, sandbox):
    a = audit(LAX_CANCEL, envs, sandbox)
    assert a["lax"] is True
    # the accepted mutant names its change: the other reason that tau2 accepts
    assert a["accepted"] == ['changed write 1: cancel_pending_order(reason="no longer needed" -> "ordered by mistake")']
    # cancelling the user's cancelled order and cancelling twice: the tools refuse them, so they are no mutants
    assert a["refused"] == 2 and a["mutants"] == a["tried"] - a["refused"] - a["errors"] == 3


def test_a_tight_verifier_is_not_flagged(envs, sandbox):
    a = audit(TIGHT_CANCEL, envs, sandbox)
    assert (a["lax"], a["accepted"], a["mutants"]) == (False, [], 3)


def test_an_evaluate_that_raises_on_a_mutants_state_rejects_it(envs, sandbox):
    # on the state a mutant leaves (the order still pending: no cancel reason), this evaluate() raises
    raising = dict(TIGHT_CANCEL, id="raising", evaluation_function=(
        f'def evaluate():\n    o = get_order_details(order_id="{ORDER}")\n'
        '    return o["cancel_reason"].startswith("no longer")\n'))
    a = audit(raising, envs, sandbox)
    assert (a["lax"], a["accepted"], a["mutants"]) == (False, [], 3)


def test_a_mutant_that_leaves_the_solutions_state_is_no_counterexample(envs, sandbox):
    a = audit(ADDRESS, envs, sandbox)
    assert a["lax"] is False and a["unchanged"] == 1 and a["mutants"] == 2  # repeated (unchanged), dropped


def test_a_calculation_verifier_that_checks_only_the_type_of_the_answer_is_lax(envs, sandbox):
    lax, tight = audit(CALC_LAX, envs, sandbox), audit(CALC_TIGHT, envs, sandbox)
    assert lax["lax"] is True and lax["accepted"] == ["answer changed: 84 -> 85", "answer changed: 84 -> 83"]
    assert (tight["lax"], tight["mutants"]) == (False, 2)


def test_tasks_that_cannot_be_audited_are_skipped_with_the_reason(envs, sandbox):
    eval_only = {"id": "eo", "env": "retail", "format": "eval-only", "instruction": "x",
                 "evaluation_function": "def evaluate():\n    return True\n"}
    a = audit(eval_only, envs, sandbox)
    assert a["lax"] is None and a["mutants"] == 0 and a["skipped"] == "no solution to mutate (format eval-only)"
    a = audit({"id": "io", "env": "retail", "format": "instruction-only", "instruction": "x"}, envs, sandbox)
    assert a["lax"] is None and "no evaluation function" in a["skipped"]
    failing = dict(TIGHT_CANCEL, solution=CANCEL.replace("no longer needed", "ordered by mistake"))
    assert audit(failing, envs, sandbox)["skipped"] == "evaluate() does not pass the solution"
    broken = dict(TIGHT_CANCEL, solution="cancel_pending_order(order_id='#W4111294', reason='no longer needed')\n")
    assert audit(broken, envs, sandbox)["skipped"].startswith("the solution failed: ToolError")


def test_the_mutants_are_bounded_deterministic_and_taken_kind_by_kind():
    env = StoreEnv()
    writes = [("set_value", {"key": "a", "value": 1}), ("increment", {"key": "apples", "by": 2}),
              ("set_value", {"key": "a", "value": 1}), ("delete_key", {"key": "note"})]
    config = AuditConfig(max_mutants=7)
    first = candidates(env, writes, "x", True, config)
    assert [m.words for m in first] == [m.words for m in candidates(env, writes, "x", True, config)]
    # one of each kind per round (argument, answer, dropped, swapped, repeated), until the bound
    assert [m.kind for m in first] == ["argument", "answer", "dropped", "swapped", "repeated", "argument", "dropped"]
    assert first[0].words == "changed write 2: increment(by=2 -> 3)"
    assert first[1].words == 'answer changed: "x" -> ""'  # a text without a reversal of its own: emptied
    everything = candidates(env, writes, "x", True, AuditConfig(max_mutants=1000))
    swaps = [m.words for m in everything if m.kind == "swapped"]
    assert len(swaps) == 5 and not any(w.startswith("swapped writes 1 and 3") for w in swaps)  # the same call twice
    assert everything[2].calls == tuple(writes[1:])  # write 1 dropped
    assert first[0].program == ("set_value(**{'key': 'a', 'value': 1})\nincrement(**{'key': 'apples', 'by': 3})\n"
                                "set_value(**{'key': 'a', 'value': 1})\ndelete_key(**{'key': 'note'})\nanswer = 'x'\n")
    assert not [m for m in candidates(env, writes, "x", False, config) if m.kind == "answer"]  # evaluate() takes none


def test_where_the_state_is_only_a_position_only_the_answer_is_mutated():
    from envs import make_env

    env = make_env("web_browsing")
    assert env.outcome_state is False
    mutants = candidates(env, [("click_url", {"url": "/shop"}), ("scroll_down", {})], 12, True, AuditConfig())
    assert [m.kind for m in mutants] == ["answer", "answer"]


def test_the_environments_offer_alternatives_that_their_tools_accept():
    from envs import make_env

    retail = make_env("retail")
    alts = retail.argument_alternatives("cancel_pending_order", {"order_id": ORDER, "reason": "no longer needed"})
    assert alts == {"order_id": ["#W4111294", "#W4514908"], "reason": ["ordered by mistake"]}
    airline = make_env("airline")
    alts = airline.argument_alternatives("update_reservation_flights", {
        "reservation_id": "NO6JO3", "cabin": "economy", "flights": [], "payment_id": "credit_card_4421486"})
    assert alts["cabin"] == ["business", "basic_economy"]  # the schema's enum
    assert alts["reservation_id"] == ["AIXC49", "HKEG34"]  # mia_li_3668's other reservations
    assert "credit_card_4421486" not in alts["payment_id"] and "credit_card_1955700" in alts["payment_id"]


def test_lax_rates_per_format_with_an_interval():
    records = [{"audit": {"lax": True, "mutants": 3}}, {"audit": {"lax": False, "mutants": 2}},
               {"format": "cat", "audit": {"lax": False, "mutants": 1}},
               {"format": "eval-only", "audit": {"lax": None, "mutants": 0, "skipped": "no solution"}}, {"id": "x"}]
    rates = lax_rates(records, n_boot=200, seed=1)
    cat = rates["by_format"]["cat"]
    assert (cat["tasks"], cat["audited"], cat["lax"], cat["mutants"]) == (3, 3, 1, 6)
    est, lo, hi = cat["lax_rate"]
    assert est == pytest.approx(1 / 3) and 0 <= lo < est < hi <= 1  # three tasks: a wide interval
    assert rates["by_format"]["eval-only"] == {"tasks": 1, "audited": 0, "skipped": 1, "lax": 0, "mutants": 0,
                                               "lax_rate": None}
    assert rates["all"]["tasks"] == 4


# -- the stage and the command ------------------------------------------------------------------------------------


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_sca_audit_writes_each_task_with_its_audit_and_resumes(tmp_path, sandbox):
    tasks = _jsonl(tmp_path / "tasks.jsonl", [LAX_CANCEL, TIGHT_CANCEL])
    out = str(tmp_path / "out.jsonl")
    args = ["audit", tasks, "-o", out, "--sandbox", "bwrap", "--workers", "1", "--n-boot", "100"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in Path(out).read_text().splitlines()]
    assert [(x["id"], x["audit"]["lax"]) for x in records] == [("lax-cancel", True), ("tight-cancel", False)]
    meta = json.loads(Path(out + ".meta.json").read_text())
    assert meta["counts"]["lax_rates"]["by_format"]["cat"]["lax_rate"][0] == 0.5
    # a third task: the two done are resumed, and the rates cover the whole output
    _jsonl(tmp_path / "tasks.jsonl", [LAX_CANCEL, TIGHT_CANCEL, CALC_LAX])
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert len(Path(out).read_text().splitlines()) == 3
    counts = json.loads(Path(out + ".meta.json").read_text())["counts"]
    assert counts["resumed"] == 2 and counts["audited"] == 1
    assert counts["lax_rates"]["all"]["audited"] == 3 and counts["lax_rates"]["all"]["lax"] == 2


def test_the_command_refuses_mixed_modes_in_one_line(tmp_path):
    for args in (["audit", "--sheet", "4", "--labels", "s.csv", "-o", "x"], ["audit", "-o", "x"],
                 ["audit", "t.jsonl", "--labels", "s.csv", "-o", "x"], ["audit", "t.jsonl", "--tasks", "t", "-o", "x"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and r.output.startswith("error:"), args


# -- the sheet and the labels ------------------------------------------------------------------------------------


def trajectory(task_id, trial, reward, fmt=None, text="I did it."):
    t = {"id": f"{task_id}#{trial}", "task_id": task_id, "trial": trial, "env": "retail",
         "instruction": f"do {task_id}", "reward": reward,
         "messages": [{"role": "system", "content": "SYSTEM PROMPT"}, {"role": "user", "content": f"do {task_id}"},
                      {"role": "assistant", "content": None,
                       "tool_calls": [{"function": {"name": "get_order_details", "arguments": '{"order_id": "#W1"}'}}]},
                      {"role": "tool", "content": '{"status": "pending"}'}, {"role": "assistant", "content": text}]}
    if fmt:
        t["format"] = fmt
    return t


TRAJECTORIES = ([trajectory(f"t{i}", 0, 1) for i in range(10)] + [trajectory(f"t{i}", 1, 0) for i in range(3)]
                + [trajectory(f"t{i}", 2, None) for i in range(2)])


def test_the_sheet_is_stratified_by_reward_and_deterministic():
    rows = sheet_rows(TRAJECTORIES, 6, seed=3)
    assert sorted(r["reward"] for r in rows) == [0, 0, 0, 1, 1, 1]
    assert rows == sheet_rows(TRAJECTORIES, 6, seed=3)
    assert [r["id"] for r in rows] != [r["id"] for r in sheet_rows(TRAJECTORIES, 6, seed=4)]
    # only 3 unrewarded: the rest from the rewarded; infrastructure failures never
    assert sorted(r["reward"] for r in sheet_rows(TRAJECTORIES, 8)) == [0, 0, 0, 1, 1, 1, 1, 1]
    assert len(sheet_rows(TRAJECTORIES, 100)) == 13
    row = rows[0]
    assert row["label"] == "" and row["format"] == "cat" and row["evaluate"] == ""
    assert "SYSTEM PROMPT" not in row["episode"] and '-> get_order_details({"order_id": "#W1"})' in row["episode"]
    assert row["episode"].startswith("[USER] do ") and row["episode"].endswith("[AGENT] I did it.")
    # evaluate from the tasks; the format from the trajectory
    tasks = {r["task_id"]: {"id": r["task_id"], "evaluation_function": "def evaluate(): return True"} for r in rows}
    with_tasks = sheet_rows([dict(t, format="eval-only") for t in TRAJECTORIES], 6, tasks, seed=3)
    assert {r["evaluate"] for r in with_tasks} == {"def evaluate(): return True"}
    assert {r["format"] for r in with_tasks} == {"eval-only"}


def test_a_long_episode_is_cut_in_the_middle_to_its_bound():
    long = trajectory("t", 0, 1, text="word " * 5000)
    (row,) = sheet_rows([long], 1, episode_chars=1000)
    assert len(row["episode"]) <= 1000 and "characters cut" in row["episode"] and row["episode"].startswith("[USER]")


def _labelled(rows):
    """rows: (format, reward, label); a sheet's CSV with multi-line episodes."""
    return sheet_csv([{"id": f"r{i}", "task_id": f"t{i}", "format": f, "env": "retail", "reward": r,
                       "instruction": "x", "evaluate": "def evaluate():\n    return True\n",
                       "episode": "[USER] a,\n\n[AGENT] \"b\"", "label": lab} for i, (f, r, lab) in enumerate(rows)])


# cat: TP 3, FP 1, TN 2, FN 2; eval-only: TP 1, FP 2, TN 0, FN 0; instruction-only: TP 1; one row not labelled yet
HAND = ([("cat", 1, 1)] * 3 + [("cat", 1, 0)] + [("cat", 0, 0)] * 2 + [("cat", 0, 1)] * 2
        + [("eval-only", 1, 1)] + [("eval-only", 1, 0)] * 2 + [("cat", 1, "")] + [("instruction-only", 1, 1)])


def test_labels_give_figure_4s_counts_and_rates():
    rows, unlabelled = read_labels(_labelled(HAND))
    assert unlabelled == 1
    rates = label_rates(rows, n_boot=300, seed=0)
    cat, eo = rates["by_format"]["cat"], rates["by_format"]["eval-only"]
    assert {k: cat[k] for k in ("n", "tp", "fp", "tn", "fn")} == {"n": 8, "tp": 3, "fp": 1, "tn": 2, "fn": 2}
    for name, value in (("false_positive_rate", 1 / 3), ("false_negative_rate", 2 / 5), ("precision", 3 / 4),
                        ("recall", 3 / 5)):
        est, lo, hi = cat[name]
        assert est == pytest.approx(value) and 0 <= lo <= est <= hi <= 1, name
    assert {k: eo[k] for k in ("tp", "fp", "tn", "fn")} == {"tp": 1, "fp": 2, "tn": 0, "fn": 0}
    assert eo["false_positive_rate"][0] == 1.0 and eo["false_negative_rate"][0] == 0.0
    assert eo["precision"][0] == pytest.approx(1 / 3)
    io_ = rates["by_format"]["instruction-only"]
    assert io_["false_positive_rate"] is None and io_["recall"] == [1.0, 1.0, 1.0]  # no negative: FP rate undefined
    assert rates["all"]["n"] == 12 and rates["all"]["tp"] == 5


def test_sca_audit_sheet_then_labels_end_to_end(tmp_path):
    trajectories = _jsonl(tmp_path / "traj.jsonl", TRAJECTORIES)
    tasks = _jsonl(tmp_path / "tasks.jsonl", [
        {"id": f"t{i}", "env": "retail", "format": "eval-only", "instruction": "x",
         "evaluation_function": f"def evaluate():\n    return {i}\n"} for i in range(10)])
    sheet = tmp_path / "sheet.csv"
    r = runner.invoke(app, ["audit", "--sheet", "4", trajectories, "--tasks", tasks, "-o", str(sheet), "--seed", "2"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(sheet.read_text())))
    assert list(rows[0]) == ["id", "task_id", "format", "env", "reward", "instruction", "evaluate", "episode", "label"]
    assert sorted(x["reward"] for x in rows) == ["0", "0", "1", "1"]
    assert all(x["evaluate"] == f"def evaluate():\n    return {x['task_id'][1:]}\n" for x in rows)
    for x in rows:
        x["label"] = x["reward"]  # a verifier that is always right
    with open(sheet, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "rates.json"
    r = runner.invoke(app, ["audit", "--labels", str(sheet), "-o", str(out), "--n-boot", "100"])
    assert r.exit_code == 0, r.output
    rates = json.loads(out.read_text())
    assert list(rates["by_format"]) == ["eval-only"]  # the tasks' format: the trajectories name none
    assert rates["by_format"]["eval-only"]["false_positive_rate"] == [0.0, 0.0, 0.0]
    assert (rates["n_boot"], rates["seed"], rates["labelled"]) == (100, 0, 4)


@pytest.mark.parametrize("bad, message", [
    ("yes", ("sheet.csv:{line}: label: expected 1 (the task was done), 0 (it was not) or empty (not labelled yet), "
             "got 'yes'")),
    ("2", "sheet.csv:{line}: label: expected 1"),
])
def test_a_bad_label_is_a_one_line_error_naming_its_csv_line(tmp_path, monkeypatch, bad, message):
    text = _labelled(HAND[:4] + [("cat", 1, bad)] + HAND[4:])
    # the row starts on the line after the header and four rows of five lines each (evaluate and episode span
    # three each, one of them shared)
    line = 1 + 4 * 5 + 1
    assert text.splitlines()[line - 1].startswith("r4,")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sheet.csv").write_text(text)
    r = runner.invoke(app, ["audit", "--labels", "sheet.csv", "-o", "rates.json"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith("error: " + message.format(line=line)), r.output
    with pytest.raises(InputError, match=f"sheet.csv:{line}: label"):
        read_labels(text, "sheet.csv")


def test_a_bad_reward_or_a_missing_column_is_a_one_line_error(tmp_path):
    text = _labelled(HAND[:2]).replace("\nr1,t1,cat,retail,1,", "\nr1,t1,cat,retail,0.5,")
    with pytest.raises(InputError, match=r"^<sheet>:7: reward: expected 0 or 1, got '0.5'$"):
        read_labels(text)
    with pytest.raises(InputError, match="^<sheet>:1: missing column"):
        read_labels("id,reward\nr0,1\n")
    (tmp_path / "empty.csv").write_text(_labelled([("cat", 1, "")]))
    r = runner.invoke(app, ["audit", "--labels", str(tmp_path / "empty.csv"), "-o", str(tmp_path / "r.json")])
    assert r.exit_code == 2 and "no labelled row" in r.output and len(r.output.strip().splitlines()) == 1
    assert list(csv.reader(io.StringIO(_labelled(HAND[:1]))))[1][-1] == "1"


# -- sca validate --audit ------------------------------------------------------------------------------------------


def test_sca_validate_audit_rejects_a_lax_verifier_only_when_asked(tmp_path):
    from sca.audit.mutants import LAX_REASON
    from sca.cat import CHECK_OF_REASON, CHECKS, REASONS

    assert LAX_REASON in REASONS and CHECK_OF_REASON[LAX_REASON] in CHECKS  # the report's funnel can place it
    tasks = _jsonl(tmp_path / "tasks.jsonl", [dict(t, failure_cases=["pass\n"] * 3) for t in (LAX_CANCEL, TIGHT_CANCEL)])
    base = ["validate", tasks, "--sandbox", "bwrap", "--workers", "1"]
    r = runner.invoke(app, base + ["-o", str(tmp_path / "plain.jsonl")])
    assert r.exit_code == 0, r.output
    assert len(Path(tmp_path / "plain.jsonl").read_text().splitlines()) == 2  # off by default: both pass the CaT checks
    r = runner.invoke(app, base + ["--audit", "-o", str(tmp_path / "ok.jsonl"), "--rejected", str(tmp_path / "no.jsonl")])
    assert r.exit_code == 0, r.output
    (accepted,) = [json.loads(line) for line in Path(tmp_path / "ok.jsonl").read_text().splitlines()]
    (rejected,) = [json.loads(line) for line in Path(tmp_path / "no.jsonl").read_text().splitlines()]
    assert accepted["id"] == "tight-cancel" and accepted["audit"]["lax"] is False
    v = rejected["validation"]
    assert (rejected["id"], v["valid"], v["reason"], v["failed_check"]) == ("lax-cancel", False, LAX_REASON,
                                                                           "failure_case_runs")
    assert 'reason="no longer needed" -> "ordered by mistake"' in v["detail"] and v["checks"][-1]["ok"] is False
    assert LAX_REASON in r.output
    # a resume with the other --audit setting would mix audited and unaudited verdicts: refused, both ways
    for out, flags in (("plain.jsonl", ["--audit"]), ("ok.jsonl", [])):
        r = runner.invoke(app, base + flags + ["-o", str(tmp_path / out)])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
        assert f"made with audit={str(out == 'ok.jsonl').lower()}; this run: audit={str(bool(flags)).lower()}" in r.output
    r = runner.invoke(app, base + ["--audit", "-o", str(tmp_path / "ok.jsonl"), "--rejected", str(tmp_path / "no.jsonl")])
    assert r.exit_code == 0 and "already done" in r.output, r.output
