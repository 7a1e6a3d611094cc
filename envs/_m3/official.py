"""Load the official M3ToolEval tasks from a user's own checkout of the CodeAct repository.

M3ToolEval (``scripts/eval/m3tooleval/`` in github.com/xingyaoww/code-act)
keeps its tasks in Python modules under ``tasks/impl/``: one per domain
(``message_decoder.py``, ``dna_sequencer.py``, ``trade_calculator.py``,
``travel_itinerary_planning.py``) and a package ``web_browsing/`` whose
``__init__.py`` builds its tasks from ``metadata.json`` and browses the pages
of ``web_pages.jsonl``. Each task is a ``Task(name=..., tools=...,
instruction=..., expected_output=..., ...)`` call, and most expected outputs
are computed by calling the domain's tools.

We never import those modules. :mod:`envs._m3.restricted` walks their syntax
trees with a bounded interpreter in which the domain's tool functions are
replaced by our own environments' tools (same semantics, see
:mod:`envs.calculation`), the benchmark's classes by inert records, and
``open`` by a reader of files inside the checkout. So the gold answers are
the ones our tools produce, and a file that tries anything else fails to load.

Each task maps to one of our environments: the four computation domains to
``calculation`` (travel tasks with the official flight and hotel table), web
browsing to ``web_browsing`` over the official pages. Build the matching
environment with :func:`make_env`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from envs._m3.restricted import HostFile, HostNamespace, Interpreter, RestrictedError, Unavailable
from envs._m3.scoring import evaluation_source
from envs.base import BenchmarkTask, Environment, ToolError

__all__ = ["OfficialTaskError", "DOMAIN_FILES", "find_impl_dir", "load_official_tasks", "make_env"]

#: our domain name -> (module path under tasks/impl, our environment)
DOMAIN_FILES: dict[str, tuple[str, str]] = {
    "message_decoder": ("message_decoder.py", "calculation"),
    "dna_sequencer": ("dna_sequencer.py", "calculation"),
    "trade_calculator": ("trade_calculator.py", "calculation"),
    "travel_itinerary_planning": ("travel_itinerary_planning.py", "calculation"),
    "web_browsing": ("web_browsing/__init__.py", "web_browsing"),
}
_TASK_FIELDS = ("name", "tools", "instruction", "expected_output", "is_single_tool_task")
_MAX_FILE_BYTES = 5_000_000


class OfficialTaskError(Exception):
    """The checkout's task files could not be found or read."""


def find_impl_dir(root: str | Path) -> Path:
    """The ``tasks/impl`` folder of M3ToolEval, given the CodeAct checkout, ``m3tooleval/`` or ``tasks/``."""
    root = Path(root).expanduser().resolve()
    for candidate in (root / "scripts" / "eval" / "m3tooleval" / "tasks" / "impl",
                      root / "tasks" / "impl", root / "impl", root):
        if any((candidate / rel).is_file() for rel, _ in DOMAIN_FILES.values()):
            return candidate
    raise OfficialTaskError(f"no M3ToolEval task files under {root} "
                            "(expected scripts/eval/m3tooleval/tasks/impl/ of a CodeAct checkout)")


def load_official_tasks(m3tooleval_dir: str | Path, domains: list[str] | None = None) -> list[BenchmarkTask]:
    """The official M3ToolEval tasks found in `m3tooleval_dir`, as our benchmark tasks (split "test").

    `m3tooleval_dir` may be the CodeAct checkout, its ``scripts/eval/m3tooleval``
    or that folder's ``tasks``. Each task's ``data`` holds ``answer`` (the
    expected output, JSON values), ``domain``, ``env`` (``calculation`` or
    ``web_browsing``), ``env_config`` (what :func:`make_env` needs),
    ``official_name`` and ``evaluation_function``. Domains whose file is missing
    are skipped; a file that cannot be interpreted raises :class:`OfficialTaskError`.
    """
    impl = find_impl_dir(m3tooleval_dir)
    tasks: list[BenchmarkTask] = []
    for domain, (rel, env_name) in DOMAIN_FILES.items():
        if domains is not None and domain not in domains:
            continue
        path = impl / rel
        if not path.is_file():
            continue
        records, env_config = _interpret(path, domain, impl)
        for record in records:
            name = str(record["name"])
            answer = _json_value(record["expected_output"], name)
            data = {
                "answer": answer, "domain": domain, "env": env_name, "env_config": env_config,
                "official_name": name, "source": "m3tooleval", "evaluation_function": evaluation_source(answer),
            }
            instruction = str(record["instruction"])
            tasks.append(BenchmarkTask(id=f"m3/{name}", split="test", instruction=instruction, data=data))
    return tasks


def make_env(task: BenchmarkTask) -> Environment:
    """A fresh environment in which official task `task` is solved."""
    return _build_env(task.data["env"], task.data.get("env_config") or {})


def _build_env(env_name: str, config: dict[str, Any]) -> Environment:
    if env_name == "calculation":
        from envs.calculation import CalculationEnv

        return CalculationEnv(travel=config.get("travel"))
    if env_name == "web_browsing":
        from envs.web_browsing import WebBrowsingEnv

        return WebBrowsingEnv(site=config.get("site"))
    raise OfficialTaskError(f"unknown environment {env_name!r}")


# -- interpretation of one task file --------------------------------------------------------


class _Record(dict):
    """What a stubbed class call (``Task(...)``, ``ToolType(...)``) returns: its arguments."""


def _interpret(path: Path, domain: str, impl: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    source = _read_text(path, impl)
    records: list[dict[str, Any]] = []
    env_config: dict[str, Any] = {}
    holder: dict[str, Any] = {}

    def task_stub(*args: Any, **kwargs: Any) -> _Record:
        record = _Record(zip(_TASK_FIELDS, args))
        record.update(kwargs)
        missing = [f for f in ("name", "instruction", "expected_output") if f not in record]
        if missing:
            raise RestrictedError(f"Task(...) without {', '.join(missing)}")
        records.append(record)
        return record

    def record_stub(*args: Any, **kwargs: Any) -> _Record:
        return _Record(kwargs, _args=list(args))

    def env() -> Environment:
        """Our environment for this file, built on first use (travel: from the file's own tables)."""
        if "env" not in holder:
            if domain == "travel_itinerary_planning":
                env_config["travel"] = _travel_tables(interp.globals.vars)
            elif domain == "web_browsing":
                env_config["site"] = _official_site(path.parent, impl)
            holder["env"] = _build_env(DOMAIN_FILES[domain][1], env_config)
        return holder["env"]

    def open_stub(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> HostFile:
        if not isinstance(file, str) or mode not in ("r", "rt"):
            raise RestrictedError("open() may only read a text file")
        return HostFile(_read_text(Path(file), impl))

    shims = {
        "os": HostNamespace("os", {"path": HostNamespace("os.path", {
            "join": lambda *parts: str(Path(*[str(p) for p in parts])),
            "dirname": lambda p: str(Path(str(p)).parent),
            "basename": lambda p: Path(str(p)).name,
        })}),
        "json": HostNamespace("json", {
            "loads": lambda text: json.loads(text),
            "load": _json_load,
        }),
    }
    base_names = {"Task": task_stub, "ToolType": record_stub, "register_task_iterator": lambda *a, **k: None}

    def resolve_import(module: str, name: str) -> Any:
        if not name:
            return shims.get(module, Unavailable(module))
        if name in base_names:
            return base_names[name]
        if module in shims:
            return Unavailable(f"{module}.{name}")
        return record_stub if module.endswith("base") else Unavailable(f"{module}.{name}")

    adapters = _tool_adapters(domain, env)
    host: dict[str, Any] = {"open": open_stub, "__file__": str(path), **base_names, **adapters}
    interp = Interpreter(host, filename=str(path), function_overrides=adapters,
                         class_factory=lambda _name: record_stub, import_resolver=resolve_import)
    try:
        interp.run(source)
        if domain in ("travel_itinerary_planning", "web_browsing"):
            env()  # records the environment's configuration even when no expected output called a tool
    except (RestrictedError, ValueError) as e:
        raise OfficialTaskError(f"cannot load {path.relative_to(impl)}: {e}") from None
    return records, env_config


def _json_load(file: Any) -> Any:
    if not isinstance(file, HostFile):
        raise RestrictedError("json.load() needs a file opened with open()")
    return json.loads(file.member("read")())


def _tool_adapters(domain: str, env: Callable[[], Environment]) -> dict[str, Callable[..., Any]]:
    """The domain's tools with M3ToolEval's Python signatures, calling our environment's tools."""

    def tool(name: str, *params: str, varargs: str | None = None) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if varargs is not None:
                fixed = list(args[:len(params)])
                payload = dict(zip(params, fixed))
                payload[varargs] = list(args[len(params):])
            else:
                if len(args) > len(params):
                    raise RestrictedError(f"{name}() takes {len(params)} arguments but {len(args)} were given")
                payload = dict(zip(params, args))
            payload.update(kwargs)
            try:
                return env().call(name, payload)
            except ToolError as e:
                raise RestrictedError(f"{name}: {e}") from None

        call.__name__ = name
        return call

    def find_max_nucleotide(*args: Any) -> tuple:
        return tuple(env().call("find_max_nucleotide", {"nucleotide_counts": list(args)}))

    def book_hotel(location: Any, *preferences: Any) -> Any:
        return env().call("book_hotel", {"location": location, "preferences": list(preferences)})

    calculator = tool("calculator", "expression")
    if domain == "message_decoder":
        return {
            "convert_hex_to_ascii": tool("convert_hex_to_ascii", "hex_string"),
            "reverse_string": tool("reverse_string", "string"),
            "caesar_decode": tool("caesar_decode", "message", "shift"),
            "string_length": tool("string_length", "string"),
            "minimum_value": tool("minimum_value", varargs="values"),
            "maximum_value": tool("maximum_value", varargs="values"),
        }
    if domain == "dna_sequencer":
        return {
            "count_nucleotides": tool("count_nucleotides", "dna_sequence"),
            "transcribe_dna_to_mrna": tool("transcribe_dna_to_mrna", "dna_sequence"),
            "translate_mrna_to_amino_acid": tool("translate_mrna_to_amino_acid", "mrna_sequence"),
            "find_max_nucleotide": find_max_nucleotide,
            "is_valid_dna_sequence": tool("is_valid_dna_sequence", "dna_sequence"),
            "reverse_transcribe_mrna_to_dna": tool("reverse_transcribe_mrna_to_dna", "mrna_sequence"),
        }
    if domain == "trade_calculator":
        return {
            "convert_currency": tool("convert_currency", "base_price", "conversion_rate"),
            "calculate_tariff": tool("calculate_tariff", "price", "tariff_rate"),
            "estimate_final_value": tool("estimate_final_value", "price", "tariff"),
            "calculator": calculator,
            "find_minimum": tool("minimum_value", varargs="values"),
            "find_maximum": tool("maximum_value", varargs="values"),
        }
    if domain == "travel_itinerary_planning":
        return {
            "find_flights": tool("find_flights", "from_location", "to_location", "date"),
            "book_hotel": book_hotel,
            "budget_calculator": tool("budget_calculator", "flight_price", "hotel_price_per_night", "num_nights"),
        }
    if domain == "web_browsing":
        return {"calculator": calculator}
    raise OfficialTaskError(f"unknown domain {domain!r}")


def _travel_tables(names: dict[str, Any]) -> dict[str, Any]:
    """The file's ``flights`` and ``hotels`` tables, with M3ToolEval's quoted location names unquoted."""
    flights, hotels = names.get("flights"), names.get("hotels")
    if not isinstance(flights, list) or not isinstance(hotels, list):
        raise RestrictedError("the travel file defines no 'flights' and 'hotels' lists")

    def unquote(value: Any) -> Any:
        return value.strip().strip('"').strip("'") if isinstance(value, str) else value

    return {
        "flights": [{k: unquote(v) if k in ("from_location", "to_location") else v for k, v in f.items()}
                    for f in flights],
        "hotels": [{k: unquote(v) if k == "location" else v for k, v in h.items()} for h in hotels],
    }


def _official_site(folder: Path, impl: Path) -> dict[str, Any]:
    from envs.web_browsing import site_from_m3_pages

    text = _read_text(folder / "web_pages.jsonl", impl)
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return site_from_m3_pages(records, landing="/")


def _read_text(path: Path, root: Path) -> str:
    """A text file inside `root` (the checkout's task folder), never outside it."""
    resolved = path.resolve()
    allowed = root.resolve().parent  # tasks/, which holds impl/ and base.py
    if allowed != resolved and allowed not in resolved.parents:
        raise RestrictedError(f"reading {path} is not allowed: outside {allowed}")
    if not resolved.is_file():
        raise RestrictedError(f"no file {path}")
    if resolved.stat().st_size > _MAX_FILE_BYTES:
        raise RestrictedError(f"{path} is too large")
    return resolved.read_text(encoding="utf-8")


def _json_value(value: Any, name: str) -> Any:
    """The expected output as JSON values (tuples become lists)."""
    if isinstance(value, (str, bool, int, type(None))):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise OfficialTaskError(f"task {name}: expected output {value!r} is not a finite number")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v, name) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v, name) for k, v in value.items()}
    raise OfficialTaskError(f"task {name}: expected output of type {type(value).__name__} is not plain data")
