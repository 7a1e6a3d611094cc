"""Validation throughput of `sca validate`, per sandbox backend, against the obvious implementation.

Builds a few hundred valid retail CaT tasks (one per pending order: cancel it
for a given reason, three failure cases), validates them with each backend
(warm workers, one per core) and prints validations/s. The baseline, measured
in the same run on a sample of the same tasks, is what one would write first:
a fresh Python process for each run of a task's code, which imports the
environment, executes the code with the tools bound directly, then evaluate.

    python bench/validate.py [--tasks 300] [--baseline-tasks 4] [--backends bwrap,docker,subprocess]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_tasks(n: int) -> list[dict]:
    from envs import make_env

    env = make_env("retail")
    pending = [oid for oid, o in env.db.orders.items() if o.status == "pending"][:n]
    tasks = []
    for i, oid in enumerate(pending):
        reason = "no longer needed" if i % 2 else "ordered by mistake"
        other = "ordered by mistake" if i % 2 else "no longer needed"
        tasks.append({
            "id": f"bench-{i:04d}", "env": "retail",
            "instruction": f"Cancel order {oid}: {reason}.",
            "evaluation_function": (
                f"def evaluate():\n    o = get_order_details(order_id={oid!r})\n"
                f"    return o['status'] == 'cancelled' and o.get('cancel_reason') == {reason!r}\n"),
            "solution": f"cancel_pending_order(order_id={oid!r}, reason={reason!r})\n",
            "failure_cases": [
                f"cancel_pending_order(order_id={oid!r}, reason={other!r})\n",
                f"get_order_details(order_id={oid!r})\n",
                f"cancel_pending_order(order_id={oid!r}, reason='too expensive')\n",
            ],
        })
    return tasks


# -- the baseline: a fresh process per run ------------------------------------------------------
BASELINE_CHILD = r"""
import inspect, json, sys
sys.path.insert(0, sys.argv[1])
from envs import ToolError, make_env
job = json.load(sys.stdin)
env = make_env("retail")
def tool(name):
    def call(*args, **kwargs):
        params = env.tool(name).param_names
        kwargs.update(dict(zip(params, args)))
        return env.call(name, kwargs)
    return call
def namespace(read_only=False):
    ns = {t.name: tool(t.name) for t in env.tools()}
    ns["ToolError"] = ToolError
    return ns
answer = None
if job["code"] is not None:
    ns = namespace()
    try:
        exec(job["code"], ns)
        status = "ok"
    except ToolError:
        status = "tool_error"
    except Exception:
        status = "error"
    answer = ns.get("answer")
else:
    status = "ok"
ns = namespace()
exec(job["evaluate"], ns)
fn = ns["evaluate"]
value = fn(answer) if len(inspect.signature(fn).parameters) == 1 else fn()
print(json.dumps({"status": status, "value": value}))
"""


def baseline_validate(task: dict) -> bool:
    def run(code: str | None) -> dict:
        p = subprocess.run([sys.executable, "-c", BASELINE_CHILD, str(ROOT)], capture_output=True, text=True,
                           input=json.dumps({"code": code, "evaluate": task["evaluation_function"]}), check=True)
        return json.loads(p.stdout.strip().splitlines()[-1])

    if run(None)["value"] is not False:
        return False
    r = run(task["solution"])
    if r["status"] != "ok" or r["value"] is not True:
        return False
    for src in task["failure_cases"]:
        r = run(src)
        if r["status"] == "error" or r["value"] is not False:
            return False
    return True


def bench_backend(backend: str, tasks: list[dict], workers: int) -> tuple[float, int] | str:
    from sandbox import Sandbox, SandboxUnavailable
    from sandbox.config import SandboxConfig
    from sca.cat import ValidateConfig
    from stages.validate import validate_records

    cfg = ValidateConfig(SandboxConfig(backend=backend, workers=workers))
    try:
        sb = Sandbox(SandboxConfig(backend=backend, workers=workers))
    except SandboxUnavailable as e:
        return f"unavailable: {e}"
    with sb:
        validate_records(tasks[: workers * 2], cfg, sb, lambda r: None)  # warm every worker
        valid = 0
        t0 = time.perf_counter()

        def done(r: dict) -> None:
            nonlocal valid
            valid += r["validation"]["valid"]

        validate_records(tasks, cfg, sb, done)
        return time.perf_counter() - t0, valid


def main() -> None:
    import warnings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--baseline-tasks", type=int, default=4)
    ap.add_argument("--backends", default="bwrap,docker,subprocess")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    tasks = make_tasks(args.tasks)
    print(f"{len(tasks)} valid retail CaT tasks, 3 failure cases each (9 sandbox runs per task); "
          f"{args.workers} workers, {os.cpu_count()} cores\n")

    t0 = time.perf_counter()
    ok = sum(baseline_validate(t) for t in tasks[: args.baseline_tasks])
    base_rate = args.baseline_tasks / (time.perf_counter() - t0)
    assert ok == args.baseline_tasks, "the baseline must accept these valid tasks"
    print(f"{'baseline: fresh process per run':34s} {base_rate:9.2f} validations/s  (on {args.baseline_tasks} tasks)")

    for backend in args.backends.split(","):
        res = bench_backend(backend, tasks, args.workers)
        if isinstance(res, str):
            print(f"{backend:34s} {res}")
            continue
        seconds, valid = res
        rate = len(tasks) / seconds
        flag = "" if valid == len(tasks) else f"  ({len(tasks) - valid} wrongly rejected!)"
        print(f"{backend:34s} {rate:9.2f} validations/s  {rate / base_rate:7.1f}x baseline{flag}")
    print("\ngoal on a 2-core machine: bwrap >= 50 validations/s and >= 100x the baseline")


if __name__ == "__main__":
    main()
