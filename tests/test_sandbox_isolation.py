"""Issue: every run starts from the same pristine sandbox, and nothing a run sends can hurt the
trusted process. Unit-level checks of each mechanism, on bwrap and docker (the hostile corpus in
test_hostile_corpus.py runs the same attacks through `sca validate`)."""

from __future__ import annotations

import os
import resource
import struct
import time
from typing import Any

import pytest
from _sandbox_util import StoreEnv, backend_or_skip

from envs.base import Tool, schema_from_signature
from sandbox import Sandbox, SandboxConfig
from sandbox import runner as sandbox_runner

ISOLATING = ["bwrap", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture(scope="module", params=ISOLATING)
def backend(request):
    backend_or_skip(request.param)
    return request.param


@pytest.fixture(scope="module")
def sb(backend):
    with Sandbox(backend=backend, workers=1, timeout=10.0, memory_mb=1024, max_tool_calls=50,
                 max_tool_bytes=1 << 20, max_depth=16) as sandbox:
        yield sandbox


@pytest.fixture
def env():
    return StoreEnv()


def worker_pid(sb: Sandbox) -> Any:
    """The identity of the (only) idle worker: its process or container."""
    (w,) = sb._idle
    return getattr(w, "pid", None) or w.container.id


# -- the same pristine sandbox for every run ------------------------------------------------------------


def test_only_tmp_shm_and_mqueue_are_writable(sb, env):
    res = sb.run(env, """
import os
writable = []
for root, dirs, files in os.walk("/"):
    if root.startswith(("/proc", "/sys")):
        dirs[:] = []
        continue
    for attempt in range(2):
        try:
            os.close(os.open(os.path.join(root, ".w"), os.O_CREAT | os.O_WRONLY | os.O_EXCL))
            os.unlink(os.path.join(root, ".w"))
            writable.append(root)
            break
        except OSError:
            try:  # a directory the run owns but may not write: it can give itself the right
                os.chmod(root, os.stat(root).st_mode | 0o700)
            except OSError:
                break
answer = sorted(writable)
""")
    assert res.status == "ok", res
    assert res.answer == ["/dev/mqueue", "/dev/shm", "/tmp"]


def test_a_run_finds_nothing_of_the_previous_one(sb, env):
    before = worker_pid(sb)
    res = sb.run(env, """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.mq_open.restype = ctypes.c_int
for place in ("/tmp", "/dev/shm", "/dev/mqueue"):
    if place == "/dev/mqueue":
        assert libc.mq_open(b"/left", os.O_CREAT | os.O_RDWR, 0o600, None) >= 0
        queues = os.listdir("/dev/mqueue")
    else:
        os.makedirs(place + "/d/e")
        open(place + "/d/e/f", "w").close()
        os.chmod(place + "/d", 0)
    if os.stat(place).st_uid == os.getuid():  # ours in bwrap; docker's belong to root
        os.setxattr(place, "user.note", b"hi") if place == "/tmp" else None
        os.utime(place, (4_000_000_000, 67890))  # an atime in 2096: no access would update it
        os.chmod(place, 0)
answer = libc.shmget(0x5CA, 4096, 0o1000 | 0o666) >= 0 and queues == ["left"]
""")
    assert res.status == "ok" and res.answer is True, res
    res = sb.run(env, """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
answer = [[os.listdir(p), os.listxattr(p), oct(os.stat(p).st_mode & 0o777), int(os.stat(p).st_atime) == 4_000_000_000]
          for p in ("/tmp", "/dev/shm", "/dev/mqueue")] + [libc.shmget(0x5CA, 0, 0) >= 0]
""")
    assert res.status == "ok", res
    assert [p[:2] + [p[3]] for p in res.answer[:3]] == [[[], [], False]] * 3
    assert res.answer[0][2] == "0o777" and res.answer[1][2] == "0o777" and res.answer[3] is False
    assert worker_pid(sb) == before  # the same worker served both runs


def test_a_run_cannot_change_the_processes_that_start_later_runs(sb, env):
    attack = sb.run(env, """
import os, resource
changed = []
for pid in [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
    for step in (lambda: resource.prlimit(pid, resource.RLIMIT_AS, (1 << 20, 1 << 20)),
                 lambda: os.setpriority(os.PRIO_PROCESS, pid, 19),
                 lambda: os.sched_setaffinity(pid, {min(os.sched_getaffinity(0))}),
                 lambda: open(f"/proc/{pid}/oom_score_adj", "w").write("-1000")):
        try:
            step()
            changed.append(pid)
        except OSError:
            pass
for which in (os.PRIO_PGRP, os.PRIO_USER):
    try:
        os.setpriority(which, 0, 19)
        changed.append(which)
    except OSError:
        pass
answer = changed
""")
    assert attack.status == "ok" and attack.answer == [], attack
    after = sb.run(env, """
import os, resource
block = bytearray(200 << 20)
answer = [resource.getrlimit(resource.RLIMIT_AS)[1] >> 20, os.getpriority(os.PRIO_PROCESS, 0),
          len(os.sched_getaffinity(0))]
""")
    assert after.status == "ok" and after.answer == [1024, 0, len(os.sched_getaffinity(0))], after


def test_a_run_may_still_change_its_own_limits_and_priority(sb, env):
    res = sb.run(env, """
import os, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
os.nice(5)
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
answer = [resource.getrlimit(resource.RLIMIT_NOFILE)[0], os.getpriority(os.PRIO_PROCESS, 0), len(os.sched_getaffinity(0))]
""")
    assert (res.status, res.answer) == ("ok", [64, 5, 1]), res
    res = sb.run(env, "import os\nanswer = os.getpriority(os.PRIO_PROCESS, 0)")
    assert res.answer == 0


def test_kernel_keyrings_are_refused(sb, env):
    res = sb.run(env, """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
nr = {"x86_64": 248, "aarch64": 217}[os.uname().machine]
answer = [libc.syscall(nr, b"user", b"k", b"v", 1, -4), ctypes.get_errno()]
""")
    assert res.status == "ok" and res.answer == [-1, 1], res  # EPERM


def test_no_process_of_the_sandbox_is_host_root(backend):
    with Sandbox(backend=backend, workers=1) as sb:
        assert "host uid 0" not in sb.limits["user"], sb.limits
        assert "uid 0 inside" not in sb.limits["user"], sb.limits
        if backend == "bwrap" and os.geteuid() == 0:
            (w,) = sb._idle
            pids = [w.pid] + [int(p) for p in os.popen(f"pgrep -P {w.pid}").read().split()]
            uids = {os.stat(f"/proc/{p}").st_uid for p in pids if os.path.exists(f"/proc/{p}")}
            assert 0 not in uids and uids == {65534}, uids


# -- the trusted process survives any bytes a run sends -----------------------------------------------


def raw_frames(*payloads: bytes, build: str = "") -> str:
    """Code that writes its own frames on the request pipe, bypassing the tool functions
    (`build`: Python that computes the frames' bytes as `data` inside the sandbox instead)."""
    frames = b"".join(struct.pack(">I", len(p)) + p for p in payloads)
    return f"""
import os, stat, struct
data = {frames!r}
{build}
for fd in range(3, 64):
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, data)
    except OSError:
        pass
import time
time.sleep(0.5)
"""


RAW_FRAMES = {
    "deep-call": b'{"op":"call","name":"get_value","args":{"key":' + b"[" * 100_000 + b"1" + b"]" * 100_000 + b"}}",
    "nested-call": b'{"op":"call","name":"get_value","args":{"key":' + b"[" * 20 + b"1" + b"]" * 20 + b"}}",
    "args-not-object": b'{"op":"call","name":"get_value","args":[1,2]}',
    "deep-answer": b'{"op":"done","status":"ok","answer":' + b"[" * 5000 + b"]" * 5000 + b"}",
    "nested-answer": b'{"op":"done","status":"ok","answer":' + b"[" * 20 + b"]" * 20 + b"}",
    "bad-status": b'{"op":"done","status":"fine"}',
    "error-not-text": b'{"op":"done","status":"ok","error":{"a":1}}',
    "long-type": b'{"op":"done","status":"ok","value_type":"' + b"b" * 1000 + b'"}',
    "long-error": b'{"op":"done","status":"ok","error":"' + b"x" * 100_000 + b'"}',
    "not-json": b"\xff\xfe not json",
    "not-object": b"[1, 2, 3]",
    "unknown-op": b'{"op":"hello"}',
}


@pytest.mark.parametrize("name", list(RAW_FRAMES))
def test_hostile_frames_end_the_run_not_the_parent(sb, env, name):
    res = sb.run(env, raw_frames(RAW_FRAMES[name]))
    assert res.status == "sandbox_error", res
    assert res.error_type == "SandboxError" and res.error, res
    assert not res.infra  # the code broke the protocol: its own error, not the sandbox's
    # caught inside the sandbox, by the zygote, before anything reached this process
    assert res.error.startswith(("the code broke the sandbox protocol", "malformed report", "the answer is nested")), res
    ok = sb.run(env, "answer = get_value('apples')")
    assert (ok.status, ok.answer) == ("ok", 3), ok


def test_nesting_is_refused_where_the_call_is_made(sb, env):
    res = sb.run(env, "x = 1\nfor _ in range(20):\n    x = [x]\nget_value(x)")
    assert res.status == "error" and res.error_type == "TypeError", res
    assert "nested deeper than 16 levels" in res.error
    assert res.tool_calls == []


def test_nested_answers_and_values_are_refused(sb, env):
    res = sb.run(env, "answer = 1\nfor _ in range(20):\n    answer = [answer]")
    assert res.status == "sandbox_error" and "nested deeper than 16" in res.error, res
    res = sb.run(env, "def evaluate():\n    v = True\n    for _ in range(900):\n        v = [v]\n    return v",
                 mode="evaluate")
    assert res.status == "sandbox_error" and res.verdict is None, res


def test_only_a_real_json_bool_is_a_verdict(sb, env):
    fake = sb.run(env, "class bool:\n    def __repr__(self): return 'False'\ndef evaluate():\n    return bool()",
                  mode="evaluate")
    assert fake.status == "ok" and fake.value_type == "__main__.bool" and fake.verdict is None, fake
    text = sb.run(env, "def evaluate():\n    return 'True'", mode="evaluate")
    assert text.value == "True" and text.verdict is None
    one = sb.run(env, "def evaluate():\n    return 1", mode="evaluate")
    assert one.value == 1 and one.verdict is None
    real = sb.run(env, "def evaluate():\n    return get_value('apples') == 3", mode="evaluate")
    assert real.verdict is True and real.value_type == "bool"


def test_a_forged_report_naming_a_bool_type_is_no_verdict(sb, env):
    code = ("import os, stat, struct\ndef evaluate():\n"
            "    done = b'{\"op\":\"done\",\"status\":\"ok\",\"value\":\"False\",\"value_type\":\"bool\"}'\n"
            "    for fd in range(3, 64):\n        try:\n            if stat.S_ISFIFO(os.fstat(fd).st_mode):\n"
            "                os.write(fd, struct.pack('>I', len(done)) + done)\n        except OSError:\n"
            "            pass\n    os._exit(0)\n")
    res = sb.run(env, code, mode="evaluate")
    assert (res.status, res.value, res.value_type) == ("ok", "False", "bool"), res
    assert res.verdict is None


def test_text_that_is_not_unicode_is_reported_not_an_error(sb, env):
    res = sb.run(env, "answer = {'\\udcff': '\\ud800x'}\nprint('\\udcff')")
    assert res.status == "ok" and res.answer == {"\ufffd": "\ufffdx"}, res
    res = sb.run(env, "set_value('k', '\\udcff')\nraise ValueError('bad \\udcff')")
    assert res.status == "error" and res.error == "bad \ufffd" and res.tool_calls[0].args == {"key": "k", "value": "\ufffd"}


def test_a_fault_in_the_parents_bookkeeping_is_that_runs_sandbox_error(sb, env, monkeypatch):
    """Whatever goes wrong while the parent handles a run's messages (here: injected), Sandbox.run
    returns the run as a sandbox_error and the next run gets a working worker."""
    import sandbox.core

    def broken(self, msg):
        raise KeyError("injected")

    monkeypatch.setattr(sandbox.core._Run, "_result", broken)
    res = sb.run(env, "answer = 1")
    assert res.status == "sandbox_error" and "KeyError" in res.error, res
    monkeypatch.undo()
    assert sb.run(env, "answer = get_value('apples')").answer == 3


def test_user_exceptions_cannot_pass_for_tool_errors(sb, env):
    res = sb.run(env, "class ToolError(Exception):\n    pass\nraise ToolError('made up')")
    assert res.status == "error" and res.error_type == "__main__.ToolError", res
    real = sb.run(env, "get_value('pears-and-more')")
    assert real.error_type == "ToolError"


# -- per-run budgets -------------------------------------------------------------------------------


def test_tool_call_budget(sb, env):
    res = sb.run(env, """
served = refused = 0
for i in range(80):
    try:
        get_value("apples")
        served += 1
    except BudgetExceeded:
        refused += 1
answer = [served, refused]
""")
    assert res.status == "ok" and res.answer == [50, 30], res
    assert len(res.tool_calls) == 50 and res.refused_calls == 30
    res = sb.run(env, "for i in range(80):\n    get_value('apples')")
    assert res.status == "error" and res.error_type == "BudgetExceeded", res
    assert "50 tool calls" in res.error and "max_tool_calls" in res.error


def test_tool_bytes_budget_for_arguments_and_results(sb, env):
    res = sb.run(env, "set_value('big', 'x' * (2 << 20))")
    assert res.status == "error" and res.error_type == "BudgetExceeded" and res.tool_calls == [], res
    assert "bytes" in res.error
    # 700 kB go in (within the 1 MiB budget); the result echoes them: over the budget, refused
    res = sb.run(env, "set_value('big', 'x' * 700_000)")
    assert res.status == "error" and res.error_type == "BudgetExceeded", res
    assert res.tool_calls[0].name == "set_value" and res.tool_calls[0].arg_bytes > 700_000
    assert "result" in res.error


def test_oversized_raw_call_frames_never_reach_the_parent(sb, env):
    big = b'{"op":"call","name":"get_value","args":{"key":"' + b"x" * (2 << 20) + b'"}}'
    res = sb.run(env, raw_frames(big) + "\nanswer = 'after'")
    assert res.tool_calls == [], res  # refused inside the sandbox
    assert res.refused_calls == 1 or res.status == "sandbox_error", res


def test_payloads_are_kept_only_when_asked(sb, env):
    code = "get_value('apples')\nset_value('k', [1, 2])"
    full = sb.run(env, code)
    assert [(c.name, c.args, c.result) for c in full.tool_calls] == [
        ("get_value", {"key": "apples"}, 3), ("set_value", {"key": "k", "value": [1, 2]}, {"key": "k", "value": [1, 2]})]
    summary = sb.run(env, code, keep_payloads=False)
    assert [(c.name, c.args, c.result) for c in summary.tool_calls] == [("get_value", None, None),
                                                                        ("set_value", None, None)]
    assert all(c.arg_bytes > 0 and c.result_bytes > 0 for c in summary.tool_calls)


class SlowEnv(StoreEnv):
    """A store whose `slow` tool takes 1.5 s in the trusted process."""

    def tools(self) -> list[Tool]:
        return super().tools() + [Tool("slow", "Wait a while.", schema_from_signature(self.slow), "read")]

    def _call(self, name: str, args: dict[str, Any]) -> Any:
        return self.slow() if name == "slow" else super()._call(name, args)

    def slow(self) -> str:
        """Wait."""
        time.sleep(1.5)
        return "done"


def test_tool_time_counts_in_the_run_timeout(backend, monkeypatch):
    import sandbox.core

    monkeypatch.setattr(sandbox.core, "WATCHDOG_GRACE", 0.3)  # the slow tool outlasts limit + grace
    env = SlowEnv()
    with Sandbox(backend=backend, workers=1, timeout=1.0) as sb:
        before = worker_pid(sb)
        t0 = time.monotonic()
        res = sb.run(env, "for _ in range(10):\n    slow()")
        took = time.monotonic() - t0
        assert res.status == "timeout" and res.error_type == "Timeout", res
        assert "1 s time limit" in res.error  # reported by the runner: its clock ran on during the tool
        assert took < 3.0 and res.tool_s >= 1.5, (took, res.tool_s)
        assert worker_pid(sb) == before  # the worker was not taken for hung and killed
        assert sb.run(env, "answer = get_value('apples')").answer == 3


# -- the budgets, configurable ------------------------------------------------------------------------


def test_sandbox_config_defaults_match_the_runner_and_build():
    cfg = SandboxConfig()
    assert (cfg.max_tool_calls, cfg.max_tool_bytes, cfg.max_depth) == (
        sandbox_runner.MAX_TOOL_CALLS, sandbox_runner.MAX_TOOL_BYTES, sandbox_runner.MAX_DEPTH)
    with pytest.raises(ValueError, match="max_tool_calls"):
        SandboxConfig(max_tool_calls=0)
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        SandboxConfig(backend="chroot")
    backend_or_skip("bwrap")
    with SandboxConfig(backend="bwrap", max_tool_calls=3, timeout=4).build(workers=1) as sb:
        assert (sb.max_tool_calls, sb.timeout, sb.workers) == (3, 4.0, 1)
        res = sb.run(StoreEnv(), "for _ in range(5):\n    get_value('apples')")
        assert res.error_type == "BudgetExceeded"


def test_parent_memory_stays_bounded_under_huge_calls(backend):
    """15 calls of 50 MB once took the trusted process from 139 MB to 989 MB."""
    env = StoreEnv()
    with Sandbox(backend=backend, workers=1) as sb:
        sb.run(env, "get_value('apples')")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        res = sb.run(env, "big = 'x' * (50 << 20)\nfor _ in range(15):\n    try:\n        search(big)\n"
                          "    except BudgetExceeded:\n        pass\nanswer = 'done'")
        assert res.status == "ok" and res.refused_calls == 0 and len(res.tool_calls) == 0, res
        # three calls of 6 MiB: within the 8 MiB budget once, then refused inside the sandbox
        res = sb.run(env, raw_frames(build="p = b'{\"op\":\"call\",\"name\":\"search\",\"args\":{\"text\":\"' "
                                           "+ b'x' * (6 << 20) + b'\"}}'\ndata = (struct.pack('>I', len(p)) + p) * 3"))
        # one call served; the others refused for the budget (or, sent before its reply, out of turn)
        assert len(res.tool_calls) == 1 and (res.refused_calls == 2 or res.status == "sandbox_error"), res
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10  # MiB
        assert grown < 60, f"the parent grew by {grown} MiB"
        assert sb.run(env, "answer = get_value('apples')").answer == 3


# -- a worker that is itself hostile: the parent still never raises ----------------------------------------

FAKE_RUNNER = r"""
import json, os, struct, sys
with open(sys.argv[1]) as f:
    payloads = json.load(f)
def send(data):
    os.write(1, struct.pack(">I", len(data)) + data)
def read():
    head = os.read(0, 4)
    size = struct.unpack(">I", head)[0]
    data = b""
    while len(data) < size:
        data += os.read(0, size - len(data))
    return json.loads(data)
send(json.dumps({"op": "ready", "seccomp": "ok", "uid": 65534}).encode())
job = read()
for p in payloads:
    send(p.replace("RUN", str(job["run"])).encode("latin-1"))
import time
time.sleep(60)  # and never report: the parent must see the violation by itself
"""


HOSTILE_FRAMES = {
    "deep-call": '{"op":"call","run":RUN,"id":1,"name":"get_value","args":{"key":' + "[" * 50_000 + "1" + "]" * 50_000 + "}}",
    "nested-call": '{"op":"call","run":RUN,"id":1,"name":"get_value","args":{"key":' + "[" * 30 + '"apples"' + "]" * 30
                   + "}}",
    "call-out-of-turn": '{"op":"call","run":RUN,"id":7,"name":"get_value","args":{"key":"apples"}}',
    "call-bad-name": '{"op":"call","run":RUN,"id":1,"name":["get_value"],"args":{}}',
    "nested-answer": '{"op":"done","run":RUN,"status":"ok","answer":' + "[" * 50 + "]" * 50 + "}",
    "deep-answer": '{"op":"done","run":RUN,"status":"ok","answer":' + "[" * 50_000 + "]" * 50_000 + "}",
    "bad-status": '{"op":"done","run":RUN,"status":"won"}',
    "bad-type": '{"op":"done","run":RUN,"status":"ok","value_type":["bool"]}',
    "bad-count": '{"op":"done","run":RUN,"status":"ok","tool_calls":5}',
    "lone-surrogate": '{"op":"done","run":RUN,"status":"ok","stdout":"\udcff"}',
    "not-json": '\xff\xfe\x00',
    "fatal": '{"op":"fatal"}',
    "over-budget-call": '{"op":"call","run":RUN,"id":1,"name":"get_value","args":{"key":"' + "x" * (9 << 20) + '"}}',
}


@pytest.mark.parametrize("name", list(HOSTILE_FRAMES))
def test_a_hostile_worker_cannot_make_the_parent_raise(name, monkeypatch, tmp_path):
    """Even a worker whose runner is compromised (the frames never passed a zygote's checks) can only
    make the run a sandbox_error: Sandbox.run returns, and the next worker is a fresh one."""
    import json as _json
    import sys as _sys

    from sandbox.workers import PipeWorker

    backend_or_skip("bwrap")
    env = StoreEnv()
    (tmp_path / "payloads.json").write_text(_json.dumps([HOSTILE_FRAMES[name]]))
    with Sandbox(backend="bwrap", workers=1, max_depth=16) as sb:
        real_start = sb._backend.start_worker

        def hostile() -> PipeWorker:
            w = PipeWorker("fake", [_sys.executable, "-c", FAKE_RUNNER, str(tmp_path / "payloads.json")])
            w.start(10)
            return w

        for w in sb._idle:
            w.close()
        sb._idle.clear()
        monkeypatch.setattr(sb._backend, "start_worker", hostile)
        t0 = time.monotonic()
        res = sb.run(env, "answer = 1")
        assert res.status == "sandbox_error" and res.error, res
        assert res.infra  # the sandbox failed, not the code: a run to retry, never a verdict
        assert time.monotonic() - t0 < 5, "the parent waited for its watchdog instead of seeing the violation"
        if name in ("deep-call", "deep-answer", "not-json"):
            assert "garbage on the worker's channel" in res.error, res
        assert sb._idle == []  # the hostile worker was not kept
        monkeypatch.setattr(sb._backend, "start_worker", real_start)
        assert sb.run(env, "answer = get_value('apples')").answer == 3
