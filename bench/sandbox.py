"""Sandboxed runs per second, per backend, against a fresh Python process per run.

The baseline is what a simple harness does: start a new interpreter for each
code string, import and build the environment, exec the code with the tools
bound. The sandbox keeps the environment in this process and its workers
warm, so a run costs a fork and a few messages.

    python bench/sandbox.py [--env retail] [--runs 300] [--backends bwrap,docker,subprocess] [--workers 1]

Workloads: ``noop`` (``answer = 1 + 1``) and ``tool`` (one read-tool round
trip). ``runs/s`` is the median over 5 batches, ``best`` the fastest batch.
Backends that cannot run here are reported as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TOOL_CODE = {
    "retail": "answer = calculate(expression='2 + 2')",
    "airline": "answer = calculate(expression='2 + 2')",
    "store": "answer = get_value('apples')",
}

BASELINE = """
import sys
sys.path[:0] = {paths!r}
{make}
def _tool(t):
    return lambda *a, **kw: env.call(t.name, {{**dict(zip(t.param_names, a)), **kw}})
ns = {{t.name: _tool(t) for t in env.tools()}}
exec(sys.stdin.read(), ns)
print(repr(ns.get("answer")))
"""


def make_env_source(name: str) -> tuple[str, list[str]]:
    if name == "store":
        return "from _sandbox_util import StoreEnv\nenv = StoreEnv()", [str(REPO), str(REPO / "tests")]
    return f"from envs import make_env\nenv = make_env({name!r})", [str(REPO)]


def load_env(name: str):
    source, paths = make_env_source(name)
    sys.path[:0] = paths
    scope: dict = {}
    exec(source, scope)
    return scope["env"]


def baseline(env_name: str, code: str, runs: int) -> float:
    """Seconds per run for a fresh interpreter per run that builds the environment itself."""
    source, paths = make_env_source(env_name)
    program = BASELINE.format(paths=paths, make=source)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", program], input=code, text=True, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


FORK_FLOOR = """
import json, os, statistics, sys, time, traceback, inspect
times = []
for _ in range(5):
    t0 = time.perf_counter()
    for _ in range({n}):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    times.append((time.perf_counter() - t0) / {n})
print(statistics.median(times))
"""


def fork_floor(n: int = 100) -> float:
    """Seconds for a bare fork + exit + wait of a small interpreter (like the zygote): the floor of a run."""
    out = subprocess.run([sys.executable, "-I", "-S", "-c", FORK_FLOOR.format(n=n)], capture_output=True,
                         text=True, check=True).stdout
    return float(out)


def measure(sb, env, code: str, runs: int, threads: int, batches: int = 5) -> tuple[float, float]:
    """Runs per second, spread over `threads` callers: (median, best) over `batches` batches."""
    for _ in range(5):
        res = sb.run(env, code)
        assert res.status == "ok", (res.error_type, res.error)
    per_thread = max(1, runs // threads // batches)

    def go():
        for _ in range(per_thread):
            sb.run(env, code)

    rates = []
    for _ in range(batches):
        workers = [threading.Thread(target=go) for _ in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        rates.append(per_thread * threads / (time.perf_counter() - t0))
    return statistics.median(rates), max(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default=None, help="environment (default: retail if present, else a tiny store)")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--baseline-runs", type=int, default=3)
    parser.add_argument("--backends", default="bwrap,docker,subprocess")
    parser.add_argument("--workers", type=int, default=1, help="workers and calling threads")
    args = parser.parse_args(argv)

    from envs import env_names
    from sandbox import Sandbox, SandboxConfig, SandboxUnavailable

    env_name = args.env or ("retail" if "retail" in env_names() else "store")
    env = load_env(env_name)
    workloads = {"noop": "answer = 1 + 1", "tool": TOOL_CODE.get(env_name, TOOL_CODE["store"])}
    if env_name not in TOOL_CODE:
        print(f"note: no tool workload for {env_name}; 'tool' may fail", file=sys.stderr)

    print(f"environment: {env_name}; {args.runs} runs per measurement; workers: {args.workers}; "
          f"{os.cpu_count()} CPUs")
    base = baseline(env_name, workloads["tool"], args.baseline_runs)
    print(f"baseline (fresh python per run, building {env_name}): {1 / base:8.2f} runs/s  ({base * 1000:.0f} ms/run)")
    floor = fork_floor()
    print(f"floor (bare fork+exit+wait of a small python): {1 / floor:8.1f} forks/s  ({floor * 1000:.2f} ms)")
    print(f"{'backend':<11} {'start':>8} {'workload':<8} {'runs/s':>9} {'ms/run':>8} {'best':>8} {'vs baseline':>12}")
    for backend in args.backends.split(","):
        try:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                sb = Sandbox(SandboxConfig(backend=backend, workers=args.workers))
            start = time.perf_counter() - t0
        except SandboxUnavailable as e:
            print(f"{backend:<11} skipped: {e}")
            continue
        with sb:
            for name, code in workloads.items():
                rate, best = measure(sb, env, code, args.runs, args.workers)
                print(f"{backend:<11} {start * 1000:6.0f}ms {name:<8} {rate:9.1f} {1000 / rate:8.2f} {best:8.1f} "
                      f"{rate * base:11.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
