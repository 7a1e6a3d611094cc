"""Comparing an agent's final answer with a gold answer (M3ToolEval-style tasks).

Numbers are compared with a relative tolerance, so ``"2173.50"``, ``2173.5``
and ``"$2,173.50"`` all match a gold ``2173.5``; texts are compared case- and
space-insensitively; lists, tuples and dicts element by element; an answer
given as text (``"[1, 2]"``, ``"True"``) is read as the value it spells.

This module uses the standard library only, so that :func:`evaluation_source`
can embed it in a task's self-contained ``evaluate(answer)``.
"""

import ast
import math
import re

__all__ = ["answers_match", "evaluation_source", "DEFAULT_REL_TOL"]

DEFAULT_REL_TOL = 1e-2
_ABS_TOL = 1e-9
_MAX_LITERAL = 20000

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_GROUPED = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")
_CURRENCY = "$€£¥"
_QUOTES = "'\"`"
_SOURCE = None  # this module's text, read once by evaluation_source
_TRUE = {"true", "yes"}
_FALSE = {"false", "no"}


def answers_match(pred, gold, rel_tol=DEFAULT_REL_TOL):
    """Whether answer `pred` matches `gold`.

    - gold a number: `pred` is a number or a numeric text within `rel_tol`
      (relative); an integral answer to an integer gold must be equal.
    - gold a bool: `pred` is that bool, or its text (``"true"``, ``"yes"``, ...).
    - gold a text: equal after case folding, trimming quotes, a final period and
      extra spaces; a gold like ``"12.50"`` (with a decimal point) also matches
      the number 12.5.
    - gold a list or tuple: same length, every element matches (`pred` may be
      a list, a tuple or their text).
    - gold a dict: same keys (as normalised texts), every value matches.
    """
    if pred is None or gold is None:
        return pred is None and gold is None
    if isinstance(gold, bool):
        return _as_bool(pred) is gold
    if isinstance(gold, (int, float)):
        value = _as_number(pred)
        if value is None:
            return False
        if isinstance(gold, int) and float(value).is_integer():
            return int(value) == gold
        return math.isclose(value, gold, rel_tol=rel_tol, abs_tol=_ABS_TOL)
    if isinstance(gold, str):
        if "." in gold and _as_number(gold) is not None:
            value = _as_number(pred)
            if value is not None:
                return math.isclose(value, _as_number(gold), rel_tol=rel_tol, abs_tol=_ABS_TOL)
        if isinstance(pred, (str, int, float)) and not isinstance(pred, bool):
            return _norm_text(str(pred)) == _norm_text(gold)
        return False
    if isinstance(gold, (list, tuple)):
        items = _as_sequence(pred)
        return (items is not None and len(items) == len(gold)
                and all(answers_match(p, g, rel_tol) for p, g in zip(items, gold)))
    if isinstance(gold, dict):
        mapping = _as_mapping(pred)
        if mapping is None:
            return False
        pred_items = {_norm_text(str(k)): v for k, v in mapping.items()}
        gold_items = {_norm_text(str(k)): v for k, v in gold.items()}
        return (pred_items.keys() == gold_items.keys()
                and all(answers_match(pred_items[k], gold_items[k], rel_tol) for k in gold_items))
    return pred == gold


def evaluation_source(gold, rel_tol=DEFAULT_REL_TOL):
    """Python source of a self-contained ``evaluate(answer)`` checking against `gold`.

    The source is this module followed by ``evaluate``: it runs in any
    namespace (a CaT sandbox included) with the standard library only.
    """
    global _SOURCE
    if _SOURCE is None:
        with open(__file__, encoding="utf-8") as f:
            _SOURCE = f.read()
    return f"{_SOURCE}\n\ndef evaluate(answer):\n    return answers_match(answer, {gold!r}, rel_tol={rel_tol!r})\n"


# -- helpers
def _as_number(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip().strip(_QUOTES).strip()
    if text.endswith("."):
        text = text[:-1]
    for symbol in _CURRENCY:
        text = text.replace(symbol, "")
    text = text.replace(" ", "")
    if _GROUPED.fullmatch(text):
        text = text.replace(",", "")
    if not _NUMBER.fullmatch(text):
        return None
    number = float(text)
    if not math.isfinite(number):
        return None
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else number


def _as_bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = _norm_text(value)
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def _norm_text(text):
    text = " ".join(text.split()).strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES:
        text = text[1:-1].strip()
    return text.rstrip(".").strip().casefold()


def _literal(text):
    if not isinstance(text, str) or len(text) > _MAX_LITERAL:
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _as_sequence(value):
    if isinstance(value, (list, tuple)):
        return list(value)
    parsed = _literal(value)
    if isinstance(parsed, (list, tuple)):
        return list(parsed)
    if isinstance(value, str) and "," in value:
        return [part.strip() for part in value.strip().strip("[]()").split(",")]
    return None


def _as_mapping(value):
    if isinstance(value, dict):
        return value
    parsed = _literal(value)
    return parsed if isinstance(parsed, dict) else None
