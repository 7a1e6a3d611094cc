"""Audit throughput of `sca audit`: tasks audited per second, and mutant runs per second.

Builds retail tasks (one per pending order: cancel it for a given reason, then change the
order's address with a second write, so that every kind of mutant applies), half of them with a
lax verifier (it checks the status only), half tight (it checks the reason and the address too),
audits them with warm workers (one per core by default) and prints the rates and the lax rate,
which must be about one half.

    python bench/audit.py [--tasks 100] [--backend bwrap] [--workers N] [--max-mutants 40]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
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
        reason = "no longer needed" if i % 4 < 2 else "ordered by mistake"
        address = "address1='1 Main St', address2='', city='Austin', state='TX', country='USA', zip='73301'"
        check = "o['status'] == 'cancelled'" if i % 2 else (
            f"o['status'] == 'cancelled' and o.get('cancel_reason') == {reason!r} and "
            "o['address']['address1'] == '1 Main St'")
        tasks.append({
            "id": f"bench-{i:04d}", "env": "retail",
            "instruction": f"Change the address of order {oid} to 1 Main St, Austin, then cancel it: {reason}.",
            "evaluation_function": f"def evaluate():\n    o = get_order_details(order_id={oid!r})\n    return {check}\n",
            "solution": (f"modify_pending_order_address(order_id={oid!r}, {address})\n"
                         f"cancel_pending_order(order_id={oid!r}, reason={reason!r})\n"),
            "failure_cases": ["pass\n"] * 3,
        })
    return tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--backend", default="bwrap")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--max-mutants", type=int, default=40)
    args = ap.parse_args()

    from sandbox.config import SandboxConfig
    from sca.audit.config import AuditConfig
    from sca.cat import ValidateConfig
    from stages.audit import audit_file
    from stages.validate import validate_file

    tasks = make_tasks(args.tasks)
    sandbox = SandboxConfig(backend=args.backend).with_(workers=args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp, "tasks.jsonl"), Path(tmp, "out.jsonl")
        src.write_text("".join(json.dumps(t) + "\n" for t in tasks))
        # the baseline, in the same run on the same tasks and workers: sca validate's six CaT checks
        vstarted = time.monotonic()
        validate_file(str(src), str(Path(tmp, "valid.jsonl")), config=ValidateConfig(sandbox, min_failure_cases=0),
                      show_progress=False)
        vseconds = time.monotonic() - vstarted
        started = time.monotonic()
        summary = audit_file(str(src), str(out), config=AuditConfig(sandbox, max_mutants=args.max_mutants),
                             show_progress=False)
        seconds = time.monotonic() - started
        audits = [json.loads(line)["audit"] for line in out.read_text().splitlines()]
    runs = sum(a.get("tried", 0) for a in audits)
    lax = summary.rates["all"]["lax_rate"]
    print(f"{len(tasks)} tasks, {runs} mutant runs, {sandbox.workers} workers ({summary.sandbox}): "
          f"{len(tasks) / seconds:.2f} tasks/s, {runs / seconds:.1f} mutant runs/s; "
          f"lax rate {lax[0]:.2f} [{lax[1]:.2f}, {lax[2]:.2f}] (expected 0.5)")
    print(f"baseline, sca validate on the same tasks: {len(tasks) / vseconds:.2f} tasks/s; an audit costs "
          f"{seconds / vseconds:.1f} validations")


if __name__ == "__main__":
    main()
