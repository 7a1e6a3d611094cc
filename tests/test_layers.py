"""The house plan, checked: the import graph has no loop and no upward edge, the program that runs
inside the sandbox needs nothing but the standard library, and no source file is too long to read.

Layers, lowest first (a module may import its own layer and those below, never one above):

    sandbox            the sandbox (sandbox.runner: the in-sandbox program, standard library only)
    envs               the environments
    sca.records, sca.metrics, sca.paper, sca     records between stages; numbers
    sca.inference      model backends
    sca.agent          the engine, the reply format, the executor, the user, the challenger
    sca.cat, sca.benchmarks                      the CaT checks; benchmarks and their scorers
    sca.training, sca.report                     training; reports
    stages             one thin orchestrator per stage
    sca_cli            the command line

Imports inside functions count as much as those at the top: a lazy import of a higher layer is
still the lower layer depending on the higher one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sandbox", "envs", "sca", "stages", "sca_cli")
#: (module prefix, layer); the longest matching prefix decides
LAYERS = (("sandbox", 0), ("envs", 1), ("sca", 2), ("sca.records", 2), ("sca.metrics", 2), ("sca.paper", 2),
          ("sca.inference", 3), ("sca.agent", 4), ("sca.cat", 5), ("sca.audit", 5), ("sca.benchmarks", 5), ("sca.training", 6),
          ("sca.report", 6), ("stages", 7), ("sca_cli", 8))
#: longest a source file outside tests/ and bench/ may be
MAX_LINES = 800


def modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports, anywhere in it (relative imports resolved). `from p import x`
    is an import of ``p.x`` when that is a module, else of ``p``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def layer(name: str) -> int:
    best = max((p for p, _ in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return dict(LAYERS)[best]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in sorted(g):
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_module_imports_another_that_imports_it_back():
    assert cycles(graph()) == []


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, targets in sorted(graph().items()) for b in sorted(targets) if layer(b) > layer(a)]
    assert upward == [], "\n".join(upward)


def test_the_program_inside_the_sandbox_needs_the_standard_library_only():
    runner = [name for name in modules() if name == "sandbox.runner" or name.startswith("sandbox.runner.")]
    assert runner, "the in-sandbox program is sandbox/runner"
    outside = []
    for name in runner:
        path = modules()[name]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for mod in names:
                top = mod.split(".")[0]
                if top and top not in sys.stdlib_module_names:
                    outside.append(f"{name} imports {mod}")
    assert outside == [], outside


def test_no_source_file_is_too_long_to_read():
    long = {str(p.relative_to(ROOT)): n for p in modules().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"over {MAX_LINES} lines: {long}"


def test_the_checks_see_what_they_check():
    """The checker itself: a loop, an upward edge and a relative import are found where they are."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("sca.agent.executor") == 4 and layer("sca.records.io") == 2 and layer("sca") == 2
    g = graph()
    assert "sca.records.io" in g["sca.records.stage_run"]
