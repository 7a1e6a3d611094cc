"""Progress that a log file can read (:mod:`sca.records.progress`): plain lines at every tenth and every
30 s where stderr is not a terminal, a bar where it is, propose's episodes, valid tasks and yield, and
the warning when the yield stays 0. Time is a fake clock the tests move; nothing here is timed."""

from __future__ import annotations

import importlib
import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _scripted import ScriptedModel
from cat_sets import RETAIL_TASKS, write_jsonl
from sca.records.progress import (PLAIN_EVERY_S, PLAIN_STEPS, choose_mode, format_duration, format_rate, progress,
                                  set_enabled)

ROOT = Path(__file__).resolve().parents[1]
# the module (sca.records.progress is also the name of its function, re-exported by sca.records)
progress_module = importlib.import_module("sca.records.progress")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Stream(io.StringIO):
    """A stderr double: a log file (or, with tty=True, a terminal) that counts its flushes."""

    def __init__(self, tty: bool = False) -> None:
        super().__init__()
        self.tty, self.flushed_at = tty, []

    def isatty(self) -> bool:
        return self.tty

    def flush(self) -> None:
        self.flushed_at.append(len(self.getvalue()))
        super().flush()

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()


@pytest.fixture(autouse=True)
def _progress_on():
    set_enabled(True)
    yield
    set_enabled(True)


def plain(total, unit="trials", description="rollout", **kw):
    stream, clock = Stream(), Clock()
    return stream, clock, progress(total, description, unit=unit, stream=stream, clock=clock, heartbeat=False, **kw)


# -- plain lines: when ---------------------------------------------------------------------------------

def test_a_line_at_every_tenth_and_none_between():
    stream, clock, shown = plain(20)
    with shown as advance:
        for i in range(20):
            clock.now += 1  # 20 s in all: under PLAIN_EVERY_S, so only the tenths write
            advance()
    done = [int(re.match(r"rollout: (\d+)/20 trials", line).group(1)) for line in stream.lines()]
    assert done == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert PLAIN_STEPS == 10


def test_a_jump_over_several_tenths_writes_one_line():
    stream, clock, shown = plain(100)
    with shown as advance:
        clock.now += 7
        advance(35)
        assert stream.lines() == ["rollout: 35/100 trials (35%) 5/s, eta 13s, elapsed 7s"]


def test_a_line_every_30_seconds_when_nothing_finishes():
    stream, clock, shown = plain(1000)
    with shown as p:
        clock.now += PLAIN_EVERY_S - 0.5
        p.tick()
        assert stream.lines() == []
        clock.now += 0.5
        p.tick()
        assert stream.lines() == ["rollout: 0/1000 trials (0%), eta ?, elapsed 30s"]
        clock.now += PLAIN_EVERY_S - 1
        p.tick()
        assert len(stream.lines()) == 1  # 30 s counted from the last line, not from the start
        clock.now += 1
        p.tick()
        assert stream.lines()[-1] == "rollout: 0/1000 trials (0%), eta ?, elapsed 1m00s"
    assert PLAIN_EVERY_S == 30


def test_an_item_finishing_after_30_seconds_writes_a_line_below_a_tenth():
    stream, clock, shown = plain(1000)
    with shown as advance:
        clock.now += 10
        advance()
        assert stream.lines() == []
        clock.now += PLAIN_EVERY_S - 10
        advance()
        assert stream.lines() == ["rollout: 2/1000 trials (0%) 4/min, eta 4h09m, elapsed 30s"]


def test_the_heartbeat_thread_writes_without_anyone_calling(monkeypatch):
    monkeypatch.setattr(progress_module, "_HEARTBEAT_POLL_S", 0.01)
    stream, clock = Stream(), Clock()
    with progress(1000, "propose retail", unit="episodes", stream=stream, clock=clock):
        clock.now += PLAIN_EVERY_S
        for _ in range(1000):  # waits for the thread (at most ~10 s), asserts nothing about how long
            if stream.lines():
                break
            time.sleep(0.01)
        assert stream.lines() == ["propose retail: 0/1000 episodes (0%), eta ?, elapsed 30s"]


def test_lines_are_flushed_each_one():
    stream, clock, shown = plain(10)
    with shown as advance:
        advance()
        assert stream.flushed_at == [len(stream.getvalue())]


def test_a_final_line_at_a_normal_end_only():
    stream, clock, shown = plain(1000)
    with shown as advance:
        clock.now += 1
        advance(3)
        assert stream.lines() == []
    assert stream.lines() == ["rollout: 3/1000 trials (0%) 3/s, eta 5m32s, elapsed 1s"]
    stream, clock, shown = plain(1000)
    with pytest.raises(RuntimeError):
        with shown as advance:
            advance(3)
            raise RuntimeError("boom")
    assert stream.getvalue() == ""  # an error's own message stays the last line printed
    stream, clock, shown = plain(10)
    with shown as advance:
        advance(10)
    assert len(stream.lines()) == 1  # the line at 100% already said it all


# -- plain lines: what -----------------------------------------------------------------------------------

def test_the_line_says_done_total_percent_rate_eta_and_elapsed():
    stream, clock, shown = plain(800)
    with shown as advance:
        clock.now += 60
        advance(120)
    assert stream.lines()[0] == "rollout: 120/800 trials (15%) 2/s, eta 5m40s, elapsed 1m00s"


def test_resumed_items_are_shown_but_not_counted_in_the_rate():
    stream, clock, shown = plain(100)
    with shown as p:
        p.resumed(trials=50)
        assert stream.lines() == []  # no line for what an earlier run did
        clock.now += 10
        p.advance(10)
    assert stream.lines()[0] == "rollout: 60/100 trials (60%) 1/s, eta 40s, elapsed 10s"


def test_durations_and_rates_read_at_a_glance():
    assert [format_duration(s) for s in (0, 45, 324, 3600 * 2 + 13 * 60 + 5)] == ["0s", "45s", "5m24s", "2h13m"]
    assert [format_rate(r) for r in (2.1, 25.0, 0.5, 1 / 751, 1 / 100_000)] == \
        ["2.1/s", "25/s", "30/min", "4.8/h", "0.036/h"]


def test_two_bounds_the_eta_of_the_nearer_and_extra_text():
    stream, clock, shown = plain(1000, unit="episodes", description="propose retail", bounds={"valid": 10},
                                 extra=lambda p: f"yield {p.done('valid') / p.done('episodes'):.1%}")
    with shown as p:
        clock.now += 100
        p.update(episodes=100, valid=5)  # episodes: 900 left at 1/s; valid: 5 left at 0.05/s -> 100 s
        assert stream.lines()[-1] == ("propose retail: 100/1000 episodes (10%) 1/s, 5/10 valid (50%), yield 5.0%, "
                                      "eta 1m40s, elapsed 1m40s")
        assert p.fraction() == 0.5  # the bar: the bound nearer its end
        clock.now += 100
        p.update(episodes=400, valid=6)  # episodes: 600 left at 2/s = 300 s; valid: 4 left at 0.03/s = 133 s
        assert p.eta() == pytest.approx(4 / (6 / 200))
        p.update(episodes=400, valid=7)  # a tenth of the second bound only: a line too
        assert stream.lines()[-1].startswith("propose retail: 400/1000 episodes (40%) 2/s, 7/10 valid (70%)")


# -- which mode -----------------------------------------------------------------------------------------

def test_a_bar_in_a_terminal_lines_elsewhere_nothing_when_off():
    assert choose_mode(None, Stream(tty=True)) == "bar"
    assert choose_mode(None, Stream(tty=False)) == "lines"
    assert choose_mode(False, Stream(tty=True)) == "off"
    set_enabled(False)  # sca -q
    assert choose_mode(None, Stream(tty=True)) == "off" and choose_mode(None, Stream()) == "off"
    assert choose_mode(True, Stream()) == "lines"  # a stage's own argument wins


def test_the_terminal_gets_a_bar_not_lines():
    stream, clock = Stream(tty=True), Clock()
    with progress(5, "validate", unit="tasks", stream=stream, clock=clock, heartbeat=False) as p:
        assert p.mode == "bar"
        clock.now += 10
        p.advance(1)
        [task] = p._bar.tasks
        assert task.fields["status"] == "1/5 tasks (20%) 6/min, eta 40s" and task.completed == 0.2
        clock.now += 50
        p.tick()  # nothing finished: the rate and ETA still follow the clock
        assert task.fields["status"] == "1/5 tasks (20%) 1/min, eta 4m00s"
        p.advance(4)
    out = stream.getvalue()
    assert "━" in out and "5/5 tasks (100%)" in out
    assert "validate: " not in out  # no plain line


def test_off_writes_nothing_but_warnings():
    set_enabled(False)
    stream, clock, shown = plain(10)
    with shown as p:
        assert p.mode == "off"
        p.advance(10)
        p.warn("something to know")
    assert stream.lines() == ["warning: rollout: something to know"]
    set_enabled(True)
    stream, clock = Stream(), Clock()
    with progress(0, "eval", stream=stream, clock=clock) as p:  # nothing to do: nothing shown
        assert p.mode == "off"
        p.advance()
    assert stream.getvalue() == ""


# -- propose: episodes, valid tasks, yield, and the zero-yield warning -------------------------------------

def _propose_config(**over):
    from sandbox.config import SandboxConfig
    from sca.cat import ValidateConfig
    from stages.propose import ProposeConfig

    v = ValidateConfig(SandboxConfig(backend="bwrap", workers=1, timeout=5.0))
    return ProposeConfig(**{"env": "retail", "n": 1, "max_steps": 1, "concurrency": 1, "validate": v, **over})


def test_zero_yield_threshold():
    from stages.propose import ZERO_YIELD_MIN_EPISODES, zero_yield_after

    assert ZERO_YIELD_MIN_EPISODES == 50
    assert zero_yield_after(40) == 50 and zero_yield_after(1000) == 50
    assert zero_yield_after(16_000) == 800  # 5% of the paper's 20 x 800


def test_propose_lines_show_episodes_valid_and_yield_and_warn_once(tmp_path, capsys, monkeypatch):
    import stages.propose
    from stages.propose import propose_file

    monkeypatch.setattr(stages.propose, "ZERO_YIELD_MIN_EPISODES", 3)
    s = propose_file(_propose_config(n=2, max_episodes=5), str(tmp_path / "t.jsonl"),
                     rejected=str(tmp_path / "r.jsonl"), model=ScriptedModel(lambda turn, conv: "no idea"))
    assert s.episodes == 5 and s.valid == 0
    lines = capsys.readouterr().err.splitlines()  # stderr captured: not a terminal, so plain lines
    shown = [line for line in lines if line.startswith("propose retail: ")]
    assert [re.match(r"propose retail: (\d+)/5 episodes \(\d+%\)", line).group(1) for line in shown] == \
        ["1", "2", "3", "4", "5"]
    assert all(", 0/2 valid (0%), yield 0.0%, eta " in line for line in shown), shown
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1, lines
    assert warnings[0].startswith("warning: propose retail: no valid task in 3 episodes: the model may be too weak "
                                  "for the cat task format.")
    assert "--max-episodes" in warnings[0] and "5 episodes" in warnings[0]
    assert lines.index(warnings[0]) == lines.index(shown[2]) + 1  # as the third episode ended


def test_propose_with_valid_tasks_has_a_yield_and_no_warning(tmp_path, capsys, monkeypatch):
    import stages.propose
    from stages.propose import propose_file
    from test_propose import FIXED

    monkeypatch.setattr(stages.propose, "ZERO_YIELD_MIN_EPISODES", 2)  # one valid task by then
    counter = iter(range(1000))

    def script(turn, conv):  # every other episode writes a new valid task
        n = next(counter)
        return FIXED.replace("because I no longer need it", f"(ref {n}), I no longer need it") if n % 2 else "no"

    s = propose_file(_propose_config(n=2, max_episodes=10), str(tmp_path / "t.jsonl"),
                     rejected=str(tmp_path / "r.jsonl"), model=ScriptedModel(script))
    assert (s.episodes, s.valid) == (4, 2)
    lines = capsys.readouterr().err.splitlines()
    assert not [line for line in lines if line.startswith("warning:")]
    assert lines[-1].startswith("propose retail: 4/10 episodes (40%)")
    assert ", 2/2 valid (100%)" in lines[-1] and ", yield 50.0%, eta 0s" in lines[-1]
    assert "propose retail: 2/10 episodes (20%)" in lines[1] and "1/2 valid (50%)" in lines[1] \
        and "yield 50.0%" in lines[1]


def test_propose_resumed_counts_earlier_episodes(tmp_path, capsys):
    from stages.propose import propose_file

    out, rej = str(tmp_path / "t.jsonl"), str(tmp_path / "r.jsonl")
    garbage = ScriptedModel(lambda turn, conv: "no idea")
    propose_file(_propose_config(max_episodes=2), out, rejected=rej, model=garbage, show_progress=False)
    assert capsys.readouterr().err == ""  # show_progress=False: nothing
    propose_file(_propose_config(max_episodes=4), out, rejected=rej, model=garbage)
    shown = capsys.readouterr().err.splitlines()
    assert shown[0].startswith("propose retail: 3/4 episodes (75%)"), shown
    assert shown[-1].startswith("propose retail: 4/4 episodes (100%)")


def test_quiet_turns_the_stages_progress_off(tmp_path, capsys):
    from sandbox.config import SandboxConfig
    from sca.cat import ValidateConfig
    from stages.validate import validate_file

    src = write_jsonl(tmp_path / "t.jsonl", RETAIL_TASKS[:2])
    cfg = ValidateConfig(SandboxConfig(backend="bwrap", workers=1))
    validate_file(str(src), str(tmp_path / "o.jsonl"), config=cfg)
    assert "validate: 2/2 tasks (100%)" in capsys.readouterr().err
    set_enabled(False)
    validate_file(str(src), str(tmp_path / "o2.jsonl"), config=cfg)
    assert "validate: " not in capsys.readouterr().err


# -- a real stage with stderr into a file --------------------------------------------------------------

def test_validate_with_stderr_to_a_file_writes_progress_lines_there(tmp_path):
    from _sandbox_util import backend_or_skip

    backend_or_skip("bwrap")
    src = write_jsonl(tmp_path / "tasks.jsonl", RETAIL_TASKS[:3])
    log = tmp_path / "log"
    cmd = f"'{sys.executable}' -m sca_cli.app validate '{src}' -o '{tmp_path / 'out.jsonl'}' --sandbox bwrap 2> '{log}'"
    p = subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, log.read_text()
    lines = log.read_text().splitlines()
    shown = [line for line in lines if line.startswith("validate: ")]
    assert [line.split(" tasks ")[0] for line in shown] == ["validate: 1/3", "validate: 2/3", "validate: 3/3"], lines
    assert re.fullmatch(r"validate: 3/3 tasks \(100%\) \S+/(s|min|h), eta 0s, elapsed \S+", shown[-1])
    assert "━" not in log.read_text()  # no bar in a file
