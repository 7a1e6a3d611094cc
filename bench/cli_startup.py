"""How long `sca --help` takes, against a bare `python -c pass`, in the same run.

The CLI must not import torch, transformers, trl, vllm or tau2 to print its
help; goal: at most 3x a bare interpreter start. Also checks which heavy
modules `sca --help` imported (none should be).

    python bench/cli_startup.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "transformers", "trl", "vllm", "tau2", "docker", "httpx")


def timed(cmd: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return times


def heavy_imports() -> list[str]:
    probe = (
        "import sys; sys.argv=['sca','--help']\n"
        "from sca_cli.app import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    line = [x for x in out.splitlines() if x.startswith("HEAVY=")][-1]
    return [m for m in line[len("HEAVY="):].split(",") if m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    base = timed([sys.executable, "-c", "pass"], args.repeat)
    sca = timed([sys.executable, "-m", "sca_cli.app", "--help"], args.repeat)
    b, s = statistics.median(base), statistics.median(sca)
    print(f"python -c pass   median {b * 1000:7.1f} ms  (min {min(base) * 1000:.1f})")
    print(f"sca --help       median {s * 1000:7.1f} ms  (min {min(sca) * 1000:.1f})")
    print(f"ratio            {s / b:.2f}x   (goal <= 3x)")
    heavy = heavy_imports()
    print(f"heavy modules imported by --help: {', '.join(heavy) if heavy else 'none'}")


if __name__ == "__main__":
    main()
