"""tau2's ``calculate`` tool (retail and airline alike), evaluated without ``eval``, and bounded.

tau2's calculate checks that every character is one of ``"0123456789+-*/(). "`` and returns
``str(round(float(eval(expression)), 2))``. Within that alphabet the only Python that yields a number
is arithmetic: numbers, unary and binary ``+ -``, ``* / //``, ``**``, parentheses. Everything else it
can spell (a call ``"(1)(2)"``, an empty tuple ``"()"``, an Ellipsis ``"..."``, an attribute ``"."``)
fails with a syntax or type error. So the text is parsed here into a postfix program, and the program
run with Python's own operators on Python's own numbers, in the order eval runs them: the same value,
the same rounding; the same refusal where eval fails.

:func:`calculate` gives tau2's exact answer to every expression it accepts and refuses, before anything
runs, an expression longer than ``MAX_EXPRESSION_CHARS`` characters, any power (``**``), parentheses
nested deeper than ``MAX_NESTING``, and a product of integers that could reach ``MAX_PRODUCT_BITS``
bits (:class:`CostlyExpression`). Without ``**``, an integer in an expression of n characters has fewer
than 4.4 n bits, so tau2's own ``eval`` of anything that passes (or fails in tau2 as well:
:class:`InvalidExpression`) is cheap too. :func:`check_expression` is the same check alone, which
:meth:`envs._tau.TauEnvironment.precheck` makes before a call runs.
"""

from __future__ import annotations

import operator
from typing import Any

from envs.base import ToolError


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


class CostlyExpression(ToolError):
    """An expression refused before anything runs, which tau2 would have evaluated (a precheck)."""


class InvalidExpression(ToolError):
    """An expression tau2's calculate refuses too (its character check, a syntax or type error)."""


def calculate(expression: str) -> str:
    """tau2's ``calculate(expression)``, evaluated without ``eval`` (see above): its exact answer
    for every expression taken; :class:`ToolError` for every one it refuses, and for the costly."""
    stack: list[Any] = []
    for item in check_expression(expression):
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
                raise InvalidExpression(f"{type(e).__name__}: {e}") from None
    try:
        return str(round(float(stack[0]), 2))
    except OverflowError as e:  # an integer past any float
        raise InvalidExpression(f"OverflowError: {e}") from None


def check_expression(expression: str) -> list[Any]:
    """`expression` as a postfix program (numbers, "neg", "pos", binary operators), checked.

    Raises :class:`CostlyExpression` for what is refused here and would run in tau2 (too long, a power, too
    deeply nested, too large a product), :class:`InvalidExpression` for what tau2 refuses as well. The
    order matters: tau2 checks the characters first, so a text it refuses there is InvalidExpression."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CostlyExpression(f"Invalid expression: longer than {MAX_EXPRESSION_CHARS} characters")
    if not _CALC_CHARS.issuperset(expression):
        raise InvalidExpression("Invalid characters in expression")  # tau2's own words
    if "**" in expression:  # the only way to a large number in few characters: never evaluated
        raise CostlyExpression("Invalid expression: '**' (power) is not supported")
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
                    raise InvalidExpression("SyntaxError: leading zeros in decimal integer literals are not permitted")
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
                raise InvalidExpression("SyntaxError: invalid syntax (two numbers in a row)")
            out.append(token)
            want_operand = False
        elif token == "**":
            raise CostlyExpression("Invalid expression: '**' (power) is not supported")
        elif want_operand:
            if token in ("+", "-"):
                ops.append("pos" if token == "+" else "neg")
            elif token == "(":
                depth += 1
                if depth > MAX_NESTING:
                    raise CostlyExpression(f"Invalid expression: parentheses nested more than {MAX_NESTING} deep")
                ops.append("(")
            else:  # ")" of an empty tuple, "...", ".", or an operator where a number belongs
                raise InvalidExpression(f"Invalid expression: unexpected {token!r} (only numbers, + - * / // and "
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
                raise InvalidExpression("SyntaxError: unmatched ')'")
            ops.pop()
            depth -= 1
        else:  # "(" after a value is a call, "." an attribute, "..." an Ellipsis: eval fails on each
            raise InvalidExpression(f"Invalid expression: unexpected {token!r} after a value")
    if want_operand:
        raise InvalidExpression("SyntaxError: invalid syntax (the expression is empty or ends too early)")
    while ops:
        op = ops.pop()
        if op == "(":
            raise InvalidExpression("SyntaxError: '(' was never closed")
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
                    raise CostlyExpression(f"Invalid expression: a product of integers of up to {left_bits + right_bits} "
                                  f"bits (at most {MAX_PRODUCT_BITS} are taken)")
                stack.append((True, left_bits + right_bits))
            elif item == "//":
                stack.append((True, max(left_bits, 1)))
            else:
                stack.append((True, max(left_bits, right_bits) + 1))
