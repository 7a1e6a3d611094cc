"""Hostile code on the isolating backends: each attempt is contained and reported, and the next run works."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings

import pytest
from _sandbox_util import HIDDEN_SECRET, StoreEnv, backend_or_skip, unavailable

from sandbox import Sandbox, SandboxConfig, SandboxUnavailable

ISOLATING = ["bwrap", pytest.param("docker", marks=pytest.mark.docker)]
MAX_PROCS = 40


@pytest.fixture(scope="module", params=ISOLATING)
def sb(request):
    backend_or_skip(request.param)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            sandbox = Sandbox(SandboxConfig(backend=request.param, workers=1, timeout=10.0, memory_mb=512,
                                            max_procs=MAX_PROCS, output_limit=1000))
        except SandboxUnavailable as e:
            unavailable(request.param, e)
    yield sandbox
    sandbox.close()


@pytest.fixture
def env():
    return StoreEnv()


def still_works(sb: Sandbox, env: StoreEnv) -> None:
    """A normal run right after the attack: same worker or a fresh one, it must just work."""
    res = sb.run(env, "import os\nprint('fine')\nanswer = [get_value('apples'), len(os.listdir('/tmp'))]")
    assert (res.status, res.answer, res.stdout) == ("ok", [3, 0], "fine\n"), res


def everything(res) -> str:
    return json.dumps([res.answer, res.value, res.stdout, res.stderr, res.error, res.traceback])


def test_cannot_read_host_files(sb, env, tmp_path):
    secret = f"secret-{uuid.uuid4()}"
    paths = [tmp_path / "secret.txt", tmp_path.parent / "secret.txt"]
    for p in paths:
        p.write_text(secret)
    try:
        probe = [str(p) for p in paths] + ["/root/.bash_history", "/work/main/pyproject.toml",
                                          "/etc/shadow", "/proc/1/root/etc/hostname"]
        code = f"""
import os
found = {{}}
for p in {probe!r}:
    try:
        found[p] = open(p).read()
    except Exception as e:
        found[p] = type(e).__name__
answer = {{"files": found, "root": sorted(os.listdir("/"))}}
"""
        res = sb.run(env, code)
        assert res.status == "ok", res
        assert secret not in everything(res)
        assert all(v in ("FileNotFoundError", "PermissionError") for v in res.answer["files"].values()), res.answer
        assert not {"root", "home", "work"} & set(res.answer["root"])
    finally:
        for p in paths:
            p.unlink()
    still_works(sb, env)


def test_cannot_write_host_files(sb, env, tmp_path):
    target = tmp_path / "pwned.txt"
    in_tmp = f"/tmp/sca-pwned-{uuid.uuid4()}"
    runner = "/opt/sca/runner/zygote.py"  # a file of the runner's folder
    code = f"""
outcome = {{}}
for p in [{str(target)!r}, {in_tmp!r}, {runner!r}, "/usr/lib/pwned", "/opt/pwned"]:
    try:
        with open(p, "a") as f:
            f.write("pwned")
        outcome[p] = "written"
    except Exception as e:
        outcome[p] = type(e).__name__
answer = outcome
"""
    res = sb.run(env, code)
    assert res.status == "ok", res
    assert res.answer[runner] != "written" and res.answer["/usr/lib/pwned"] != "written"
    assert not target.exists() and not os.path.exists(in_tmp)  # /tmp inside is private and emptied
    still_works(sb, env)


def test_no_network(sb, env):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    connections = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                connections.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        code = f"""
import socket
outcome = []
for host in ["127.0.0.1", "10.0.2.2", "8.8.8.8"]:
    try:
        socket.create_connection((host, {port}), timeout=1).close()
        outcome.append("connected")
    except OSError as e:
        outcome.append(type(e).__name__)
try:
    socket.getaddrinfo("pypi.org", 443)
    outcome.append("resolved")
except OSError as e:
    outcome.append(type(e).__name__)
answer = outcome
"""
        res = sb.run(env, code)
        assert res.status == "ok", res
        assert "connected" not in res.answer and "resolved" not in res.answer
    finally:
        stop.set()
        thread.join()
        server.close()
    assert connections == []
    still_works(sb, env)


def test_process_count_is_capped(sb, env):
    code = """
import os, time
started = 0
try:
    for _ in range(500):
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        started += 1
except OSError as e:
    error = type(e).__name__
answer = [started, error]
"""
    res = sb.run(env, code)
    assert res.status == "ok", res
    started, error = res.answer
    assert started < MAX_PROCS and error == "BlockingIOError"
    # the sleepers are gone: a run can start almost the whole allowance again
    res = sb.run(env, f"""
import os, signal, time
pids = []
for _ in range({MAX_PROCS - 5}):
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    pids.append(pid)
for p in pids:
    os.kill(p, signal.SIGKILL)
    os.waitpid(p, 0)
answer = len(pids)
""")
    assert (res.status, res.answer) == ("ok", MAX_PROCS - 5), res
    still_works(sb, env)


def test_memory_is_capped(sb, env):
    res = sb.run(env, "x = bytearray(8 * 1024 ** 3)")
    assert (res.status, res.error_type) == ("sandbox_error", "MemoryError"), res
    res = sb.run(env, "chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024 * 1024))")
    assert (res.status, res.error_type) == ("sandbox_error", "MemoryError"), res
    still_works(sb, env)


def test_infinite_loop_times_out(sb, env):
    res = sb.run(env, "while True:\n    pass", timeout=1.0)
    assert (res.status, res.error_type) == ("timeout", "Timeout"), res
    res = sb.run(env, "import os\nif os.fork() == 0:\n    while True:\n        pass\nanswer = 'parent done'",
                 timeout=1.0)
    assert (res.status, res.answer) == ("ok", "parent done")  # the looping child is killed after the run
    still_works(sb, env)


def test_huge_output_is_truncated(sb, env):
    res = sb.run(env, "import os, sys\nchunk = 'x' * (1 << 20)\nfor _ in range(50):\n    sys.stdout.write(chunk)\n"
                      "for _ in range(50):\n    os.write(2, chunk.encode())")
    assert res.status == "ok", res
    assert res.stdout == "x" * 1000 + f"\n[... output truncated: {50 * (1 << 20) - 1000} more bytes]"
    assert res.stderr.endswith(f"[... output truncated: {50 * (1 << 20) - 1000} more bytes]")
    still_works(sb, env)


SENTINEL = """
import signal, time
def record(signum, frame):
    print(signal.Signals(signum).name, flush=True)
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
    signal.signal(s, record)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


@pytest.fixture
def host_process(tmp_path):
    """A process outside the sandbox, of the same user: it logs every catchable signal it gets."""
    log = tmp_path / "sentinel.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", SENTINEL], stdout=out, start_new_session=True)
    deadline = time.monotonic() + 30
    while log.read_text() != "ready\n":
        assert proc.poll() is None and time.monotonic() < deadline, "the sentinel process did not start"
        time.sleep(0.01)
    yield proc, log
    proc.kill()
    proc.wait()


def untouched(proc: subprocess.Popen, log) -> None:
    """The host process is alive, not stopped, and got no signal."""
    assert proc.poll() is None, f"a process outside the sandbox was killed (status {proc.returncode})"
    with open(f"/proc/{proc.pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    assert state not in ("T", "t", "Z", "X"), f"a process outside the sandbox was stopped or killed (state {state})"
    assert log.read_text() == "ready\n", f"a process outside the sandbox got signals: {log.read_text()!r}"


@pytest.mark.parametrize("attack", [
    "import os\nos.kill(os.getppid(), 9)",
    "import os\nos.kill(1, 9)",
    "import os, signal\nfor s in (signal.SIGINT, signal.SIGTERM, signal.SIGSTOP, signal.SIGUSR1):\n    os.kill(1, s)",
    "import os, signal\nos.kill(-1, signal.SIGKILL)",
    "import os, signal\nfor p in os.listdir('/proc'):\n    if p.isdigit() and int(p) != os.getpid():\n"
    "        try:\n            os.kill(int(p), 9)\n        except OSError:\n            pass",
], ids=["parent", "pid-1", "pid-1-signals", "everyone", "every-pid"])
def test_killing_the_parent_or_pid_1(sb, env, attack, host_process):
    res = sb.run(env, attack + "\nanswer = 'survived'")
    untouched(*host_process)  # nothing outside the sandbox is reached (its own PID namespace)
    assert (res.status, res.answer) == ("ok", "survived"), res  # PID 1 is immune, the code's parent replaced
    still_works(sb, env)
    untouched(*host_process)


@pytest.mark.parametrize("attack", [
    "os.kill(os.getppid(), signal.SIGSTOP)",
    "os.kill(os.getppid(), signal.SIGKILL)",
    "os.kill(-1, signal.SIGSTOP)",
])
def test_stopping_or_killing_the_parent_costs_nothing(sb, env, attack):
    # The code's parent forks the runs: stopped or killed, it is revived or replaced, and a crash
    # after the attack is still reported as that crash (not as a timeout).
    res = sb.run(env, f"import os, signal\n{attack}\nanswer = 'survived'")
    assert (res.status, res.answer) == ("ok", "survived"), res
    still_works(sb, env)
    res = sb.run(env, f"import os, signal\n{attack}\nprint('bye', flush=True)\nos._exit(3)", timeout=30)
    assert (res.status, res.stdout) == ("sandbox_error", "bye\n") and "exited with status 3" in res.error, res
    still_works(sb, env)


def test_a_forker_stopped_by_the_code_is_continued_not_replaced(sb, env):
    """The clean-up continues the forker a run stopped: the next runs are forked by the same process
    (replacing it, after waiting for it in vain, would cost every such run seconds)."""
    before = sb.run(env, "import os\nanswer = os.getppid()")
    assert before.status == "ok", before
    stopped = sb.run(env, "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\nanswer = 'stopped it'")
    assert (stopped.status, stopped.answer) == ("ok", "stopped it"), stopped
    for _ in range(2):
        after = sb.run(env, "import os\nanswer = os.getppid()")
        assert (after.status, after.answer) == ("ok", before.answer), (before.answer, after)


def test_a_leftover_that_keeps_stopping_the_parent(sb, env):
    code = """
import os, signal, time
parent = os.getppid()
if os.fork() == 0:
    os.setsid()
    while True:
        for sig in (signal.SIGSTOP, signal.SIGINT, signal.SIGTERM):
            try:
                os.kill(parent, sig)
            except OSError:
                pass
        time.sleep(0.0005)
time.sleep(0.05)
answer = 'done'
"""
    for _ in range(3):
        res = sb.run(env, code)
        assert (res.status, res.answer) == ("ok", "done"), res
        still_works(sb, env)


def test_cannot_reach_the_environment_through_python_internals(sb, env):
    before = env.state_hash()
    code = """
import gc, inspect, sys
hits = []
for obj in gc.get_objects():
    try:
        name = type(obj).__name__
        if name in ("StoreEnv", "Environment", "Sandbox") or (isinstance(obj, dict) and "apples" in obj):
            hits.append(name)
            if isinstance(obj, dict):
                obj["apples"] = 1000
        if isinstance(obj, str) and obj.startswith("hidden-"):
            hits.append(obj)
    except Exception:
        pass
frames = []
frame = sys._getframe()
while frame is not None:
    frames.append(frame.f_code.co_filename)
    for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):
        if type(value).__name__ == "StoreEnv":
            hits.append("frame")
    frame = frame.f_back
outer = [f.filename for f in inspect.stack()]
try:
    import envs
    hits.append("envs importable")
except ImportError:
    pass
answer = {"hits": hits, "modules": sorted(m for m in sys.modules if "env" in m or "sandbox" in m),
          "frames": frames + outer}
"""
    res = sb.run(env, code)
    assert res.status == "ok", res
    assert res.answer["hits"] == [] and res.answer["modules"] == []
    assert HIDDEN_SECRET not in everything(res)
    assert env.state_hash() == before
    still_works(sb, env)


def test_state_left_for_the_next_run_is_erased(sb, env):
    # a solution must not be able to leave a note that the evaluate run then finds
    code = """
import ctypes, os
for d in ("/tmp", "/dev/shm"):
    with open(os.path.join(d, "note"), "w") as f:
        f.write("solved")
os.makedirs("/tmp/locked/inner")
os.chmod("/tmp/locked", 0)
libc = ctypes.CDLL(None)
answer = libc.shmget(4242, 4096, 0o1666)
"""
    res = sb.run(env, code)
    assert res.status == "ok" and res.answer >= 0, res
    res = sb.run(env, "import ctypes, os\ndef evaluate():\n"
                      "    return [os.listdir('/tmp'), os.listdir('/dev/shm'), ctypes.CDLL(None).shmget(4242, 0, 0)]",
                 mode="evaluate")
    assert (res.status, res.value) == ("ok", [[], [], -1]), res
    still_works(sb, env)
