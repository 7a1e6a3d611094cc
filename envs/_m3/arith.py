"""A safe arithmetic evaluator for the ``calculator`` tools.

M3ToolEval's calculator runs Python's ``eval`` on the model's text; ours parses
arithmetic only, with a small precedence-climbing parser: numbers (``12``,
``3.5``, ``.5``, ``1e-3``), ``+ - * / // % **``, parentheses and unary signs.
Results follow Python's arithmetic (``7 / 2 == 3.5``, ``-2 ** 2 == -4``).
Work is bounded (input length, nesting depth, size of integers), so no input
can hang or exhaust the process; every refusal is an :class:`ExpressionError`
with a message meant for the model.
"""

from __future__ import annotations

import math
import re

__all__ = ["ExpressionError", "evaluate_expression"]

MAX_LENGTH = 2000
MAX_DEPTH = 60
MAX_INT_BITS = 4096

_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<op>\*\*|//|[-+*/%()])|(?P<bad>\S))"
)
_BINARY = {"+": 10, "-": 10, "*": 20, "/": 20, "//": 20, "%": 20}


class ExpressionError(ValueError):
    """The text is not an arithmetic expression we evaluate, or its value is not a finite number."""


def evaluate_expression(text: str) -> int | float:
    """The value of an arithmetic expression such as ``"2 + (3 * 4) / 5"``."""
    if not isinstance(text, str):
        raise ExpressionError(f"expression must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_LENGTH} characters")
    parser = _Parser(_tokenize(text))
    if parser.peek() is None:
        raise ExpressionError("empty expression")
    value = parser.expression(0, 0)
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected {parser.peek()!r} in {text!r}")
    return value


def _tokenize(text: str) -> list[str | int | float]:
    tokens: list[str | int | float] = []
    for m in _TOKEN.finditer(text):
        if m.group("bad") is not None:
            bad = m.group("bad")
            hint = " (use ** for powers)" if bad == "^" else ""
            raise ExpressionError(
                f"unsupported character {bad!r} in {text!r}: only numbers, + - * / // % ** and parentheses{hint}")
        if m.group("num") is not None:
            literal = m.group("num")
            tokens.append(float(literal) if any(c in literal for c in ".eE") else int(literal))
        elif m.group("op") is not None:
            tokens.append(m.group("op"))
    return tokens


class _Parser:
    def __init__(self, tokens: list[str | int | float]):
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | int | float | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str | int | float | None:
        token = self.peek()
        self.pos += 1
        return token

    def expression(self, min_prec: int, depth: int) -> int | float:
        left = self.unary(depth)
        while True:
            op = self.peek()
            if not isinstance(op, str) or op not in _BINARY or _BINARY[op] < min_prec:
                return left
            self.take()
            right = self.expression(_BINARY[op] + 1, depth)
            left = _apply(op, left, right)

    def unary(self, depth: int) -> int | float:
        if depth > MAX_DEPTH:
            raise ExpressionError(f"expression nested more than {MAX_DEPTH} levels deep")
        token = self.peek()
        if token in ("-", "+"):
            self.take()
            value = self.unary(depth + 1)
            return -value if token == "-" else +value
        return self.power(depth)

    def power(self, depth: int) -> int | float:
        base = self.primary(depth)
        if self.peek() == "**":
            self.take()
            exponent = self.unary(depth + 1)  # right-associative; binds tighter than a unary sign on its left
            return _apply("**", base, exponent)
        return base

    def primary(self, depth: int) -> int | float:
        token = self.take()
        if isinstance(token, (int, float)):
            return _checked(token)
        if token == "(":
            value = self.expression(0, depth + 1)
            if self.take() != ")":
                raise ExpressionError("missing closing parenthesis")
            return value
        if token is None:
            raise ExpressionError("expression ends too early")
        raise ExpressionError(f"unexpected {token!r}")


def _apply(op: str, a: int | float, b: int | float) -> int | float:
    try:
        if op == "+":
            result = a + b
        elif op == "-":
            result = a - b
        elif op == "*":
            result = a * b
        elif op == "/":
            result = a / b
        elif op == "//":
            result = a // b
        elif op == "%":
            result = a % b
        else:
            if isinstance(a, int) and isinstance(b, int) and b > 0 and a not in (0, 1, -1):
                if a.bit_length() * b > MAX_INT_BITS:
                    raise ExpressionError("result is too large")
            result = a ** b
    except ZeroDivisionError:
        raise ExpressionError("division by zero") from None
    except OverflowError:
        raise ExpressionError("result is too large") from None
    if isinstance(result, complex):
        raise ExpressionError("result is not a real number")
    return _checked(result)


def _checked(value: int | float) -> int | float:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ExpressionError("result is too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ExpressionError("result is not a finite number")
    return value
