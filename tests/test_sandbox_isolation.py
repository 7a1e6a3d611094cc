"""Issue: every run starts from the same pristine sandbox, and nothing a run sends can hurt the
trusted process. Unit-level checks of each mechanism, on bwrap and docker (the hostile corpus in
test_hostile_corpus.py runs the same attacks through `sca validate`)."""

from __future__ import annotations

import json
import os
import resource
import struct
import time
from typing import Any

import pytest
from _sandbox_util import StoreEnv, backend_or_skip

from envs.base import Tool, schema_from_signature
from sandbox import Sandbox, SandboxConfig
from sandbox.runner import scrub as runner_scrub
from sandbox.runner import wire as runner_wire
from sandbox.runner import zygote as runner_zygote

ISOLATING = ["bwrap", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture(scope="module", params=ISOLATING)
def backend(request):
    backend_or_skip(request.param)
    return request.param


@pytest.fixture(scope="module")
def sb(backend):
    with Sandbox(SandboxConfig(backend=backend, workers=1, timeout=10.0, memory_mb=1024, max_tool_calls=50,
                               max_tool_bytes=1 << 20, max_depth=16)) as sandbox:
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


SITE_SEARCH = """
import importlib.util, os, sys
found = []
for root, dirs, files in os.walk("/"):
    if root.startswith(("/proc", "/sys", "/dev")):
        dirs[:] = []
        continue
    for d in dirs:
        if d in ("site-packages", "dist-packages") or d.endswith((".dist-info", ".egg-info")):
            try:
                if os.listdir(os.path.join(root, d)):
                    found.append(os.path.join(root, d))
            except OSError:
                pass
    found += [os.path.join(root, f) for f in files if f.endswith((".egg-info", ".pth"))]
answer = {"found": found[:20], "stdlib": [importlib.util.find_spec(m) is not None for m in ("json", "sqlite3", "email")]}
"""


def test_the_sandbox_shows_the_standard_library_only(sb, env):
    """From a virtual environment, as users install sca, bwrap showed the base interpreter's
    site-packages (about 220 packages here) and Debian's /usr/lib/python3/dist-packages: code could
    read them and import them, and verdicts depended on the host."""
    res = sb.run(env, SITE_SEARCH, timeout=60)
    assert res.status == "ok", res
    assert res.answer["found"] == [], res.answer["found"]
    assert res.answer["stdlib"] == [True, True, True]


def test_the_standard_library_loads_with_its_compiled_modules(sb, env):
    """The shared libraries the standard library's extension modules load (sqlite's, OpenSSL's,
    zlib's, libffi's) are there: finding a module is not loading it."""
    res = sb.run(env, "import ctypes, sqlite3, ssl, zlib\n"
                      "answer = [sqlite3.connect(':memory:').execute('select 41 + 1').fetchone()[0],\n"
                      "          zlib.decompress(zlib.compress(b'abc')).decode(), ssl.OPENSSL_VERSION.split()[0],\n"
                      "          ctypes.sizeof(ctypes.c_int)]", timeout=30)
    assert res.status == "ok" and res.answer == [42, "abc", "OpenSSL", 4], res


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


def test_each_run_finds_the_writable_places_with_the_times_they_had_at_start(sb, env, backend):
    """The clean-up puts back each writable place's own times as recorded at start, not the time of the
    clean-up: what one run did there (or when) is not written on the directories the next one sees. (Its
    access time moves with every listing, the clean-up's check included: the modification time is compared.)"""
    code = ("import os\nplaces = [p for p in ('/tmp', '/dev/shm', '/dev/mqueue') if os.stat(p).st_uid == os.getuid()]\n"
            "answer = [[p, os.stat(p).st_mtime_ns] for p in places]\n"
            "for p in places:\n    os.mkdir(p + '/d') if p != '/dev/mqueue' else None\n")
    first = sb.run(env, code)
    time.sleep(0.05)  # past the kernel's coarse clock tick: a clean-up that stamped "now" could not match
    second = sb.run(env, code)
    assert first.status == second.status == "ok" and first.answer == second.answer, (first.answer, second.answer)
    if backend == "bwrap":  # the run owns them there (docker's belong to root)
        assert [p for p, *_ in first.answer] == ["/tmp", "/dev/shm", "/dev/mqueue"]


DEEP_TREES = """
import os
def dig(place, name, depth):
    fd = os.open(place, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir(name, dir_fd=fd)
        sub = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = sub
    os.close(os.open("end", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
    os.close(fd)
for place in ("/tmp", "/dev/shm"):
    dig(place, "d", 5000)          # deeper than any recursion limit
    dig(place, "n" * 250, 40)      # a path of 10,000 characters: far past PATH_MAX (4096)
answer = "dug"
"""
EMPTY_PLACES = "import os\nanswer = [os.listdir(p) for p in ('/tmp', '/dev/shm', '/dev/mqueue')]"


def test_trees_nested_thousands_deep_or_past_path_max_are_removed(sb, env):
    """Clean-up by path (recursion, whole paths) fails on both: RecursionError killed the zygote
    after the report (the next run got a dead worker), and ENAMETOOLONG left the long path behind."""
    sb.run(env, "answer = 1")
    before = worker_pid(sb)
    res = sb.run(env, DEEP_TREES)
    assert (res.status, res.answer) == ("ok", "dug"), res
    after = sb.run(env, EMPTY_PLACES)
    assert (after.status, after.answer) == ("ok", [[], [], []]), after
    assert worker_pid(sb) == before  # cleaned, not replaced


def test_locked_directories_deep_down_are_removed(sb, env):
    res = sb.run(env, """
import os
os.makedirs("/tmp/a/b/c/d")
open("/tmp/a/b/c/d/f", "w").close()
for p in ("/tmp/a/b/c/d", "/tmp/a/b/c", "/tmp/a/b", "/tmp/a"):
    os.chmod(p, 0)
answer = 1
""")
    assert res.status == "ok", res
    assert sb.run(env, EMPTY_PLACES).answer == [[], [], []]


def test_a_clean_up_that_fails_retires_the_worker(tmp_path, monkeypatch):
    """In the runner: a place that is not empty after the clean-up, or an entry that cannot be
    removed, is a failure with its reason (the worker then says so and serves no more runs)."""
    place = tmp_path / "place"
    place.mkdir()
    zygote = runner_zygote.Zygote(-1, -1, pid_namespace=False, scrub=[str(place)])
    (place / "deep").mkdir()
    (place / "deep" / "f").write_text("x")
    assert zygote._scrub() is None and list(place.iterdir()) == []  # the real thing works
    (place / "survivor").write_text("x")
    monkeypatch.setattr(runner_scrub, "_empty_directory", lambda path, deadline: None)  # one that misses it
    why = zygote._scrub()
    assert why and "not empty" in why and "survivor" in why, why
    monkeypatch.undo()
    if os.geteuid() != 0:
        return
    # an entry the worker's user may not remove: a root-owned directory in its place
    import shutil
    import tempfile

    place = tempfile.mkdtemp(prefix="sca-scrub-", dir="/tmp")  # reachable by uid 65534
    try:
        _scrub_as_nobody(place)
    finally:
        shutil.rmtree(place)


def _scrub_as_nobody(place: str) -> None:
    os.chown(place, 65534, 65534)
    zygote = runner_zygote.Zygote(-1, -1, pid_namespace=False, scrub=[place])
    os.mkdir(os.path.join(place, "locked"), 0o755)
    with open(os.path.join(place, "locked", "f"), "w") as f:
        f.write("x")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, (zygote._scrub() or "None").encode())
        finally:
            os._exit(0)
    os.close(w)
    why = os.read(r, 4096).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert "clean-up of the writable places failed" in why and "Permission denied: 'f'" in why, why


CLONE_PARENT_ZOMBIES = """
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
nr = {"x86_64": 56, "aarch64": 220}[os.uname().machine]
made = 0
for i in range(30):
    pid = libc.syscall(nr, 0x00008000 | 17, 0, 0, 0, 0)  # clone(CLONE_PARENT | SIGCHLD): our sibling
    if pid == 0:
        if i % 10 == 0:
            time.sleep(60)  # a few stay alive: the clean-up kills them
        os._exit(0)
    made += pid > 0
time.sleep(0.3)  # the others are zombies of the forker now
answer = made
"""


def test_processes_attached_to_the_forker_are_reaped(sb, env):
    """clone(CLONE_PARENT) makes the run's processes children of the forker: it reaps them, and the
    clean-up counts its zombies as gone (each used to cost every later run a 2 s wait, and they held
    pids until the worker could fork no more)."""
    sb.run(env, "answer = 1")
    before = worker_pid(sb)
    t0 = time.monotonic()
    for _ in range(4):  # 120 processes in all: more than the worker's process limit
        res = sb.run(env, CLONE_PARENT_ZOMBIES)
        assert (res.status, res.answer) == ("ok", 30), res
    after = sb.run(env, """
import os
states = []
for p in os.listdir("/proc"):
    if p.isdigit():
        with open(f"/proc/{p}/stat") as f:
            states.append(f.read().rsplit(")", 1)[1].split()[0])
answer = sorted(states)
""")
    assert after.status == "ok" and "Z" not in after.answer and len(after.answer) <= 3, after
    assert time.monotonic() - t0 < 6, "the clean-up waited for zombies"
    assert worker_pid(sb) == before


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
    with Sandbox(SandboxConfig(backend=backend, workers=1)) as sb:
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
    # JSON has no NaN or Infinity, but Python's decoder takes them: the zygote could then not send
    # them on (it died of it, and the run became an infrastructure failure, to be retried)
    "nan-call": b'{"op":"call","name":"get_value","args":{"key":NaN}}',
    "infinity-call": b'{"op":"call","name":"get_value","args":{"key":[1,Infinity]}}',
    "minus-infinity-answer": b'{"op":"done","status":"ok","answer":-Infinity}',
    "nan-value": b'{"op":"done","status":"ok","value":NaN,"value_type":"float"}',
    "out-of-range-answer": b'{"op":"done","status":"ok","answer":[1e999]}',
    "value-in-exec-mode": b'{"op":"done","status":"ok","answer":1,"value":true,"value_type":"bool"}',
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


BIG_REPORTS = {  # Python that makes `data`, a report frame, inside the sandbox
    "over-the-report-limit": "p = b'{\"op\":\"done\",\"status\":\"ok\",\"answer\":\"' + b'x' * (4600 << 10) + b'\"}'",
    "answer-over-max-answer": "p = b'{\"op\":\"done\",\"status\":\"ok\",\"answer\":\"' + b'x' * (4 << 20) + b'\"}'",
    "unknown-field-over-the-report-limit":
        "p = b'{\"op\":\"done\",\"status\":\"ok\",\"answer\":1,\"junk\":\"' + b'x' * (4600 << 10) + b'\"}'",
    # 3.9 MB as written, 17 MB of JSON once decoded: 1e15 is 1000000000000000.0
    "answer-that-grows": "p = b'{\"op\":\"done\",\"status\":\"ok\",\"answer\":[' + b','.join([b'1e15'] * 800_000) + b']}'",
    # 2.8 MB as written and within the JSON items a frame may hold, 4.8 MB of JSON once decoded: the zygote
    # measures what it decoded (any frame past MEASURE_ABOVE) and refuses it before sending anything on
    "answer-that-grows-within-the-items": "p = b'{\"op\":\"done\",\"status\":\"ok\",\"answer\":[\"' "
                                          "+ b'x' * (2 << 20) + b'\",' + b','.join([b'1e15'] * 140_000) + b']}'",
}


@pytest.mark.parametrize("name", list(BIG_REPORTS))
def test_reports_past_the_size_limits_are_the_runs_protocol_violation(sb, env, name):
    res = sb.run(env, raw_frames(build=BIG_REPORTS[name] + "\ndata = struct.pack('>I', len(p)) + p"))
    assert res.status == "sandbox_error" and not res.infra and res.answer is None, res.error
    # refused by its size or its JSON items before it was decoded, or by the answer's size after
    assert res.error.startswith(("the code broke the sandbox protocol: frame of", "the answer is too large",
                                 "the code broke the sandbox protocol: frame holds up to")), res
    if name == "answer-that-grows-within-the-items":  # decoded, measured and refused in the zygote
        assert res.error.startswith("the answer is too large"), res.error
    ok = sb.run(env, "answer = get_value('apples')")
    assert (ok.status, ok.answer) == ("ok", 3), ok


def test_reports_past_max_report_are_refused_where_the_byte_budget_lets_larger_frames_in(backend, env):
    """With the default byte budget (8 MiB) the zygote takes frames of 8 MiB from the run's process (a
    call may be that large): a report of 5 MiB passes the frame limit, and is refused by its own."""
    build = ("p = b'{\"op\":\"done\",\"status\":\"ok\",\"answer\":1,\"junk\":\"' + b'x' * (5 << 20) + b'\"}'\n"
             "data = struct.pack('>I', len(p)) + p")
    with Sandbox(SandboxConfig(backend=backend, workers=1)) as sb:
        res = sb.run(env, raw_frames(build=build))
        assert res.status == "sandbox_error" and not res.infra and res.answer is None, res
        assert res.error.startswith("the code broke the sandbox protocol: a report of"), res.error
        assert sb.run(env, "answer = get_value('apples')").answer == 3


DENSE_CALLS = {  # Python that makes `p`, one call frame of empty lists, inside the sandbox
    # 6 million lists, 18 MB: under the old 64 MiB frame limit, far over the run's budget (1 MiB here); decoding
    # and walking it outlasted the parent's watchdog, and the trial became an infrastructure failure
    "past-the-budget": "p = b'{\"op\":\"call\",\"name\":\"search\",\"args\":{\"text\":[' "
                       "+ b','.join([b'[]'] * 6_000_000) + b']}}'",
    # 900 KB: within the byte budget, over the JSON items a call may send
    "too-many-items": "p = b'{\"op\":\"call\",\"name\":\"search\",\"args\":{\"text\":[' "
                      "+ b','.join([b'[]'] * 300_000) + b']}}'",
}


@pytest.mark.parametrize("name", list(DENSE_CALLS))
def test_dense_raw_call_frames_are_refused_before_they_are_decoded(sb, env, name):
    res = sb.run(env, raw_frames(build=DENSE_CALLS[name] + "\ndata = struct.pack('>I', len(p)) + p"))
    assert res.status == "sandbox_error" and res.infra is False and res.tool_calls == [], res
    assert res.error.startswith("the code broke the sandbox protocol: frame "), res.error
    assert ("bytes exceeds" if name == "past-the-budget" else "JSON items") in res.error, res.error
    assert sb.run(env, "answer = get_value('apples')").answer == 3


def test_calls_and_answers_past_the_items_limit_are_refused_where_they_are_made(sb, env):
    limit = runner_wire.MAX_ITEMS
    args = {"text": list(range(limit - 3))}
    assert runner_wire.json_items(json.dumps(args)) == limit  # at the limit: passes everywhere
    fits = sb.run(env, f"try:\n    search(list(range({limit - 3})))\nexcept ToolError:\n    answer = 'it reached the tool'")
    assert (fits.status, fits.answer) == ("ok", "it reached the tool"), fits
    assert len(fits.tool_calls) == 1
    over = sb.run(env, f"search(list(range({limit - 2})))")
    assert (over.status, over.error_type) == ("error", "BudgetExceeded") and "JSON items" in over.error, over
    assert over.tool_calls == []  # refused in the run's own process: nothing left it
    answer = sb.run(env, f"answer = [[]] * {limit // 2 + 1}")
    assert answer.status == "sandbox_error" and "too many JSON items" in answer.error and not answer.infra, answer
    assert sb.run(env, f"answer = [[]] * {limit // 2 - 1}").status == "ok"


def test_the_zygote_keeps_the_items_limit_by_itself(sb, env):
    """Code that switches off its own process's check of MAX_ITEMS (the runner's child module, which it
    runs in): the zygote refuses the call by itself, BudgetExceeded where it was made, and nothing
    reaches the parent."""
    limit = runner_wire.MAX_ITEMS
    code = (f"import sys\nsys.modules['runner.child'].MAX_ITEMS = 1 << 40\ntry:\n    search(list(range({limit})))\n"
            "except BudgetExceeded as e:\n    answer = str(e)\n")
    res = sb.run(env, code)
    assert res.status == "ok" and "JSON items" in res.answer and not res.infra, res
    assert res.tool_calls == [] and res.refused_calls == 1, res


def test_honest_answers_near_the_size_limit(sb, env):
    fits = sb.run(env, f"answer = 'x' * {runner_wire.MAX_ANSWER - 2}")  # 2 bytes of quotes: exactly the limit
    assert fits.status == "ok" and len(fits.answer) == runner_wire.MAX_ANSWER - 2, fits.error
    over = sb.run(env, f"answer = 'é' * {runner_wire.MAX_ANSWER // 2}")  # 2 bytes each in UTF-8
    assert over.status == "sandbox_error" and "too large" in over.error and not over.infra, over


def test_a_tool_call_the_zygote_cannot_pass_on_is_the_runs_violation(backend):
    """A frame of exactly the frame limit, within a (large) byte budget: the zygote's own call frame
    to the parent would be a few bytes over the limit. It used to die of that."""
    if backend == "docker":
        pytest.skip("the same runner code as bwrap; 64 MB frames are slow through the engine")
    env = StoreEnv()
    with Sandbox(SandboxConfig(backend=backend, workers=1, max_tool_bytes=128 << 20, memory_mb=2048)) as sb:
        pad = runner_wire.MAX_FRAME - len(b'{"op":"call","name":"search","args":{"text":""}}')
        res = sb.run(env, raw_frames(build="p = b'{\"op\":\"call\",\"name\":\"search\",\"args\":{\"text\":\"' "
                                           f"+ b'x' * {pad} + b'\"}}}}'\ndata = struct.pack('>I', len(p)) + p"))
        assert res.status == "sandbox_error" and not res.infra, res.error
        assert res.error.startswith("the code broke the sandbox protocol: a tool call that cannot be passed on"), res
        assert sb.run(env, "answer = get_value('apples')").answer == 3


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


#: evaluate() that writes its own report of a real true, then exits: a report the zygote passes on
#: (every field of the right shape), which the verdict must still read in full
FORGED_TRUE = ("import os, stat, struct\ndef evaluate():\n    done = DONE\n"
               "    for fd in range(3, 64):\n        try:\n            if stat.S_ISFIFO(os.fstat(fd).st_mode):\n"
               "                os.write(fd, struct.pack('>I', len(done)) + done)\n        except OSError:\n"
               "            pass\n    os._exit(0)\n")


@pytest.mark.parametrize("done", [
    b'{"op":"done","status":"error","error_type":"ValueError","error":"no","value":true,"value_type":"bool"}',
    b'{"op":"done","status":"sandbox_error","error_type":"SandboxError","error":"no","value":true,"value_type":"bool"}',
    b'{"op":"done","status":"ok","value":true,"value_type":"__main__.bool"}',
    b'{"op":"done","status":"ok","value":true,"value_type":"int"}',
], ids=["beside-an-error", "beside-a-sandbox-error", "user-class-bool", "int"])
def test_a_forged_true_is_a_verdict_only_from_an_ok_run_reporting_a_bool(sb, env, done):
    res = sb.run(env, FORGED_TRUE.replace("DONE", repr(done)), mode="evaluate")
    assert res.value is True and not res.infra, res  # the forgery got through as the run's report...
    assert res.verdict is None, res  # ...and is still no verdict
    real = sb.run(env, "def evaluate():\n    return True", mode="evaluate")
    assert (real.status, real.value_type, real.verdict) == ("ok", "bool", True), real


class DeepEnv(StoreEnv):
    """A store whose `deep` tool returns a list nested 20 levels (past the 16 of the module's sandbox)."""

    def tools(self) -> list[Tool]:
        return super().tools() + [Tool("deep", "A nested list.", schema_from_signature(self.deep), "read")]

    def _call(self, name: str, args: dict[str, Any]) -> Any:
        return self.deep() if name == "deep" else super()._call(name, args)

    def deep(self) -> list:
        """Twenty levels of lists."""
        value: list = []
        for _ in range(19):
            value = [value]
        return value


def test_a_tool_result_nested_past_max_depth_is_refused_not_sent(sb):
    """The parent never sends the code a result nested deeper than the run's max_depth: the call is
    refused with a ToolError that says why (and the record keeps no result)."""
    res = sb.run(DeepEnv(), "try:\n    deep()\n    answer = 'sent'\nexcept ToolError as e:\n    answer = str(e)")
    assert res.status == "ok" and "nested deeper than 16 levels" in res.answer, res
    (call,) = res.tool_calls
    assert call.name == "deep" and call.result is None and "nested deeper" in call.error, call


def test_text_that_is_not_unicode_is_reported_not_an_error(sb, env):
    res = sb.run(env, "answer = {'\\udcff': '\\ud800x'}\nprint('\\udcff')")
    assert res.status == "ok" and res.answer == {"\ufffd": "\ufffdx"}, res
    res = sb.run(env, "set_value('k', '\\udcff')\nraise ValueError('bad \\udcff')")
    assert res.status == "error" and res.error == "bad \ufffd" and res.tool_calls[0].args == {"key": "k", "value": "\ufffd"}


def test_a_fault_in_the_parents_bookkeeping_is_that_runs_sandbox_error(sb, env, monkeypatch):
    """Whatever goes wrong while the parent handles a run's messages (here: injected), Sandbox.run
    returns the run as a sandbox_error and the next run gets a working worker."""
    import sandbox.pool

    def broken(self, msg, size):
        raise KeyError("injected")

    monkeypatch.setattr(sandbox.pool._Run, "_result", broken)
    res = sb.run(env, "answer = 1")
    assert res.status == "sandbox_error" and "KeyError" in res.error, res
    assert not res.infra  # whatever the worker's bytes did here is the run's failure, never a retry
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


def test_a_call_far_past_the_byte_budget_is_refused_where_it_is_made(sb, env):
    """Honest code's call of 5 MiB in a run with a 1 MiB budget: refused in its own process, against the
    job's budget, never sent (a frame that large is more than the zygote takes from a run: a protocol
    violation, had it been sent)."""
    res = sb.run(env, "try:\n    set_value('big', 'x' * (5 << 20))\nexcept BudgetExceeded as e:\n    answer = str(e)")
    assert res.status == "ok" and "exceed what is left of the run's budget" in res.answer, res
    assert res.tool_calls == [] and not res.infra


#: code that switches off its own process's budget checks (in the runner's child module, which it runs
#: in), so that what it sends is held to the budgets by the zygote alone
NO_CHILD_CHECKS = "import sys\nchannel = sys.modules['runner.child']._CHANNEL\nchannel.bytes_left = 1 << 40\n"


def test_the_zygote_keeps_the_byte_budget_by_itself(sb, env):
    """Arguments and results both count: two calls of 240 kB whose results echo them use 960 kB of the
    1 MiB budget; the third call's 240 kB of arguments alone would fit what the arguments left, but not
    with the results, and the zygote refuses it before the parent sees it."""
    code = NO_CHILD_CHECKS + "for i in range(3):\n    set_value(str(i), 'x' * 240_000)\n    channel.bytes_left = 1 << 40\n"
    res = sb.run(env, code)
    assert res.status == "error" and res.error_type == "BudgetExceeded", res
    assert "left of the run's budget" in res.error and len(res.tool_calls) == 2 and res.refused_calls == 1
    used = sum(c.arg_bytes + c.result_bytes for c in res.tool_calls)
    assert 960_000 < used <= 1 << 20 < used + 240_000  # the third's arguments were past what was left


def test_the_zygote_keeps_the_call_budget_by_itself(sb, env):
    code = NO_CHILD_CHECKS + "for i in range(60):\n    get_value('apples')\n"
    res = sb.run(env, code)
    assert res.error_type == "BudgetExceeded" and "50 tool calls" in res.error, res
    assert len(res.tool_calls) == 50 and res.refused_calls == 1


def test_honest_code_at_the_exact_byte_budget_gets_budget_exceeded(sb, env):
    """The arguments are measured the same way in the sandbox and in the parent: a call the sandbox
    lets through with its last byte of budget is served (the parent once measured its own, larger
    frame, found the budget exceeded, and ended the run as a protocol violation)."""
    res = sb.run(env, """
budget = 1 << 20
sent = None
for n in range(budget, budget - 200, -1):   # the largest call the sandbox lets through
    try:
        search("x" * n)
    except BudgetExceeded as e:
        if "result" not in str(e):
            continue                          # refused where it was made: not sent
    sent = n
    break
try:
    get_value("apples")
    after = "served"
except BudgetExceeded:
    after = "refused"
answer = [sent, after]
""")
    assert res.status == "ok" and not res.infra, res
    size = (1 << 20) - len('{"text":""}')  # its JSON arguments: exactly the budget
    assert res.answer == [size, "refused"], res.answer
    # one call served (its result refused here); get_value's arguments refused where it was called
    assert [c.arg_bytes for c in res.tool_calls] == [1 << 20] and "result" in res.tool_calls[0].error


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


def test_kept_payloads_are_bounded_per_call_and_per_run(sb, env):
    """An executor once spent its byte budget on arguments of refused calls, and the parent kept every
    one of them, decoded (about 18x their JSON), for the whole episode."""
    import hashlib

    from sandbox.result import KEEP_ERROR_CHARS, KEEP_PAYLOAD_BYTES, is_stub

    big = "x" * KEEP_PAYLOAD_BYTES  # its JSON: 2 bytes of quotes more than the limit
    res = sb.run(env, f"set_value('k', 1)\ntry:\n    get_value('{big}')\nexcept ToolError:\n    pass")
    small, large = res.tool_calls
    assert (small.args, small.result) == ({"key": "k", "value": 1}, {"key": "k", "value": 1})
    text = json.dumps({"key": big}, separators=(",", ":"))
    assert is_stub(large.args) and large.args["_truncated"] == {
        "bytes": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest(), "prefix": text[:200]}
    assert large.arg_bytes == len(text) and res.kept_bytes == small.arg_bytes + small.result_bytes
    assert large.error.startswith("no such key") and len(large.error) <= KEEP_ERROR_CHARS + 40
    # at most `keep_payloads` bytes in all: the first call fits, the second does not
    code = "set_value('a', 'x' * 100)\nset_value('b', 'y' * 100)"
    res = sb.run(env, code, keep_payloads=200)
    first, second = res.tool_calls
    assert first.args == {"key": "a", "value": "x" * 100} and is_stub(first.result)  # its result: past the 200
    assert is_stub(second.args) and is_stub(second.result) and res.kept_bytes == first.arg_bytes
    assert all(is_stub(c.args) and is_stub(c.result) for c in sb.run(env, code, keep_payloads=0).tool_calls)


def test_kept_payloads_at_the_per_call_bound(sb, env):
    """A payload of exactly KEEP_PAYLOAD_BYTES of JSON is kept in full; one byte more is a stub."""
    from sandbox.result import KEEP_PAYLOAD_BYTES, is_stub

    pad = KEEP_PAYLOAD_BYTES - len('{"text":""}')
    res = sb.run(env, f"search('x' * {pad})\nsearch('y' * {pad + 1})")
    at, over = res.tool_calls
    assert (at.arg_bytes, at.args) == (KEEP_PAYLOAD_BYTES, {"text": "x" * pad}), at.arg_bytes
    assert over.arg_bytes == KEEP_PAYLOAD_BYTES + 1 and is_stub(over.args)


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
    import sandbox.pool

    monkeypatch.setattr(sandbox.pool, "WATCHDOG_GRACE", 0.3)  # the slow tool outlasts limit + grace
    env = SlowEnv()
    with Sandbox(SandboxConfig(backend=backend, workers=1, timeout=1.0)) as sb:
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


def test_sandbox_config_holds_the_defaults_and_builds():
    cfg = SandboxConfig()
    assert (cfg.max_tool_calls, cfg.max_tool_bytes, cfg.max_depth) == (2000, 8 << 20, 64)  # as sandbox/README.md says
    # the only copy: the parent sends every budget with the job, and the runner holds no default of its own
    assert not {"MAX_TOOL_CALLS", "MAX_TOOL_BYTES", "MAX_DEPTH"} & set(vars(runner_wire))
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
    with Sandbox(SandboxConfig(backend=backend, workers=1)) as sb:
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
send(json.dumps({"op": "started", "run": job["run"]}).encode())  # compromised once the run started
for p in payloads:
    send(p.replace("RUN", str(job["run"])).encode("latin-1"))
import time
time.sleep(60)  # and never report: the parent must see the violation by itself
"""


def _fake_workers(sb, monkeypatch, tmp_path, payloads: list[str]):
    """From now on `sb` starts workers that run FAKE_RUNNER (sending `payloads` after the first job);
    its idle workers are closed. Returns the backend's real start_worker, to put back."""
    import json as _json
    import sys as _sys

    from sandbox.workers import PipeWorker

    path = tmp_path / "payloads.json"
    path.write_text(_json.dumps(payloads))
    real_start = sb._backend.start_worker

    def hostile() -> PipeWorker:
        w = PipeWorker("fake", [_sys.executable, "-c", FAKE_RUNNER, str(path)])
        w.start(10)
        return w

    for w in sb._idle:
        w.close()
    sb._idle.clear()
    monkeypatch.setattr(sb._backend, "start_worker", hostile)
    return real_start


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
    "nan-call": '{"op":"call","run":RUN,"id":1,"name":"get_value","args":{"key":NaN}}',
    "infinity-answer": '{"op":"done","run":RUN,"status":"ok","answer":Infinity}',
    "minus-infinity-value": '{"op":"done","run":RUN,"status":"ok","answer":[-Infinity]}',
    "out-of-range-answer": '{"op":"done","run":RUN,"status":"ok","answer":-1e999}',
    "answer-over-max-answer": '{"op":"done","run":RUN,"status":"ok","answer":"' + "x" * (4 << 20) + '"}',
    "report-over-its-limit": '{"op":"done","run":RUN,"status":"ok","answer":null,"junk":"' + "x" * (6 << 20) + '"}',
    "stdout-past-output-limit": '{"op":"done","run":RUN,"status":"ok","stdout":"' + "y" * 50_000 + '"}',
    # one character past output_limit (10,000) and its marker (100): within what other text fields may hold
    "stdout-just-past-output-limit": '{"op":"done","run":RUN,"status":"ok","stdout":"' + "y" * 10_101 + '"}',
    "value-in-exec-mode": '{"op":"done","run":RUN,"status":"ok","answer":1,"value":true,"value_type":"bool"}',
    # 600 KB, within the byte budget: 400,000 items, refused before this process decodes it
    "items-call": '{"op":"call","run":RUN,"id":1,"name":"get_value","args":{"key":[' + ",".join(["[]"] * 200_000) + "]}}",
    # one call within the frame limit (what is left of the byte budget plus a frame's overhead) but past
    # the budget itself (the default 8 MiB): only the parent's own count of the budget stops it
    "call-past-the-byte-budget": '{"op":"call","run":RUN,"id":1,"name":"get_value","args":{"key":"' + "x" * ((8 << 20) + 100)
                                 + '"}}',
    # two calls in turn, the second one past the run's max_tool_calls (1 in the test below)
    "calls-past-the-call-budget": ['{"op":"call","run":RUN,"id":1,"name":"get_value","args":{"key":"apples"}}',
                                   '{"op":"call","run":RUN,"id":2,"name":"get_value","args":{"key":"apples"}}'],
}
HOSTILE_FRAMES = {k: v if isinstance(v, list) else [v] for k, v in HOSTILE_FRAMES.items()}
#: hostile workers whose runner died once the run started (it said so, or crashed): the code can have
#: caused that too, so it is the run's failure like every other case, never an infrastructure failure
DEAD_RUNNERS = {"fatal", "lone-surrogate"}


@pytest.mark.parametrize("name", list(HOSTILE_FRAMES))
def test_a_hostile_worker_cannot_make_the_parent_raise(name, monkeypatch, tmp_path):
    """Even a worker whose runner is compromised (the frames never passed a zygote's checks) can only
    make the run a sandbox_error: Sandbox.run returns, and the next worker is a fresh one."""
    backend_or_skip("bwrap")
    env = StoreEnv()
    with Sandbox(SandboxConfig(backend="bwrap", workers=1, max_depth=16, max_tool_calls=1)) as sb:
        real_start = _fake_workers(sb, monkeypatch, tmp_path, HOSTILE_FRAMES[name])
        t0 = time.monotonic()
        res = sb.run(env, "answer = 1")
        assert res.status == "sandbox_error" and res.error, res
        # whatever a worker sent or did once it started the job, the code can have done: never a retry
        assert res.infra is False, res
        assert time.monotonic() - t0 < 5, "the parent waited for its watchdog instead of seeing the violation"
        if name in ("deep-call", "deep-answer", "not-json", "items-call", "over-budget-call"):
            assert "garbage on the worker's channel" in res.error, res
        if name == "calls-past-the-call-budget":  # the first call was served, the second refused here
            assert [c.name for c in res.tool_calls] == ["get_value"] and "beyond the run's budgets" in res.error, res
        if name == "call-past-the-byte-budget":  # refused here, before the environment ran it
            assert res.tool_calls == [] and "beyond the run's budgets" in res.error, res
        assert sb._idle == []  # the hostile worker was not kept
        monkeypatch.setattr(sb._backend, "start_worker", real_start)
        assert sb.run(env, "answer = get_value('apples')").answer == 3


#: a worker that serves every job it gets (answer "unclean"), then ends each one with `ENDING` instead of
#: confirming a good clean-up: given another job, it would run it
UNCLEAN_RUNNER = r"""
import json, os, struct, sys
def send(msg):
    data = json.dumps(msg).encode()
    os.write(1, struct.pack(">I", len(data)) + data)
def read():
    head = os.read(0, 4)
    if len(head) < 4:
        return None
    size, data = struct.unpack(">I", head)[0], b""
    while len(data) < size:
        data += os.read(0, size - len(data))
    return json.loads(data)
send({"op": "ready", "seccomp": "ok", "uid": 65534})
while True:
    job = read()
    if job is None or job.get("op") != "run":
        break
    send({"op": "started", "run": job["run"]})
    send({"op": "done", "run": job["run"], "status": "ok", "answer": "unclean", "answer_type": "str"})
    send(json.loads(sys.argv[1].replace("RUN", str(job["run"]))))
"""


@pytest.mark.parametrize("ending", [
    '{"op":"clean","run":RUN,"ok":false,"error":"/tmp is not empty after the clean-up"}',
    '{"op":"clean","run":999999,"ok":true}',
    '{"op":"done","run":RUN,"status":"ok","answer":"again"}',
], ids=["failed", "another-run", "another-report"])
def test_a_worker_whose_clean_up_failed_runs_no_further_job(ending, monkeypatch):
    """A worker that would serve the next job (unlike one that hangs, which the retry of an undelivered job
    hides) is retired as soon as its clean-up is not confirmed: the next run is another worker's."""
    import sys as _sys

    from sandbox.workers import PipeWorker

    backend_or_skip("bwrap")
    env = StoreEnv()
    with Sandbox(SandboxConfig(backend="bwrap", workers=1)) as sb:
        for w in sb._idle:
            w.close()
        sb._idle.clear()
        real_start, made = sb._backend.start_worker, []

        def start() -> PipeWorker:
            if made:
                return real_start()
            w = PipeWorker("fake", [_sys.executable, "-c", UNCLEAN_RUNNER, ending])
            w.start(10)
            made.append(w)
            return w

        monkeypatch.setattr(sb._backend, "start_worker", start)
        first = sb.run(env, "answer = 1")
        assert (first.status, first.answer) == ("ok", "unclean"), first  # the run itself stands
        res = sb.run(env, "answer = get_value('apples')")
        assert (res.status, res.answer, res.infra) == ("ok", 3, False), res
        assert not made[0].alive() and made[0] not in sb._idle


#: a worker that sends a tool call for its job before it says it started the job, then dies
EARLY_CALL_RUNNER = r"""
import json, os, struct, time
def send(msg):
    data = json.dumps(msg).encode()
    os.write(1, struct.pack(">I", len(data)) + data)
send({"op": "ready", "seccomp": "ok", "uid": 65534})
size = struct.unpack(">I", os.read(0, 4))[0]
data = b""
while len(data) < size:
    data += os.read(0, size - len(data))
job = json.loads(data)
send({"op": "call", "run": job["run"], "id": 1, "name": "set_value", "args": {"key": "apples", "value": 99}})
time.sleep(0.5)
"""


def test_a_call_before_the_worker_started_the_job_is_never_served(monkeypatch):
    """Until a worker says it started the job nothing of the code has run, and the job may go to another
    worker: a tool call then is out of turn, and never runs against the environment."""
    import sys as _sys

    import sandbox.pool
    from sandbox.workers import PipeWorker

    backend_or_skip("bwrap")
    env = StoreEnv()
    with Sandbox(SandboxConfig(backend="bwrap", workers=1)) as sb:
        for w in sb._idle:
            w.close()
        sb._idle.clear()
        real_start, started = sb._backend.start_worker, []

        def hostile() -> PipeWorker:
            w = PipeWorker("fake", [_sys.executable, "-c", EARLY_CALL_RUNNER])
            w.start(10)
            started.append(w)
            return w

        monkeypatch.setattr(sb._backend, "start_worker", hostile)
        res = sb.run(env, "answer = 1")
        assert res.infra is True and res.error.startswith("no worker started the job"), res
        assert res.tool_calls == [] and env.db["apples"] == 3, (res.tool_calls, env.db)
        assert len(started) == sandbox.pool.DELIVERY_ATTEMPTS and not any(w.alive() for w in started)
        monkeypatch.setattr(sb._backend, "start_worker", real_start)
        assert sb.run(env, "answer = get_value('apples')").answer == 3


CLEAN_UP_ENDINGS = {  # what a worker sends after a good report instead of confirming its clean-up
    "failed": '{"op":"clean","run":RUN,"ok":false,"error":"/tmp is not empty after the clean-up"}',
    "another-run": '{"op":"clean","run":999999,"ok":true}',
    "another-report": '{"op":"done","run":RUN,"status":"ok","answer":"again"}',
    "nothing": None,
}


@pytest.mark.parametrize("ending", list(CLEAN_UP_ENDINGS))
def test_a_worker_whose_clean_up_failed_never_gets_the_next_run(ending, monkeypatch, tmp_path):
    """The runner confirms its clean-up after each run; a worker that says it failed (or does not say
    it succeeded) is retired before the next run, which runs on a fresh worker and never fails for it."""
    import sandbox.pool

    backend_or_skip("bwrap")
    monkeypatch.setattr(sandbox.pool, "CLEANUP_WAIT", 1.0)
    env = StoreEnv()
    payloads = ['{"op":"done","run":RUN,"status":"ok","answer":"first","answer_type":"str"}']
    if CLEAN_UP_ENDINGS[ending] is not None:
        payloads.append(CLEAN_UP_ENDINGS[ending])
    with Sandbox(SandboxConfig(backend="bwrap", workers=1)) as sb:
        real_start = _fake_workers(sb, monkeypatch, tmp_path, payloads)
        first = sb.run(env, "answer = 'first'")
        assert (first.status, first.answer) == ("ok", "first"), first  # the run itself stands
        (fake,) = sb._idle
        monkeypatch.setattr(sb._backend, "start_worker", real_start)
        res = sb.run(env, "answer = get_value('apples')")
        assert (res.status, res.answer, res.infra) == ("ok", 3, False), res
        assert fake not in sb._idle and not fake.alive()  # retired, killed



# -- nothing of an earlier run in a later run's memory --------------------------------------------------

#: a run's code that reports whether any readable page of its own process holds an earlier run's key:
#: "SCAKEY-" followed by 32 hex digits whose sha256 is DIGEST (the key itself is never in this code)
MEMORY_SEARCH = """
import hashlib, re
found = 0
with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", buffering=0) as mem:
    for line in maps:
        span, perms = line.split()[:2]
        if "r" not in perms:
            continue
        start, end = (int(x, 16) for x in span.split("-"))
        try:
            mem.seek(start)
            data = mem.read(end - start)
        except (OSError, OverflowError, ValueError):
            continue
        for m in re.finditer(rb"SCAKEY-([0-9a-f]{32})", data):
            found += hashlib.sha256(m.group(1)).hexdigest() == "DIGEST"
answer = found
"""
KILL_EVERYONE = """
import os, signal
for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
    if pid != os.getpid():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
answer = "killed"
"""


@pytest.mark.parametrize("between", ["nothing", "a run that kills its forker", "a new tool set"])
def test_no_later_run_can_read_an_earlier_runs_job_from_memory(backend, between):
    """An executor once killed its forker, so that the zygote forked a new one from its own memory,
    which held the frames and jobs of earlier runs; the next ACTION read an earlier trial's
    evaluate() with its expected answer out of /proc/self/mem."""
    import hashlib
    import secrets

    key = secrets.token_hex(16)
    digest = hashlib.sha256(key.encode()).hexdigest()
    env = StoreEnv()
    with Sandbox(SandboxConfig(backend=backend, workers=1)) as sb:
        before = worker_pid(sb)
        evaluation = f"KEY = 'SCAKEY-{key}'\ndef evaluate(answer):\n    return answer == KEY\n"
        assert sb.run(env, evaluation, mode="evaluate", answer=f"SCAKEY-{key}").verdict is True
        if between == "a run that kills its forker":
            assert sb.run(env, KILL_EVERYONE).status in ("ok", "sandbox_error")
        elif between == "a new tool set":
            assert sb.run(SlowEnv(), "answer = 1").answer == 1
        res = sb.run(env, MEMORY_SEARCH.replace("DIGEST", digest))
        assert res.status == "ok", res
        assert res.answer == 0, f"a later run read the earlier run's key from its memory {res.answer} times"
        assert worker_pid(sb) == before  # one worker served every run
