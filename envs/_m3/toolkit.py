"""Tools as documented methods, and the checks of their arguments.

An environment here is a class whose tools are methods marked with
:func:`tool`. The method's docstring is the tool's description (its
``Args:`` lines describe the parameters, its ``Returns:`` line what comes
back), its type hints give the JSON schema. :class:`ToolkitEnvironment`
turns those methods into :class:`envs.base.Tool` objects and dispatches calls.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any, Callable

from envs._m3.arith import ExpressionError, evaluate_expression
from envs.base import Environment, Tool, ToolError, ToolKind, schema_from_signature

__all__ = [
    "tool", "ToolkitEnvironment", "CalculatorTool",
    "as_number", "as_integer", "as_text", "as_number_list", "as_text_list",
]

_TOOL_ATTR = "_m3_tool"


def tool(kind: ToolKind, *, schema: dict[str, dict[str, Any]] | None = None) -> Callable:
    """Mark a method as a tool of kind ``"read"`` or ``"write"``.

    `schema` overrides the JSON schema of named parameters where a type hint
    cannot say it (e.g. "an object or an array").
    """
    if kind not in ("read", "write"):
        raise ValueError(f"tool kind must be 'read' or 'write', not {kind!r}")

    def mark(method: Callable) -> Callable:
        setattr(method, _TOOL_ATTR, {"kind": kind, "schema": schema or {}})
        return method

    return mark


def _parse_docstring(doc: str) -> tuple[str, dict[str, str], str]:
    """(description, {param: description}, returns) from a Google-style docstring."""
    doc = inspect.cleandoc(doc or "")
    description_lines: list[str] = []
    params: dict[str, str] = {}
    returns: list[str] = []
    section = "description"
    current = None
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:"):
            section = "args"
            continue
        if stripped == "Returns:" or stripped.startswith("Returns:"):
            section = "returns"
            rest = stripped[len("Returns:"):].strip()
            if rest:
                returns.append(rest)
            continue
        if section == "description":
            description_lines.append(line)
        elif section == "args":
            m = re.match(r"^(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", stripped)
            if m and line.startswith("    ") and not line.startswith("        "):
                current = m.group(1)
                params[current] = m.group(2)
            elif current and stripped:
                params[current] += " " + stripped
        elif stripped:
            returns.append(stripped)
    description = "\n".join(description_lines).strip()
    return description, params, " ".join(returns)


class ToolkitEnvironment(Environment):
    """An environment whose tools are the methods marked with :func:`tool`."""

    _tool_cache: dict[type, list[Tool]] = {}

    def tools(self) -> list[Tool]:
        return type(self).class_tools()

    @classmethod
    def class_tools(cls) -> list[Tool]:
        """The tools of every instance of `cls`, known from the class alone (what its spec declares)."""
        if cls not in ToolkitEnvironment._tool_cache:
            ToolkitEnvironment._tool_cache[cls] = [cls._describe(name, m) for name, m in cls._tool_methods(cls)]
        return list(ToolkitEnvironment._tool_cache[cls])

    @staticmethod
    def _tool_methods(cls: type) -> list[tuple[str, Callable]]:
        found = []
        for klass in reversed(cls.__mro__):
            for name, member in vars(klass).items():
                if callable(member) and hasattr(member, _TOOL_ATTR):
                    found = [(n, m) for n, m in found if n != name] + [(name, member)]
        return found

    @staticmethod
    def _describe(name: str, method: Callable) -> Tool:
        info = getattr(method, _TOOL_ATTR)
        description, param_docs, returns = _parse_docstring(method.__doc__ or "")
        parameters = schema_from_signature(_Signed(inspect.signature(method, eval_str=True)), param_docs)
        for param, override in info["schema"].items():
            merged = dict(override)
            if param in param_docs:
                merged.setdefault("description", param_docs[param])
            if "default" in parameters["properties"].get(param, {}):
                merged.setdefault("default", parameters["properties"][param]["default"])
            parameters["properties"][param] = merged
        return Tool(name=name, description=description, parameters=parameters, kind=info["kind"], returns=returns)

    def _call(self, name: str, args: dict[str, Any]) -> Any:
        method = getattr(self, name, None)
        if method is None or not hasattr(method, _TOOL_ATTR):
            raise ToolError(f"unknown tool {name!r}")
        return method(**args)


class _Signed:
    """A stand-in carrying a signature whose annotations are evaluated (not strings)."""

    def __init__(self, signature: inspect.Signature):
        self.__signature__ = signature

    def __call__(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - never called
        raise NotImplementedError


# -- argument checks: each returns the value in canonical form or raises ToolError


def as_number(value: Any, name: str) -> int | float:
    """A finite int or float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ToolError(f"{name} must be a number, got {_show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError(f"{name} must be a finite number, got {value!r}")
    return value


def as_integer(value: Any, name: str) -> int:
    """An int; an integral float (``3.0``) is accepted."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ToolError(f"{name} must be an integer, got {_show(value)}")
    return value


def as_text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ToolError(f"{name} must be a string, got {_show(value)}")
    return value


def as_number_list(value: Any, name: str, *, allow_empty: bool = False) -> list[int | float]:
    if not isinstance(value, list):
        raise ToolError(f"{name} must be a list of numbers, got {_show(value)}")
    if not value and not allow_empty:
        raise ToolError(f"{name} must not be empty")
    return [as_number(v, f"{name}[{i}]") for i, v in enumerate(value)]


def as_text_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list):
        raise ToolError(f"{name} must be a list of strings, got {_show(value)}")
    return [as_text(v, f"{name}[{i}]") for i, v in enumerate(value)]


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


class CalculatorTool:
    """The safe `calculator` tool, shared by the environments that offer it (mix in)."""

    @tool("read")
    def calculator(self, expression: str) -> float:
        """Evaluates an arithmetic expression, e.g. "2 + (3 * 4)" gives 14.

        Numbers, + - * / // % ** and parentheses only.

        Args:
            expression: the arithmetic expression
        Returns: its value
        """
        try:
            return evaluate_expression(as_text(expression, "expression"))
        except ExpressionError as e:
            raise ToolError(f"calculator: {e}") from None
