"""A small, bounded interpreter for the task files of M3ToolEval (and nothing else).

The official task modules compute their expected outputs in Python (calls to
the domain's tools, helper functions, comprehensions, loops over a JSON file).
Importing them would run a checkout's code with the user's rights; instead we
walk their syntax tree here, allowing only:

- literals, names, arithmetic, comparisons, boolean logic, conditional
  expressions, f-strings, subscripts, comprehensions, lambdas;
- ``def`` (plain functions), assignments, ``if``/``for``/``while``,
  ``return``/``break``/``continue``, ``with`` over a file opened by the host;
- calls to callables the host placed in the namespace, to a fixed set of pure
  built-ins (``len``, ``min``, ``sorted``, ...) and to functions defined in the
  file itself;
- attribute access only for a fixed list of methods of ``str``, ``list``,
  ``dict``, ``tuple`` and ``set``, and for the host's namespaces (never a name
  with underscores around it).

Anything else (imports of real modules, classes, ``getattr`` tricks, dunder
names, ``exec``) raises :class:`RestrictedError`. Work is bounded: a step
budget, and caps on the size of strings, lists and integers built.
"""

from __future__ import annotations

import ast
import operator
import re
from typing import Any, Callable

__all__ = ["RestrictedError", "Interpreter", "HostNamespace", "Unavailable"]

MAX_STEPS = 2_000_000
MAX_SIZE = 1_000_000
MAX_INT_BITS = 4096

_ALLOWED_METHODS: dict[type, frozenset[str]] = {
    str: frozenset({
        "join", "split", "rsplit", "strip", "lstrip", "rstrip", "lower", "upper", "title", "capitalize",
        "replace", "startswith", "endswith", "count", "find", "rfind", "index", "splitlines", "isdigit",
        "isalpha", "isalnum", "isupper", "islower", "isspace",
    }),
    list: frozenset({"append", "extend", "insert", "pop", "remove", "index", "count", "copy", "reverse", "sort"}),
    dict: frozenset({"get", "items", "keys", "values", "copy", "update", "setdefault", "pop"}),
    tuple: frozenset({"index", "count"}),
    set: frozenset({"add", "update", "union", "intersection", "difference", "issubset", "issuperset", "copy"}),
    frozenset: frozenset({"union", "intersection", "difference", "issubset", "issuperset"}),
}

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_CMPOPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}


class RestrictedError(Exception):
    """The file does something the interpreter does not allow, or its computation failed."""


class HostNamespace:
    """A read-only namespace of host values (e.g. a shim of ``os.path``) reachable by attribute."""

    def __init__(self, name: str, members: dict[str, Any]):
        self._name = name
        self._members = dict(members)

    def member(self, attr: str) -> Any:
        if attr not in self._members:
            raise RestrictedError(f"{self._name}.{attr} is not available")
        return self._members[attr]


class Unavailable:
    """A name the file imports that the host does not provide: any use of it is an error."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RestrictedError(f"{self.name} is not available to task files")


def _safe_range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_SIZE:
        raise RestrictedError("range too large")
    return r


def _safe_sum(iterable: Any, start: Any = 0) -> Any:
    items = list(iterable)
    if isinstance(start, (list, tuple, str)):
        total = len(start) + sum(len(x) for x in items if isinstance(x, (list, tuple, str)))
        if total > MAX_SIZE:
            raise RestrictedError("value too large")
    return sum(items, start)


def _checked_text(value: Any) -> None:
    """Refuse to render a container whose text would be too large (shared references included)."""
    budget, stack = MAX_SIZE // 10, [value]
    while stack:
        item = stack.pop()
        budget -= 1
        if budget < 0:
            raise RestrictedError("value too large to render as text")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, str) and len(item) > MAX_SIZE:
            raise RestrictedError("value too large to render as text")


def _safe_str(value: Any = "") -> str:
    _checked_text(value)
    return str(value)


def _no_print(*args: Any, **kwargs: Any) -> None:
    return None


SAFE_BUILTINS: dict[str, Any] = {
    "abs": abs, "all": all, "any": any, "bool": bool, "dict": dict, "enumerate": enumerate, "filter": filter,
    "float": float, "int": int, "len": len, "list": list, "map": map, "max": max, "min": min,
    "range": _safe_range, "reversed": reversed, "round": round, "set": set, "frozenset": frozenset,
    "sorted": sorted, "str": _safe_str, "sum": _safe_sum, "tuple": tuple, "zip": zip, "print": _no_print,
    "True": True, "False": False, "None": None,
}
_SAFE_CALLABLES = frozenset(id(v) for v in SAFE_BUILTINS.values() if callable(v))


class _Return(Exception):
    def __init__(self, value: Any):
        self.value = value


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _Scope:
    def __init__(self, parent: _Scope | None = None):
        self.vars: dict[str, Any] = {}
        self.parent = parent

    def lookup(self, name: str) -> Any:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.vars:
                return scope.vars[name]
            scope = scope.parent
        if name in SAFE_BUILTINS:
            return SAFE_BUILTINS[name]
        raise RestrictedError(f"name {name!r} is not defined")


class _Function:
    """A function or lambda defined in the interpreted file; callable from host built-ins too."""

    def __init__(self, interp: Interpreter, name: str, args: ast.arguments, body: list[ast.stmt] | ast.expr,
                 closure: _Scope, defaults: list[Any], kw_defaults: dict[str, Any]):
        self.interp, self.name, self.args, self.body = interp, name, args, body
        self.closure, self.defaults, self.kw_defaults = closure, defaults, kw_defaults

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        scope = _Scope(self.closure)
        scope.vars.update(self._bind(args, kwargs))
        if isinstance(self.body, ast.expr):
            return self.interp.eval(self.body, scope)
        try:
            self.interp.exec_block(self.body, scope)
        except _Return as r:
            return r.value
        return None

    def _bind(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        spec = self.args
        positional = [a.arg for a in spec.posonlyargs + spec.args]
        bound: dict[str, Any] = {}
        if len(args) > len(positional) and spec.vararg is None:
            raise RestrictedError(
                f"{self.name}() takes {len(positional)} positional arguments but {len(args)} were given")
        for name, value in zip(positional, args):
            bound[name] = value
        if spec.vararg is not None:
            bound[spec.vararg.arg] = tuple(args[len(positional):])
        extra: dict[str, Any] = {}
        for name, value in kwargs.items():
            if name in bound:
                raise RestrictedError(f"{self.name}() got multiple values for argument {name!r}")
            if name in positional or name in [a.arg for a in spec.kwonlyargs]:
                bound[name] = value
            elif spec.kwarg is not None:
                extra[name] = value
            else:
                raise RestrictedError(f"{self.name}() got an unexpected keyword argument {name!r}")
        first_default = len(positional) - len(self.defaults)
        for i, name in enumerate(positional):
            if name not in bound:
                if i >= first_default:
                    bound[name] = self.defaults[i - first_default]
                else:
                    raise RestrictedError(f"{self.name}() missing required argument {name!r}")
        for a in spec.kwonlyargs:
            if a.arg not in bound:
                if a.arg not in self.kw_defaults:
                    raise RestrictedError(f"{self.name}() missing keyword-only argument {a.arg!r}")
                bound[a.arg] = self.kw_defaults[a.arg]
        if spec.kwarg is not None:
            bound[spec.kwarg.arg] = extra
        return bound


class HostFile:
    """A text file the host opened for the interpreted code (used with ``with ... as f``)."""

    def __init__(self, text: str):
        self._text = text

    def member(self, attr: str) -> Any:
        if attr == "read":
            return lambda: self._text
        if attr == "readlines":
            return lambda: self._text.splitlines(keepends=True)
        raise RestrictedError(f"file.{attr} is not available")


class Interpreter:
    """Runs one module's syntax tree in a namespace of host values.

    `host` maps names to values the file may use (tool adapters, stubs for the
    benchmark's classes). `function_overrides` maps names of functions the file
    defines to host callables used instead of the file's own body (the
    domain's tools). `class_factory` gives the value bound to a ``class``
    statement's name (its body never runs).
    """

    def __init__(self, host: dict[str, Any], *, filename: str = "<task file>",
                 function_overrides: dict[str, Any] | None = None,
                 class_factory: Callable[[str], Any] | None = None,
                 import_resolver: Callable[[str, str], Any] | None = None,
                 max_steps: int = MAX_STEPS):
        self.globals = _Scope()
        self.globals.vars.update(host)
        self.filename = filename
        self.overrides = dict(function_overrides or {})
        self.class_factory = class_factory
        self.import_resolver = import_resolver
        self.max_steps = max_steps
        self.steps = 0
        self._keep: list[Any] = list(host.values()) + list(self.overrides.values())
        self._host_callables = {id(v) for v in self._keep if callable(v)}

    # -- entry point ------------------------------------------------------------
    def run(self, source: str) -> dict[str, Any]:
        """Run a whole module; its global names and values."""
        try:
            tree = ast.parse(source, filename=self.filename)
        except SyntaxError as e:
            raise RestrictedError(f"{self.filename}: {e}") from None
        for stmt in tree.body:
            try:
                self.exec(stmt, self.globals)
            except (_Return, _Break, _Continue):
                raise RestrictedError(
                    f"{self.filename}:{stmt.lineno}: return/break/continue outside a function or loop") from None
            except RestrictedError as e:
                if str(e).startswith(self.filename):
                    raise
                raise RestrictedError(f"{self.filename}:{getattr(stmt, 'lineno', '?')}: {e}") from None
            except RecursionError:
                raise RestrictedError(f"{self.filename}:{stmt.lineno}: nesting too deep") from None
            except Exception as e:  # an error of the file's own computation (KeyError, ValueError, ...)
                raise RestrictedError(f"{self.filename}:{stmt.lineno}: {type(e).__name__}: {e}") from None
        return dict(self.globals.vars)

    def _tick(self) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise RestrictedError(f"more than {self.max_steps} steps: computation too long")

    # -- statements -------------------------------------------------------------
    def exec_block(self, body: list[ast.stmt], scope: _Scope) -> None:
        for stmt in body:
            self.exec(stmt, scope)

    def exec(self, node: ast.stmt, scope: _Scope) -> None:
        self._tick()
        method = getattr(self, f"_exec_{type(node).__name__}", None)
        if method is None:
            raise RestrictedError(f"{type(node).__name__} statements are not allowed")
        method(node, scope)

    def _exec_Expr(self, node: ast.Expr, scope: _Scope) -> None:
        if isinstance(node.value, ast.Constant):  # docstrings
            return
        self.eval(node.value, scope)

    def _exec_Pass(self, node: ast.Pass, scope: _Scope) -> None:
        return None

    def _exec_Assign(self, node: ast.Assign, scope: _Scope) -> None:
        value = self.eval(node.value, scope)
        for target in node.targets:
            self._assign(target, value, scope)

    def _exec_AnnAssign(self, node: ast.AnnAssign, scope: _Scope) -> None:
        if node.value is not None:
            self._assign(node.target, self.eval(node.value, scope), scope)

    def _exec_AugAssign(self, node: ast.AugAssign, scope: _Scope) -> None:
        current = self.eval(_as_load(node.target), scope)
        self._assign(node.target, self._binop(node.op, current, self.eval(node.value, scope)), scope)

    def _exec_If(self, node: ast.If, scope: _Scope) -> None:
        self.exec_block(node.body if self.eval(node.test, scope) else node.orelse, scope)

    def _exec_For(self, node: ast.For, scope: _Scope) -> None:
        for item in self._iterate(self.eval(node.iter, scope)):
            self._assign(node.target, item, scope)
            try:
                self.exec_block(node.body, scope)
            except _Break:
                return
            except _Continue:
                continue
        self.exec_block(node.orelse, scope)

    def _exec_While(self, node: ast.While, scope: _Scope) -> None:
        while self.eval(node.test, scope):
            self._tick()
            try:
                self.exec_block(node.body, scope)
            except _Break:
                return
            except _Continue:
                continue
        self.exec_block(node.orelse, scope)

    def _exec_Break(self, node: ast.Break, scope: _Scope) -> None:
        raise _Break()

    def _exec_Continue(self, node: ast.Continue, scope: _Scope) -> None:
        raise _Continue()

    def _exec_Return(self, node: ast.Return, scope: _Scope) -> None:
        raise _Return(None if node.value is None else self.eval(node.value, scope))

    def _exec_Assert(self, node: ast.Assert, scope: _Scope) -> None:
        if not self.eval(node.test, scope):
            raise RestrictedError("assertion failed")

    def _exec_FunctionDef(self, node: ast.FunctionDef, scope: _Scope) -> None:
        if node.decorator_list:
            raise RestrictedError(f"decorated function {node.name!r} is not allowed")
        if scope is self.globals and node.name in self.overrides:
            scope.vars[node.name] = self.overrides[node.name]
            return
        scope.vars[node.name] = self._make_function(node.name, node.args, node.body, scope)

    def _exec_ClassDef(self, node: ast.ClassDef, scope: _Scope) -> None:
        if self.class_factory is None:
            raise RestrictedError(f"class {node.name!r} is not allowed")
        scope.vars[node.name] = self._host_value(self.class_factory(node.name))

    def _exec_Import(self, node: ast.Import, scope: _Scope) -> None:
        for alias in node.names:
            bound = alias.asname or alias.name.split(".")[0]
            scope.vars[bound] = self._resolve_import(alias.name.split(".")[0] if not alias.asname else alias.name, "")

    def _exec_ImportFrom(self, node: ast.ImportFrom, scope: _Scope) -> None:
        for alias in node.names:
            if alias.name == "*":
                raise RestrictedError("'from ... import *' is not allowed")
            scope.vars[alias.asname or alias.name] = self._resolve_import(node.module or "", alias.name)

    def _resolve_import(self, module: str, name: str) -> Any:
        if self.import_resolver is not None:
            return self._host_value(self.import_resolver(module, name))
        return Unavailable(f"{module}.{name}" if name else module)

    def _host_value(self, value: Any) -> Any:
        """A value the host hands to the file: if callable, the file may call it."""
        if callable(value):
            self._host_callables.add(id(value))
            self._keep.append(value)  # ids stay valid while the interpreter lives
        return value

    def _exec_With(self, node: ast.With, scope: _Scope) -> None:
        for item in node.items:
            value = self.eval(item.context_expr, scope)
            if not isinstance(value, HostFile):
                raise RestrictedError("'with' is only allowed over a file opened with open()")
            if item.optional_vars is not None:
                self._assign(item.optional_vars, value, scope)
        self.exec_block(node.body, scope)

    # -- assignment -------------------------------------------------------------
    def _assign(self, target: ast.expr, value: Any, scope: _Scope) -> None:
        if isinstance(target, ast.Name):
            _check_name(target.id)
            scope.vars[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            items = list(self._iterate(value))
            starred = [i for i, t in enumerate(target.elts) if isinstance(t, ast.Starred)]
            if starred:
                i = starred[0]
                after = len(target.elts) - i - 1
                if len(items) < len(target.elts) - 1:
                    raise RestrictedError("not enough values to unpack")
                parts = items[:i] + [items[i:len(items) - after]] + items[len(items) - after:]
                for t, v in zip(target.elts, parts):
                    self._assign(t.value if isinstance(t, ast.Starred) else t, v, scope)
                return
            if len(items) != len(target.elts):
                raise RestrictedError(f"cannot unpack {len(items)} values into {len(target.elts)} names")
            for t, v in zip(target.elts, items):
                self._assign(t, v, scope)
        elif isinstance(target, ast.Subscript):
            container = self.eval(target.value, scope)
            if not isinstance(container, (list, dict)):
                raise RestrictedError("item assignment is only allowed on lists and dicts")
            container[self.eval(target.slice, scope)] = value
        else:
            raise RestrictedError(f"cannot assign to {type(target).__name__}")

    # -- expressions ------------------------------------------------------------
    def eval(self, node: ast.expr, scope: _Scope) -> Any:
        self._tick()
        method = getattr(self, f"_eval_{type(node).__name__}", None)
        if method is None:
            raise RestrictedError(f"{type(node).__name__} expressions are not allowed")
        return method(node, scope)

    def _eval_Constant(self, node: ast.Constant, scope: _Scope) -> Any:
        if isinstance(node.value, (bytes, complex)) or node.value is Ellipsis:
            raise RestrictedError(f"{type(node.value).__name__} constants are not allowed")
        return node.value

    def _eval_Name(self, node: ast.Name, scope: _Scope) -> Any:
        _check_name(node.id)
        return scope.lookup(node.id)

    def _eval_List(self, node: ast.List, scope: _Scope) -> list:
        return self._elements(node.elts, scope)

    def _eval_Tuple(self, node: ast.Tuple, scope: _Scope) -> tuple:
        return tuple(self._elements(node.elts, scope))

    def _eval_Set(self, node: ast.Set, scope: _Scope) -> set:
        return set(self._elements(node.elts, scope))

    def _eval_Dict(self, node: ast.Dict, scope: _Scope) -> dict:
        out: dict = {}
        for key, value in zip(node.keys, node.values):
            if key is None:
                mapping = self.eval(value, scope)
                if not isinstance(mapping, dict):
                    raise RestrictedError("** in a dict display needs a dict")
                out.update(mapping)
            else:
                out[self.eval(key, scope)] = self.eval(value, scope)
        return out

    def _elements(self, elts: list[ast.expr], scope: _Scope) -> list:
        out: list = []
        for e in elts:
            if isinstance(e, ast.Starred):
                out.extend(self._iterate(self.eval(e.value, scope)))
            else:
                out.append(self.eval(e, scope))
            _check_size(out)
        return out

    def _eval_BinOp(self, node: ast.BinOp, scope: _Scope) -> Any:
        return self._binop(node.op, self.eval(node.left, scope), self.eval(node.right, scope))

    def _binop(self, op: ast.operator, a: Any, b: Any) -> Any:
        fn = _BINOPS.get(type(op))
        if fn is None:
            raise RestrictedError(f"operator {type(op).__name__} is not allowed")
        if isinstance(op, ast.Mult):
            for seq, n in ((a, b), (b, a)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * max(n, 0) > MAX_SIZE:
                    raise RestrictedError("sequence too large")
        if isinstance(op, ast.Mod) and isinstance(a, str):
            raise RestrictedError("%-formatting of strings is not allowed")
        if isinstance(op, ast.Pow) and isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
            if a.bit_length() * b > MAX_INT_BITS:
                raise RestrictedError("integer too large")
        result = fn(a, b)
        if isinstance(result, (str, list, tuple)):
            _check_size(result)
        elif isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
            raise RestrictedError("integer too large")
        return result

    def _eval_UnaryOp(self, node: ast.UnaryOp, scope: _Scope) -> Any:
        value = self.eval(node.operand, scope)
        if isinstance(node.op, ast.Not):
            return not value
        if isinstance(node.op, ast.USub):
            return -value
        if isinstance(node.op, ast.UAdd):
            return +value
        raise RestrictedError(f"operator {type(node.op).__name__} is not allowed")

    def _eval_BoolOp(self, node: ast.BoolOp, scope: _Scope) -> Any:
        value: Any = None
        for operand in node.values:
            value = self.eval(operand, scope)
            if isinstance(node.op, ast.And) and not value:
                return value
            if isinstance(node.op, ast.Or) and value:
                return value
        return value

    def _eval_Compare(self, node: ast.Compare, scope: _Scope) -> bool:
        left = self.eval(node.left, scope)
        for op, comparator in zip(node.ops, node.comparators):
            right = self.eval(comparator, scope)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True

    def _eval_IfExp(self, node: ast.IfExp, scope: _Scope) -> Any:
        return self.eval(node.body if self.eval(node.test, scope) else node.orelse, scope)

    def _eval_JoinedStr(self, node: ast.JoinedStr, scope: _Scope) -> str:
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                parts.append(self._eval_FormattedValue(value, scope))
        text = "".join(parts)
        _check_size(text)
        return text

    def _eval_FormattedValue(self, node: ast.FormattedValue, scope: _Scope) -> str:
        value = self.eval(node.value, scope)
        _checked_text(value)
        if node.conversion == ord("r"):
            value = repr(value)
        elif node.conversion in (ord("s"), ord("a")):
            value = str(value) if node.conversion == ord("s") else ascii(value)
        spec = self._eval_JoinedStr(node.format_spec, scope) if node.format_spec is not None else ""
        if any(int(n) > 1000 for n in re.findall(r"\d+", spec)):
            raise RestrictedError("format width or precision too large")
        if not isinstance(value, (str, int, float, bool, type(None), list, tuple, dict)):
            raise RestrictedError(f"cannot format a {type(value).__name__}")
        return format(value, spec)

    def _eval_Subscript(self, node: ast.Subscript, scope: _Scope) -> Any:
        container = self.eval(node.value, scope)
        if not isinstance(container, (str, list, tuple, dict)):
            raise RestrictedError(f"cannot index a {type(container).__name__}")
        return container[self.eval(node.slice, scope)]

    def _eval_Slice(self, node: ast.Slice, scope: _Scope) -> slice:
        parts = [None if p is None else self.eval(p, scope) for p in (node.lower, node.upper, node.step)]
        return slice(*parts)

    def _eval_Index(self, node: Any, scope: _Scope) -> Any:  # Python < 3.9 trees
        return self.eval(node.value, scope)

    def _eval_Attribute(self, node: ast.Attribute, scope: _Scope) -> Any:
        _check_name(node.attr)
        value = self.eval(node.value, scope)
        if isinstance(value, (HostNamespace, HostFile)):
            return value.member(node.attr)
        allowed = _ALLOWED_METHODS.get(type(value), frozenset())
        if node.attr not in allowed:
            raise RestrictedError(f"attribute {node.attr!r} of a {type(value).__name__} is not allowed")
        return getattr(value, node.attr)

    def _eval_Call(self, node: ast.Call, scope: _Scope) -> Any:
        func = self.eval(node.func, scope)
        if not self._may_call(func, node.func):
            raise RestrictedError(f"calling {ast.unparse(node.func)} is not allowed")
        args = self._elements(node.args, scope)
        kwargs: dict[str, Any] = {}
        for kw in node.keywords:
            if kw.arg is None:
                mapping = self.eval(kw.value, scope)
                if not isinstance(mapping, dict) or not all(isinstance(k, str) for k in mapping):
                    raise RestrictedError("** arguments need a dict with string keys")
                kwargs.update(mapping)
            else:
                kwargs[kw.arg] = self.eval(kw.value, scope)
        _guard_string_method(func, args)
        result = func(*args, **kwargs)
        if isinstance(result, (str, list, tuple)):
            _check_size(result)
        return result

    def _may_call(self, func: Any, node: ast.expr) -> bool:
        if isinstance(func, (_Function, Unavailable)):
            return True
        if id(func) in _SAFE_CALLABLES or id(func) in self._host_callables:
            return True
        if isinstance(node, ast.Attribute):  # an allowed method, already vetted by _eval_Attribute
            return True
        return False

    def _eval_Lambda(self, node: ast.Lambda, scope: _Scope) -> _Function:
        return self._make_function("<lambda>", node.args, node.body, scope)

    def _make_function(self, name: str, args: ast.arguments, body: Any, scope: _Scope) -> _Function:
        defaults = [self.eval(d, scope) for d in args.defaults]
        kw_defaults = {a.arg: self.eval(d, scope) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None}
        for a in args.posonlyargs + args.args + args.kwonlyargs:
            _check_name(a.arg)
        fn = _Function(self, name, args, body, scope, defaults, kw_defaults)
        return fn

    def _eval_ListComp(self, node: ast.ListComp, scope: _Scope) -> list:
        return [self.eval(node.elt, s) for s in self._comprehension(node.generators, scope)]

    def _eval_GeneratorExp(self, node: ast.GeneratorExp, scope: _Scope) -> list:
        return [self.eval(node.elt, s) for s in self._comprehension(node.generators, scope)]

    def _eval_SetComp(self, node: ast.SetComp, scope: _Scope) -> set:
        return {self.eval(node.elt, s) for s in self._comprehension(node.generators, scope)}

    def _eval_DictComp(self, node: ast.DictComp, scope: _Scope) -> dict:
        return {self.eval(node.key, s): self.eval(node.value, s) for s in self._comprehension(node.generators, scope)}

    def _comprehension(self, generators: list[ast.comprehension], scope: _Scope):
        inner = _Scope(scope)
        count = 0

        def walk(i: int):
            nonlocal count
            if i == len(generators):
                count += 1
                if count > MAX_SIZE:
                    raise RestrictedError("comprehension too large")
                yield inner
                return
            gen = generators[i]
            if gen.is_async:
                raise RestrictedError("async comprehensions are not allowed")
            for item in self._iterate(self.eval(gen.iter, inner)):
                self._assign(gen.target, item, inner)
                if all(self.eval(cond, inner) for cond in gen.ifs):
                    yield from walk(i + 1)

        return walk(0)

    def _iterate(self, value: Any):
        if isinstance(value, (str, list, tuple, dict, set, frozenset, range)):
            return iter(value)
        if type(value).__name__ in ("map", "filter", "zip", "enumerate", "reversed", "list_reverseiterator",
                                    "dict_items", "dict_keys", "dict_values"):
            return value
        raise RestrictedError(f"cannot iterate over a {type(value).__name__}")


def _guard_string_method(func: Any, args: list) -> None:
    """Refuse ``str.replace`` and ``str.join`` calls whose result would be too large, before they run."""
    owner = getattr(func, "__self__", None)
    if not isinstance(owner, str) or not callable(func):
        return
    name = getattr(func, "__name__", "")
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        hits = owner.count(old) if old else len(owner) + 1
        if len(owner) + hits * max(0, len(new) - len(old)) > MAX_SIZE:
            raise RestrictedError("value too large")
    elif name == "join" and args:
        if not isinstance(args[0], (list, tuple)):
            args[0] = list(_bounded(args[0]))
        parts = args[0]
        if sum(len(p) for p in parts if isinstance(p, str)) + len(owner) * max(0, len(parts) - 1) > MAX_SIZE:
            raise RestrictedError("value too large")


def _bounded(iterable: Any):
    for i, item in enumerate(iterable):
        if i >= MAX_SIZE:
            raise RestrictedError("value too large")
        yield item


def _check_name(name: str) -> None:
    if name.startswith("__") or name.endswith("__"):
        if name != "__file__":
            raise RestrictedError(f"name {name!r} is not allowed")


def _check_size(value: Any) -> None:
    if len(value) > MAX_SIZE:
        raise RestrictedError("value too large")


def _as_load(target: ast.expr) -> ast.expr:
    copy = ast.parse(ast.unparse(target), mode="eval").body
    return ast.copy_location(copy, target)
