"""Task formats (docs/CAT.md, "Task formats"): cat, eval-only ("SCA no filtering") and instruction-only (PAE).

Each format end to end with a scripted challenger (propose, then validate), the checks each format gets,
Figure 4's verification only, the schema's per-format fields, and a resume onto files of another format.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _sandbox_util import backend_or_skip, open_sandbox
from _scripted import ScriptedModel
from cat_sets import CANCELLED, ORDER, RETAIL_TASKS, write_jsonl
from typer.testing import CliRunner

from sandbox.config import SandboxConfig
from sca.cat import CHECKS, CHECKS_OF_FORMAT, VERIFICATION_ONLY, ValidateConfig, validate_task
from sca.records import CAT_TASK, VALIDATED_TASK, InputError, RecordError, load_records
from sca_cli.app import app
from stages.propose import ProposeConfig, propose_file
from stages.validate import validate_file

EXPLORE = """THOUGHT: Look at the user's orders first. END THOUGHT
ACTION:
u = get_user_details(user_id="fatima_anderson_2157")
print(u["orders"])
"""

INSTRUCTION = f"Cancel my skateboard order {ORDER} because I no longer need it."
EVALUATE = CANCELLED

CAT_ANSWER = f"""THOUGHT: A cancellation. END THOUGHT
ANSWER:
<instruction>{INSTRUCTION}</instruction>
<evaluation_function>
{EVALUATE}</evaluation_function>
<solution>
cancel_pending_order(order_id="{ORDER}", reason="no longer needed")
</solution>
<failure_case>pass</failure_case>
<failure_case>get_user_details(user_id="fatima_anderson_2157")</failure_case>
<failure_case>cancel_pending_order(order_id="{ORDER}", reason="ordered by mistake")</failure_case>
"""

EVAL_ONLY_ANSWER = f"""THOUGHT: A cancellation. END THOUGHT
ANSWER:
<instruction>{INSTRUCTION}</instruction>
<evaluation_function>
{EVALUATE}</evaluation_function>
"""

# evaluate() is True on the untouched state: cat rejects it (noop_passes), eval-only does not filter it
TRIVIAL_EVAL_ONLY = EVAL_ONLY_ANSWER.replace(EVALUATE, "def evaluate():\n    return True\n")
BROKEN_EVAL_ONLY = EVAL_ONLY_ANSWER.replace(EVALUATE, "def evaluate(:\n    return True\n")

# a PAE challenger that also writes an evaluation function: the record must not keep it
INSTRUCTION_ONLY_ANSWER = f"""THOUGHT: A cancellation. END THOUGHT
ANSWER:
<instruction>{INSTRUCTION}</instruction>
<evaluation_function>
{EVALUATE}</evaluation_function>
"""
EMPTY_INSTRUCTION = "THOUGHT: hm END THOUGHT\nANSWER:\n<instruction>   </instruction>\n"

PARTS = {"cat": {"instruction", "evaluation_function", "solution", "failure_cases"},
         "eval-only": {"instruction", "evaluation_function"}, "instruction-only": {"instruction"}}


def config(**over):
    v = ValidateConfig(SandboxConfig(backend="bwrap", workers=2, timeout=5.0))
    base = dict(env="retail", n=1, max_steps=4, concurrency=1, validate=v)
    base.update(over)
    return ProposeConfig(**base)


def read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def scripted(replies, seen=None):
    def script(turn, conv):
        if seen is not None:
            seen.append([dict(m) for m in conv])
        return replies[min(turn, len(replies) - 1)]
    return ScriptedModel(script)


# -- each format end to end: propose, then validate -----------------------------------------------------

@pytest.mark.parametrize("fmt,answer", [("cat", CAT_ANSWER), ("eval-only", EVAL_ONLY_ANSWER),
                                        ("instruction-only", INSTRUCTION_ONLY_ANSWER)])
def test_each_format_end_to_end(tmp_path, fmt, answer):
    backend_or_skip("bwrap")
    seen = []
    out, rej = tmp_path / "t.jsonl", tmp_path / "r.jsonl"
    s = propose_file(config(task_format=fmt), str(out), rejected=str(rej), model=scripted([EXPLORE, answer], seen),
                     show_progress=False)
    assert (s.valid, s.episodes, s.task_format) == (1, 1, fmt)
    [rec] = read(out)
    # the record names its format and has exactly its parts
    assert rec["format"] == fmt
    assert set(rec) == {"id", "env", "format", "validation", "run", "meta"} | PARTS[fmt]
    assert ORDER not in rec["instruction"]  # finalised as in cat
    assert rec["validation"]["format"] == fmt and rec["validation"]["check_set"] == list(CHECKS_OF_FORMAT[fmt])
    assert [c["check"] for c in rec["validation"]["checks"]] == list(CHECKS_OF_FORMAT[fmt])
    CAT_TASK.check(rec)
    VALIDATED_TASK.check(rec)
    # the challenger was told to write this format's parts, no more
    system = seen[0][0]["content"]
    assert ("<solution>" in system) == (fmt == "cat") and ("<failure_case>" in system) == (fmt == "cat")
    assert ("<evaluation_function>" in system) == (fmt != "instruction-only")
    assert "<instruction>" in system and "END ACTION" in system
    # sca validate keeps the format and applies the same checks
    v = validate_file(str(out), str(tmp_path / "v.jsonl"), config=config().validate, show_progress=False)
    assert v.accepted == 1 and v.by_format == {fmt: {"accepted": 1, "rejected": 0}}
    [again] = read(tmp_path / "v.jsonl")
    assert again["format"] == fmt and again["validation"]["check_set"] == list(CHECKS_OF_FORMAT[fmt])


def test_eval_only_filters_nothing_but_compile(tmp_path):
    backend_or_skip("bwrap")
    seen = []
    out, rej = tmp_path / "t.jsonl", tmp_path / "r.jsonl"
    s = propose_file(config(task_format="eval-only"), str(out), rejected=str(rej),
                     model=scripted([BROKEN_EVAL_ONLY, TRIVIAL_EVAL_ONLY], seen), show_progress=False)
    assert s.valid == 1 and s.episodes == 1
    fb = seen[1][-1]["content"]  # the compile error went back to the challenger
    assert fb.startswith("VALIDATION: The task is invalid: a code string does not compile") and "SyntaxError" in fb
    [rec] = read(out)
    assert rec["evaluation_function"] == "def evaluate():\n    return True\n"  # trivial, and kept: no filtering
    assert rec["validation"]["runs"] == []  # nothing ran in the sandbox
    # the same evaluate() in a cat task is rejected as trivial
    cat_task = {**next(t for t in RETAIL_TASKS if t["id"] == "ret-valid-cancel"),
                "evaluation_function": rec["evaluation_function"]}
    v = validate_file(str(write_jsonl(tmp_path / "c.jsonl", [cat_task])), str(tmp_path / "c.ok.jsonl"),
                      rejected=str(tmp_path / "c.rej.jsonl"), config=config().validate, show_progress=False)
    assert v.rejected == 1 and v.reasons == {"noop_passes": 1}


def test_instruction_only_rejects_an_empty_instruction_and_failed_episodes_keep_their_format(tmp_path):
    backend_or_skip("bwrap")
    seen = []
    out, rej = tmp_path / "t.jsonl", tmp_path / "r.jsonl"
    s = propose_file(config(task_format="instruction-only", max_steps=2, max_episodes=1), str(out), rejected=str(rej),
                     model=scripted([EMPTY_INSTRUCTION], seen), show_progress=False)
    assert s.valid == 0 and s.reasons == {"invalid_answer:empty_instruction": 1}
    assert seen[1][-1]["content"].startswith("VALIDATION: The task is invalid: the instruction is empty.")
    [failed] = read(rej)
    assert failed["format"] == "instruction-only"
    # its own kind (docs/CAT.md, "Failed episodes"): no task fields, its answer as given under last_answer
    assert set(failed) == {"kind", "id", "env", "format", "reason", "steps", "last_answer", "validation", "run", "meta"}
    assert (failed["kind"], failed["reason"], failed["last_answer"]) == ("failed_episode", "invalid_answer",
                                                                        {"instruction": ""})
    assert failed["validation"]["failed_check"] == "instruction"
    from sca.records.schema import FAILED_EPISODE

    FAILED_EPISODE.check(failed)


def test_parse_answer_per_format():
    from sca.agent.challenger import parse_turn

    t = parse_turn(EVAL_ONLY_ANSWER, "eval-only")
    assert t.kind == "answer" and set(t.task) == PARTS["eval-only"]
    assert t.task["evaluation_function"].startswith("def evaluate():")
    assert parse_turn(EVAL_ONLY_ANSWER, "cat").kind == "invalid"  # cat needs a solution
    t = parse_turn(EXPLORE.replace("ACTION", "X") + "ANSWER:\n<instruction>x</instruction>", "eval-only")
    assert t.kind == "invalid" and t.error == "the ANSWER lacks <evaluation_function>"
    t = parse_turn(CAT_ANSWER, "instruction-only")
    assert t.task == {"instruction": INSTRUCTION}
    assert parse_turn("ANSWER: no tags", "instruction-only").error == "the ANSWER lacks <instruction>"


def test_prompts_name_their_format():
    import random

    from envs import make_env
    from sca.agent.challenger import challenger_prompt

    env = make_env("retail")
    ctx = env.challenger_context(random.Random(0))
    cat, ev, ins = (challenger_prompt(env, ctx, f) for f in ("cat", "eval-only", "instruction-only"))
    assert cat == challenger_prompt(env, ctx)  # cat is the default
    assert "a solution and failure cases" in cat and "run your solution and your evaluation function" in cat
    assert "written as code: an instruction and an evaluation function." in ev and "failure case" not in ev
    assert "do the task yourself in an ACTION and run your evaluation function" in ev
    assert "written as an instruction." in ins and "evaluate" not in ins.split("# How to reply")[1]
    for p in (ev, ins):
        assert "Invent nothing" in p and ctx["user_id"] in p


# -- validate's checks per format ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def sandbox():
    with open_sandbox("bwrap", timeout=2.0) as sb:
        yield sb


@pytest.fixture(scope="module")
def retail():
    from envs import make_env

    return make_env("retail")


def eval_only(evaluate, **over):
    return {"id": "e", "env": "retail", "format": "eval-only", "instruction": INSTRUCTION,
            "evaluation_function": evaluate, **over}


def verdict(v):
    return "valid" if v["valid"] else (v["reason"], v["failed_check"])


def test_eval_only_checks_compile_and_evaluate_only(sandbox, retail):
    assert verdict(validate_task(eval_only("def evaluate():\n    return True\n"), retail, sandbox)) == "valid"
    assert verdict(validate_task(eval_only("def evaluate(:\n"), retail, sandbox)) == ("compile", "compile")
    v = validate_task(eval_only("def check():\n    return True\n"), retail, sandbox)
    assert verdict(v) == ("compile", "compile") and "does not define evaluate()" in v["detail"]
    v = validate_task(eval_only("def evaluate(a, b):\n    return True\n"), retail, sandbox)
    assert verdict(v) == ("compile", "compile")
    # a write inside evaluate() is not looked for: nothing runs
    v = validate_task(eval_only(f"def evaluate():\n    cancel_pending_order('{ORDER}', 'x')\n    return True\n"),
                      retail, sandbox)
    assert v["valid"] and v["runs"] == [] and v["check_set"] == ["compile"]


def test_instruction_only_checks_the_instruction_only(sandbox, retail):
    task = {"id": "i", "env": "retail", "format": "instruction-only", "instruction": INSTRUCTION}
    v = validate_task(task, retail, sandbox)
    assert v["valid"] and [c["check"] for c in v["checks"]] == ["instruction"] and v["runs"] == []
    v = validate_task({**task, "instruction": " \n "}, retail, sandbox)
    assert verdict(v) == ("empty_instruction", "instruction")


def test_verification_only_accepts_a_task_without_failure_cases_that_cat_rejects(sandbox, retail, tmp_path):
    base = next(t for t in RETAIL_TASKS if t["id"] == "ret-valid-cancel")
    none = {**base, "id": "none", "failure_cases": []}
    lax = {**base, "id": "lax", "evaluation_function": (  # checks the status, not the reason asked for
        f"def evaluate():\n    return get_order_details(order_id='{ORDER}')['status'] == 'cancelled'\n")}
    junk = {**base, "id": "junk", "failure_cases": ["def broken(:"]}  # failure cases are not even compiled
    full, vo = ValidateConfig(), ValidateConfig(verification_only=True)
    assert verdict(validate_task(none, retail, sandbox, full)) == ("failure_case_count", "failure_case_count")
    assert verdict(validate_task(lax, retail, sandbox, full)) == ("failure_case_passes", "failure_case_runs")
    assert verdict(validate_task(junk, retail, sandbox, full)) == ("compile", "compile")
    for task in (none, lax, junk):
        v = validate_task(task, retail, sandbox, vo)
        assert v["valid"] and v["check_set"] == list(VERIFICATION_ONLY)
        assert [c["check"] for c in v["checks"]] == list(VERIFICATION_ONLY)
        assert not any(r["run"].startswith("evaluate after failure case") for r in v["runs"])
    # what verification only still checks: the no-op and the solution
    trivial = {**none, "evaluation_function": "def evaluate():\n    return True\n"}
    assert verdict(validate_task(trivial, retail, sandbox, vo)) == ("noop_passes", "noop_run")
    wrong = {**none, "solution": f"cancel_pending_order(order_id='{ORDER}', reason='ordered by mistake')\n"}
    assert verdict(validate_task(wrong, retail, sandbox, vo)) == ("solution_fails", "solution_run")
    # only cat tasks have failure cases to leave out: the other formats keep their checks
    assert validate_task(eval_only("def evaluate():\n    return True\n"), retail, sandbox, vo)["check_set"] == [
        "compile"]


def test_cli_verification_only(tmp_path):
    backend_or_skip("bwrap")
    base = next(t for t in RETAIL_TASKS if t["id"] == "ret-valid-cancel")
    src = write_jsonl(tmp_path / "raw.jsonl", [{**base, "failure_cases": []}])
    args = ["validate", str(src), "--sandbox", "bwrap", "--workers", "1"]
    r = CliRunner().invoke(app, args + ["-o", str(tmp_path / "cat.jsonl"), "--rejected", str(tmp_path / "c.r.jsonl")])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "cat.jsonl").read_text() and len(read(tmp_path / "c.r.jsonl")) == 1
    r = CliRunner().invoke(app, args + ["-o", str(tmp_path / "vo.jsonl"), "--verification-only"])
    assert r.exit_code == 0, r.output
    [rec] = read(tmp_path / "vo.jsonl")
    assert rec["validation"]["check_set"] == list(VERIFICATION_ONLY)
    assert json.loads((tmp_path / "vo.jsonl.meta.json").read_text())["settings"]["verification_only"] is True
    assert "cat tasks" in r.output and "noop_run" in r.output  # the summary names the checks applied


# -- the schema: a record has its format's parts, no more ---------------------------------------------

def _load(tmp_path, record):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"id": "a", "env": "retail", **record}) + "\n")
    return load_records(path, CAT_TASK)


def _error(tmp_path, record):
    with pytest.raises(InputError) as e:
        _load(tmp_path, record)
    return str(e.value).split(":", 2)[2].strip()  # FILE:LINE: field: what


CAT_PARTS = {"instruction": "x", "evaluation_function": "def evaluate():\n    return False\n",
             "solution": "pass\n", "failure_cases": []}


def test_schema_per_format(tmp_path):
    assert _load(tmp_path, CAT_PARTS).records  # no format: cat, as files before the formats
    assert _load(tmp_path, {**CAT_PARTS, "format": "cat"}).records
    assert _load(tmp_path, {"format": "eval-only", "instruction": "x", "evaluation_function": "y"}).records
    assert _load(tmp_path, {"format": "instruction-only", "instruction": "x"}).records

    no_solution = {k: v for k, v in CAT_PARTS.items() if k != "solution"}
    assert _error(tmp_path, no_solution) == "solution: missing required field"
    assert _error(tmp_path, {**no_solution, "format": "cat"}) == "solution: missing required field"
    assert _error(tmp_path, {"format": "eval-only", "instruction": "x"}) == (
        "evaluation_function: missing required field")
    assert _error(tmp_path, {"format": "eval-only", "instruction": "x", "evaluation_function": "y",
                             "solution": "z"}).startswith("solution: a task of format eval-only has no solution")
    assert _error(tmp_path, {"format": "eval-only", "instruction": "x", "evaluation_function": "y",
                             "failure_cases": []}).startswith("failure_cases: a task of format eval-only has no")
    assert _error(tmp_path, {"format": "instruction-only", "instruction": "x", "evaluation_function": "y"}) \
        .startswith("evaluation_function: a task of format instruction-only has no evaluation_function")
    assert _error(tmp_path, {**CAT_PARTS, "format": "pae"}) == (
        'format: expected one of cat, eval-only, instruction-only, got "pae"')
    assert _error(tmp_path, {**CAT_PARTS, "format": 3}) == "format: expected string, got integer"
    assert _error(tmp_path, {"format": "instruction-only"}) == "instruction: missing required field"

    # a validated record's verdict must be of its own format
    rec = {"id": "a", "env": "retail", "format": "instruction-only", "instruction": "x",
           "validation": {"valid": True, "format": "instruction-only", "checks": []}}
    VALIDATED_TASK.check(rec)
    with pytest.raises(RecordError, match="validation.format: the validation is of a cat task"):
        VALIDATED_TASK.check({**rec, "validation": {**rec["validation"], "format": "cat"}})


def test_trajectory_format_is_optional_and_checked():
    from sca.records import TRAJECTORY

    traj = {"id": "t#0", "task_id": "t", "trial": 0, "env": "retail", "instruction": "x",
            "messages": [{"role": "system", "content": "s"}]}
    TRAJECTORY.check(traj)
    TRAJECTORY.check({**traj, "format": "instruction-only"})
    with pytest.raises(RecordError, match="format: expected one of"):
        TRAJECTORY.check({**traj, "format": "judge"})


# -- a resume onto files of another format is refused -------------------------------------------------

def test_propose_refuses_to_resume_onto_another_format(tmp_path):
    out = tmp_path / "t.jsonl"
    write_jsonl(out, [{"id": "retail-s0-e00000", "env": "retail", **CAT_PARTS}])  # a cat file (no format)
    # --n 1: were the flag lost (a cat run), the file's one task would end the run at once, with exit 0
    r = CliRunner().invoke(app, ["propose", "--task-format", "eval-only", "--n", "1", "--sandbox", "bwrap",
                                 "-o", str(out)])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        f"error: {out}: holds cat tasks, and this run writes eval-only tasks; resuming would mix them (write to "
        "another file, or pass --overwrite)"]
    assert not (tmp_path / "t.jsonl.meta.json").exists()  # refused before the run started
    # the rejected file counts too
    rej = tmp_path / "r.jsonl"
    write_jsonl(rej, [{"id": "x", "env": "retail", "format": "instruction-only", "instruction": ""}])
    with pytest.raises(InputError, match="r.jsonl: holds instruction-only tasks"):
        propose_file(config(task_format="eval-only"), str(tmp_path / "new.jsonl"), rejected=str(rej),
                     model=scripted(["x"]), show_progress=False)
    r = CliRunner().invoke(app, ["propose", "--task-format", "pae", "--n", "1", "-o", str(out)])
    assert r.exit_code == 2 and "task_format must be one of cat, eval-only, instruction-only" in r.output


def test_propose_resumes_its_own_format_and_overwrite_starts_afresh(tmp_path):
    backend_or_skip("bwrap")
    out = tmp_path / "t.jsonl"
    propose_file(config(task_format="eval-only"), str(out), model=scripted([EVAL_ONLY_ANSWER]), show_progress=False)
    s = propose_file(config(task_format="eval-only"), str(out), model=scripted([EVAL_ONLY_ANSWER]),
                     show_progress=False)
    assert s.resumed_valid == 1 and len(read(out)) == 1
    s = propose_file(config(task_format="instruction-only"), str(out), model=scripted([INSTRUCTION_ONLY_ANSWER]),
                     overwrite=True, show_progress=False)
    assert s.valid == 1 and [r["format"] for r in read(out)] == ["instruction-only"]


def test_validate_refuses_to_mix_formats_or_check_sets(tmp_path):
    backend_or_skip("bwrap")
    base = next(t for t in RETAIL_TASKS if t["id"] == "ret-valid-cancel")
    cats = write_jsonl(tmp_path / "cat.jsonl", [base])
    evals = write_jsonl(tmp_path / "ev.jsonl", [eval_only("def evaluate():\n    return True\n")])
    out = tmp_path / "ok.jsonl"
    args = ["--sandbox", "bwrap", "--workers", "1", "-o", str(out)]
    r = CliRunner().invoke(app, ["validate", str(cats)] + args)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["validate", str(evals)] + args)
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        f"error: {out}: holds cat tasks, which the input has not (eval-only); resuming would mix them (write to "
        "another file, or pass --overwrite)"]
    r = CliRunner().invoke(app, ["validate", str(cats), "--verification-only"] + args)
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        f"error: {out}: made with verification_only=false; this run: verification_only=true (--overwrite starts "
        "afresh, or write to another file)"]
    # without the sidecar (another tool's output, or an older sca's), the records' own check sets still tell
    Path(f"{out}.meta.json").unlink()
    r = CliRunner().invoke(app, ["validate", str(cats), "--verification-only"] + args)
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        f"error: {out}: its cat tasks were held to the checks {', '.join(CHECKS)}, this run's are "
        f"{', '.join(VERIFICATION_ONLY)}; resuming would mix them (write to another file, or pass --overwrite)"]
    # an output written before validation named its checks was held to the full set: resumable as before
    old = [{**rec, "validation": {k: v for k, v in rec["validation"].items() if k not in ("check_set", "format")}}
           for rec in read(out)]
    write_jsonl(out, old)
    r = CliRunner().invoke(app, ["validate", str(cats)] + args)
    assert r.exit_code == 0 and "already done" in r.output
    r = CliRunner().invoke(app, ["validate", str(evals), "--overwrite"] + args)
    assert r.exit_code == 0 and [x["format"] for x in read(out)] == ["eval-only"]
