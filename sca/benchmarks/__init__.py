"""Benchmarks: for each environment that has one, its task set and its scorer (:mod:`sca.benchmarks.base`).

* ``calculation``, ``web_browsing``: M3ToolEval (:mod:`sca.benchmarks.m3`): our held-out task sets
  scored by the tolerant comparison, or the official tasks of a CodeAct checkout;
* ``retail``, ``airline``: TauBench (:mod:`sca.benchmarks.tau2`): tau2's tasks, scored by tau2's own
  evaluator.

The registry maps an environment's name to its benchmark, in the order ``sca eval --env all`` runs
them; another package adds one through the entry-point group ``sca.benchmarks``
(``name = "pkg.module:BENCHMARK"``, a :class:`~sca.benchmarks.base.Benchmark`). Nothing here is
imported before it is asked for: the benchmark modules load on first use.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

from sca.benchmarks.base import Benchmark, BenchmarkTask

__all__ = ["Benchmark", "BenchmarkTask", "UnknownBenchmarkError", "benchmark", "benchmark_names",
           "checkout_benchmark_names", "find_benchmark"]

ENTRY_POINT_GROUP = "sca.benchmarks"
#: environment -> (module, attribute) of its benchmark, in the order `sca eval --env all` runs them
BUILTIN = {
    "calculation": ("sca.benchmarks.m3.benchmark", "CALCULATION"),
    "web_browsing": ("sca.benchmarks.m3.benchmark", "WEB_BROWSING"),
    "retail": ("sca.benchmarks.tau2", "RETAIL"),
    "airline": ("sca.benchmarks.tau2", "AIRLINE"),
}


class UnknownBenchmarkError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, object]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN}


def benchmark_names() -> list[str]:
    """The environments with a benchmark: the built-in ones, then the plug-ins'."""
    return list(BUILTIN) + sorted(_entry_points())


def find_benchmark(env: str) -> Benchmark | None:
    """The benchmark of environment `env`, or None if it has none."""
    if env in BUILTIN:
        module, attribute = BUILTIN[env]
        return getattr(importlib.import_module(module), attribute)
    plugin = _entry_points().get(env)
    if plugin is None:
        return None
    found = plugin.load()  # type: ignore[attr-defined]
    if not isinstance(found, Benchmark):
        raise TypeError(f"the benchmark entry point {env!r} names a {type(found).__name__}, not a Benchmark")
    return found


def benchmark(env: str) -> Benchmark:
    """The benchmark of environment `env`; :class:`UnknownBenchmarkError` if it has none."""
    found = find_benchmark(env)
    if found is None:
        raise UnknownBenchmarkError(f"no benchmark for {env} (environments with one: {', '.join(benchmark_names())})")
    return found


def checkout_benchmark_names() -> list[str]:
    """The environments whose benchmark can take the official tasks of a CodeAct checkout."""
    return [name for name in benchmark_names() if benchmark(name).takes_checkout]
