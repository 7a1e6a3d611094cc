#!/usr/bin/env python3
"""Test the tests: break the code once per promise and see a test fail.

Each mutant in ``mutants.toml`` (beside this file) names a ``file``, an exact snippet ``old`` that
occurs exactly once in it, the realistic break ``new`` that replaces it, the ``tests`` that should
catch it (pytest node ids, or ``file.py -k expr`` selections), and ``why`` (the behaviour it breaks).
For each mutant this script writes the break, runs the tests
(``python -m pytest <selection> -x -q -p no:cacheprovider``, each selection under the mutant's
timeout), and restores the file, always (``try``/``finally``, then checks that its bytes are the
original ones). A mutant is

* ``killed``: a selected test failed (or the run passed its timeout: a hang is a failure too);
* ``survived``: every selected test passed: no test holds the promise;
* ``broken``: ``old`` does not occur exactly once in the file (the code moved: fix the mutant);
* ``error``: the tests could not say (a selection that collects nothing, every test skipped, a usage
  error): fix the selection, or run where its backend is available.

The kill rate is killed / (killed + survived).

By default the audit runs on a private copy of the working tree (``--workdir``, default a fresh
directory under the system's temporary directory, removed at the end): the mutated file is never
the one other people run their tests on. ``--in-place`` mutates the working tree itself (still one
mutant at a time, always restored). Standard library only; run it with the project's interpreter::

    python tests/mutants/audit.py                 # every mutant
    python tests/mutants/audit.py --list          # name, file and why of each
    python tests/mutants/audit.py --only NAME     # one mutant (repeat, or a comma list, for more)
    python tests/mutants/audit.py --baseline      # first run every selection unmutated: all must pass
    python tests/mutants/audit.py --json out.json # the results as JSON too
    python tests/mutants/audit.py --check         # only check that every mutant applies and compiles

Each pytest run gets ``PYTHONDONTWRITEBYTECODE=1`` (no bytecode of a mutant is cached, so none is
ever read back after the restore) and the tree on ``PYTHONPATH`` (subprocesses the tests start import
the mutated tree too). A mutant of ``sandbox/runner/`` is checked on bwrap, which binds the tree's
runner: a docker worker refuses a runner other than its image's.

To measure an older test suite against the same mutants, extract it (``git archive REV | tar -x -C
DIR``), copy this directory into ``DIR/tests/mutants`` and run ``python DIR/tests/mutants/audit.py
--in-place`` there: selections that name tests the older suite lacks end as ``error``.

Not a test module: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_TOML = HERE / "mutants.toml"
PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider"]
#: what the copy of the working tree leaves out: version control, environments, caches
_SKIP_COPY = shutil.ignore_patterns(".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info",
                                    ".mypy_cache", ".ruff_cache")
_REQUIRED = ("name", "file", "old", "new", "tests", "why")


@dataclass
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: list[str]
    why: str
    timeout: float | None = None


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed | survived | broken | error
    detail: str = ""
    seconds: float = 0.0
    runs: list[dict] = field(default_factory=list)


class RestoreFailed(RuntimeError):
    """A mutated file could not be put back byte for byte: stop everything."""


# --------------------------------------------------------------------------- the mutants
def load_mutants(path: Path) -> list[Mutant]:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    out, seen = [], set()
    for i, raw in enumerate(data.get("mutant", [])):
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise SystemExit(f"{path}: mutant #{i + 1} ({raw.get('name', '?')}) lacks {', '.join(missing)}")
        unknown = set(raw) - set(_REQUIRED) - {"timeout"}
        if unknown:
            raise SystemExit(f"{path}: mutant {raw['name']} has unknown keys {', '.join(sorted(unknown))}")
        if raw["name"] in seen:
            raise SystemExit(f"{path}: two mutants are named {raw['name']}")
        seen.add(raw["name"])
        tests = raw["tests"]
        if isinstance(tests, str):
            tests = [tests]
        if not tests or not all(isinstance(t, str) and t.strip() for t in tests):
            raise SystemExit(f"{path}: mutant {raw['name']} names no test")
        if raw["old"] == raw["new"]:
            raise SystemExit(f"{path}: mutant {raw['name']} changes nothing")
        out.append(Mutant(raw["name"], raw["file"], raw["old"], raw["new"], list(tests), raw["why"],
                          raw.get("timeout")))
    return out


def invocations(tests: list[str]) -> list[list[str]]:
    """The pytest argument lists for a mutant's selections: the plain node ids together in one run,
    each selection with options (``-k``, ``-m``) in a run of its own."""
    plain, own = [], []
    for selection in tests:
        args = shlex.split(selection)
        if any(a.startswith("-") for a in args):
            own.append(args)
        else:
            plain += args
    return ([plain] if plain else []) + own


# --------------------------------------------------------------------------- running pytest
def _environment(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no bytecode of a mutant is ever cached (nor read back later)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])  # subprocesses too
    return env


def run_pytest(root: Path, args: list[str], timeout: float) -> dict:
    """One pytest run in `root`: its exit code (None past the timeout), counts and the output's tail."""
    cmd = [sys.executable, "-m", "pytest", *args, *PYTEST_ARGS]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=root, env=_environment(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        code = None
    except BaseException:
        _kill_group(proc)
        proc.communicate()
        raise
    text = out.decode("utf-8", "replace")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", text)}
    return {"args": args, "code": code, "seconds": round(time.monotonic() - t0, 1), "counts": counts,
            "tail": text[-3000:]}


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def judge(runs: list[dict]) -> tuple[str, str]:
    """(status, detail) of a mutant from its pytest runs (the last one decides: they stop at a kill)."""
    last = runs[-1]
    code = last["code"]
    where = " ".join(last["args"])
    if code is None:
        return "killed", f"timeout in {where}"
    if code == 1:
        return "killed", _first_failure(last["tail"]) or f"failed: {where}"
    if code == 0:
        if not any(r["counts"].get("passed") for r in runs):
            return "error", "no selected test ran (all skipped?)"
        return "survived", ""
    if code == 5:
        return "error", f"no test collected by {where}"
    return "error", f"pytest exit code {code} for {where}: {last['tail'][-300:]}"


def _first_failure(tail: str) -> str:
    m = re.search(r"^(?:FAILED|ERROR) (\S+)", tail, re.M)
    return m.group(1) if m else ""


# --------------------------------------------------------------------------- one mutant
def apply_and_test(root: Path, mutant: Mutant, timeout: float) -> Outcome:
    path = root / mutant.file
    t0 = time.monotonic()
    try:
        original = path.read_bytes()
        stat = path.stat()
    except OSError as e:
        return Outcome(mutant, "broken", f"cannot read {mutant.file}: {e}")
    text = original.decode("utf-8")
    found = text.count(mutant.old)
    if found != 1:
        return Outcome(mutant, "broken", f"the old snippet occurs {found} times in {mutant.file}")
    mutated = text.replace(mutant.old, mutant.new, 1).encode("utf-8")
    runs: list[dict] = []
    try:
        path.write_bytes(mutated)
        for args in invocations(mutant.tests):
            run = run_pytest(root, args, mutant.timeout or timeout)
            runs.append(run)
            if run["code"] != 0:
                break
    finally:
        restore(path, original, stat)
    status, detail = judge(runs)
    return Outcome(mutant, status, detail, round(time.monotonic() - t0, 1), runs)


def restore(path: Path, original: bytes, stat: os.stat_result) -> None:
    """Put `path` back byte for byte (and its times, so caches of the original stay valid); raise
    RestoreFailed if its bytes differ after."""
    for _ in range(3):
        try:
            path.write_bytes(original)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        except OSError:
            time.sleep(0.5)
            continue
        if path.read_bytes() == original:
            return
    raise RestoreFailed(f"{path} could not be restored: its bytes differ from the original")


# --------------------------------------------------------------------------- the report
def table(outcomes: list[Outcome]) -> str:
    width = max([len(o.mutant.name) for o in outcomes] + [6])
    lines = [f"{'mutant':<{width}}  {'status':<8}  {'secs':>6}  detail", "-" * (width + 40)]
    for o in outcomes:
        lines.append(f"{o.mutant.name:<{width}}  {o.status:<8}  {o.seconds:>6.1f}  {o.detail[:100]}")
    return "\n".join(lines)


def summary(outcomes: list[Outcome], seconds: float) -> str:
    count = {s: sum(o.status == s for o in outcomes) for s in ("killed", "survived", "broken", "error")}
    judged = count["killed"] + count["survived"]
    rate = f"{100 * count['killed'] / judged:.1f}%" if judged else "n/a"
    lines = [f"{len(outcomes)} mutants: {count['killed']} killed, {count['survived']} survived, "
             f"{count['broken']} broken, {count['error']} error; kill rate {rate} "
             f"({count['killed']}/{judged}); {seconds / 60:.1f} min"]
    for status in ("survived", "broken", "error"):
        for o in outcomes:
            if o.status == status:
                lines.append(f"  {status}: {o.mutant.name} ({o.mutant.file}): {o.mutant.why}"
                             + (f" [{o.detail}]" if o.detail else ""))
    return "\n".join(lines)


def baseline(root: Path, mutants: list[Mutant], timeout: float) -> bool:
    """Run every distinct selection unmutated: all must pass, or the mutants' results mean nothing."""
    seen, ok = set(), True
    for m in mutants:
        for args in invocations(m.tests):
            key = tuple(args)
            if key in seen:
                continue
            seen.add(key)
            run = run_pytest(root, args, m.timeout or timeout)
            good = run["code"] == 0 and run["counts"].get("passed")
            print(f"baseline {'ok  ' if good else 'FAIL'} {run['seconds']:>6.1f}s  {' '.join(args)}", flush=True)
            if not good:
                ok = False
                print(run["tail"][-1500:], flush=True)
    return ok


def check(mutants: list[Mutant]) -> int:
    """Whether every mutant applies to the working tree (its snippet once) and its mutated Python
    compiles; nothing is written."""
    bad = 0
    for m in mutants:
        path = REPO / m.file
        try:
            text = path.read_text("utf-8")
        except OSError as e:
            print(f"broken   {m.name}: cannot read {m.file}: {e}")
            bad += 1
            continue
        found = text.count(m.old)
        if found != 1:
            print(f"broken   {m.name}: the old snippet occurs {found} times in {m.file}")
            bad += 1
            continue
        if path.suffix == ".py":
            try:
                compile(text.replace(m.old, m.new, 1), str(path), "exec")
            except SyntaxError as e:
                print(f"invalid  {m.name}: the mutated {m.file} does not compile: {e}")
                bad += 1
    print(f"{len(mutants)} mutants, {bad} with problems")
    return 1 if bad else 0


# --------------------------------------------------------------------------- main
def _copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, ignore=_SKIP_COPY, symlinks=True, dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--toml", type=Path, default=DEFAULT_TOML, help="the mutants (default: mutants.toml beside this)")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only this mutant (repeat, or comma-separate, for several)")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run of a mutant (default 600)")
    p.add_argument("--in-place", action="store_true", help="mutate the working tree itself, not a private copy")
    p.add_argument("--workdir", type=Path, help="where to copy the working tree (kept; default: a temporary one)")
    p.add_argument("--baseline", action="store_true", help="run every selection unmutated first; stop unless all pass")
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    p.add_argument("--check", action="store_true",
                   help="only check that each mutant's snippet occurs once and the mutated file compiles")
    args = p.parse_args(argv)

    mutants = load_mutants(args.toml)
    if args.list:
        for m in mutants:
            print(f"{m.name}  [{m.file}]  {m.why}")
        print(f"{len(mutants)} mutants")
        return 0
    wanted = {n.strip() for spec in args.only for n in spec.split(",") if n.strip()}
    if wanted:
        unknown = wanted - {m.name for m in mutants}
        if unknown:
            raise SystemExit(f"no mutant named {', '.join(sorted(unknown))}")
        mutants = [m for m in mutants if m.name in wanted]

    if args.check:
        return check(mutants)

    # SIGTERM and SIGHUP unwind like Ctrl-C, so the finally that restores the file always runs
    def _stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)

    temp = None
    if args.in_place:
        root = REPO
    else:
        if args.workdir:
            root = args.workdir.resolve()
        else:
            temp = root = Path(tempfile.mkdtemp(prefix="sca-mutants-"))
        _copy_tree(REPO, root)
        print(f"working on a copy of {REPO} in {root}", flush=True)
    started = time.monotonic()
    outcomes: list[Outcome] = []
    try:
        if args.baseline and not baseline(root, mutants, args.timeout):
            print("baseline failed: fix the selections (or the tree) first", flush=True)
            return 2
        for i, m in enumerate(mutants, 1):
            print(f"[{i}/{len(mutants)}] {m.name} ({m.file}) ...", end=" ", flush=True)
            o = apply_and_test(root, m, args.timeout)
            outcomes.append(o)
            print(f"{o.status} in {o.seconds:.1f}s" + (f": {o.detail[:120]}" if o.detail else ""), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: every file is restored; results so far:", flush=True)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    elapsed = time.monotonic() - started
    if outcomes:
        print()
        print(table(outcomes))
        print()
        print(summary(outcomes, elapsed))
    if args.json:
        args.json.write_text(json.dumps([{"name": o.mutant.name, "file": o.mutant.file, "status": o.status,
                                          "detail": o.detail, "seconds": o.seconds, "why": o.mutant.why,
                                          "runs": [{k: r[k] for k in ("args", "code", "seconds", "counts")}
                                                   for r in o.runs],
                                          "tail": o.runs[-1]["tail"][-1500:] if o.runs else ""}
                                         for o in outcomes], indent=2) + "\n")
    return 0 if all(o.status == "killed" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
