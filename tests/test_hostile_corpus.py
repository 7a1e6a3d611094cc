"""The hostile corpus (tests/hostile/*.toml) through the real `sca validate`, on bwrap and docker.

One sandbox worker, so every attack runs in the worker that then runs the honest control: the
control must stay valid after every attack, every attack must get its verdict, and the stage
must end with exit 0. Then a `sca validate` killed in the middle of a file of attacks is rerun
and completes. See tests/hostile/README.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _sandbox_util import backend_or_skip
from typer.testing import CliRunner

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser from PyPI (a dependency there)
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

from sca_cli.app import app

CORPUS = Path(__file__).parent / "hostile"
ORDER = "#W2631563"  # a pending retail order
DEFAULTS = {
    "instruction": "Cancel my order {ORDER}, I no longer need it.",
    "evaluation_function": ('def evaluate():\n    o = get_order_details(order_id="{ORDER}")\n'
                            '    return o["status"] == "cancelled" and o["cancel_reason"] == "no longer needed"\n'),
    "failure_cases": ["pass\n", "get_order_details(order_id=\"{ORDER}\")\n",
                      "cancel_pending_order(order_id=\"{ORDER}\", reason=\"ordered by mistake\")\n"],
}
pytestmark = pytest.mark.skipif(tomllib is None, reason="the corpus is TOML: needs tomllib (3.11) or tomli")


def fill(text: str) -> str:
    return text.replace("{ORDER}", ORDER).replace("{CPUS}", str(len(os.sched_getaffinity(0))))


def load(name: str) -> dict:
    """One corpus entry as a CaT record (with the expected verdict under meta)."""
    data = tomllib.loads((CORPUS / f"{name}.toml").read_text())
    task = {
        "id": name, "env": "retail",
        "instruction": fill(data.get("instruction", DEFAULTS["instruction"])),
        "evaluation_function": fill(data.get("evaluation_function", DEFAULTS["evaluation_function"])),
        "solution": fill(data.get("solution", "pass\n")),
        "failure_cases": [fill(x) for x in data.get("failure_cases", DEFAULTS["failure_cases"])],
        "meta": {"attack": data["attack"], "valid": data["valid"], "reasons": data.get("reasons", [])},
    }
    assert isinstance(task["meta"]["valid"], bool), name
    assert task["meta"]["valid"] or task["meta"]["reasons"], f"{name}: a rejected attack names its reasons"
    return task


def attacks() -> list[str]:
    return sorted(p.stem for p in CORPUS.glob("*.toml") if not p.stem.startswith("_"))


def corpus_records() -> list[dict]:
    """Each attack followed by the control."""
    control = load("_control")
    out = []
    for name in attacks():
        out.append(load(name))
        out.append({**control, "id": f"control-after-{name}"})
    return out


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def test_the_corpus_is_well_formed():
    names = attacks()
    assert len(names) >= 20, names
    control = load("_control")
    assert control["meta"]["valid"] is True
    for name in names:
        task = load(name)
        compile(task["solution"], name, "exec")
        compile(task["evaluation_function"], name, "exec")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["bwrap", pytest.param("docker", marks=pytest.mark.docker)])
def test_every_attack_gets_its_verdict_and_the_control_after_it_stays_valid(backend, tmp_path):
    backend_or_skip(backend)
    records = corpus_records()
    write_jsonl(tmp_path / "corpus.jsonl", records)
    result = CliRunner().invoke(app, [
        "validate", str(tmp_path / "corpus.jsonl"), "-o", str(tmp_path / "ok.jsonl"),
        "--rejected", str(tmp_path / "rejected.jsonl"), "--sandbox", backend, "--workers", "1", "--timeout", "5"])
    assert result.exit_code == 0, result.output
    out = {r["id"]: r for r in read_jsonl(tmp_path / "ok.jsonl") + read_jsonl(tmp_path / "rejected.jsonl")}
    assert set(out) == {r["id"] for r in records}
    wrong = []
    for r in records:
        v, expect = out[r["id"]]["validation"], r["meta"]
        if v["valid"] != expect["valid"] or (not v["valid"] and v["reason"] not in expect["reasons"]):
            wrong.append(f"{r['id']}: got valid={v['valid']} reason={v['reason']} ({v.get('detail')}); "
                         f"expected valid={expect['valid']} {expect['reasons']}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
def test_a_killed_validate_over_attacks_reruns_to_completion(tmp_path):
    backend_or_skip("bwrap")
    control = load("_control")
    order = ["nested_tool_arguments", "raw_frame_nesting_bomb", "endless_loop", "nested_answer",
             "fake_bool_verdict", "huge_tool_calls"]
    records = []
    for name in order:
        records += [load(name), {**control, "id": f"control-after-{name}"}]
    src, ok, rej = tmp_path / "in.jsonl", tmp_path / "ok.jsonl", tmp_path / "rej.jsonl"
    write_jsonl(src, records)
    cmd = [sys.executable, "-m", "sca_cli.app", "validate", str(src), "-o", str(ok), "--rejected", str(rej),
           "--sandbox", "bwrap", "--workers", "1", "--timeout", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(read_jsonl(ok) + read_jsonl(rej)) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()  # still working: killed in the middle
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(read_jsonl(ok) + read_jsonl(rej))
    assert 4 <= done_before < len(records)
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    out = read_jsonl(ok) + read_jsonl(rej)
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in records)  # each once, none lost
    verdicts = {r["id"]: r["validation"] for r in out}
    for r in records:
        assert verdicts[r["id"]]["valid"] == r["meta"]["valid"], (r["id"], verdicts[r["id"]])
