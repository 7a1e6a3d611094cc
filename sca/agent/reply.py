"""The reply format every agent of the toolkit speaks, and how a final answer becomes a value.

A reply is ``THOUGHT: ... END THOUGHT`` and then one of

* ``ACTION: <python> END ACTION``: code that calls tools, run in the sandbox;
* ``ANSWER: ... END ANSWER``: the challenger's task (tags inside, see :func:`parse_task`);
* plain text: the executor's message to the user, or its final answer where there is no user.

One parser (:func:`parse_reply`) serves the challenger (``sca propose``) and the executor
(``sca rollout``, ``sca eval``, GRPO training); each decides what the parts mean. A missing
THOUGHT is not an error; missing END markers are tolerated (a stop string cuts them off, and
:func:`complete_reply` puts them back in the transcript).

The answer conversion (:func:`answer_from_text`) is part of the CaT contract (docs/CAT.md,
"The answer"): it is what ``evaluate(answer)`` receives from an executor, and ``sca validate``
checks that each task's solution still passes after the same conversion.

Everything here reads model output in the trusted process, and a model trained against our
reward may write anything up to its token limit. So the parsers find markers, tags and fences
with ``str.find``, ``str.rfind`` and slicing, in time linear in the text: a regular expression
with a lazy body (``THOUGHT:(.*?)END THOUGHT``) scans to the end from every place it may start
and, where the end is missing, takes time quadratic in the text (seconds to minutes on 64,000
characters). The only regular expression left matches one character class, which cannot backtrack.
"""

from __future__ import annotations

import ast
import json
import math
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

#: stop strings of a reply: generation ends after an action or a challenger's answer
STOP = ["END ACTION", "END ANSWER"]
#: what starts an observation message in the transcript
OBSERVATION = "OBSERVATION:"

_TAGS = ("instruction", "evaluation_function", "solution", "failure_case")
#: the language tag after a fence's backticks (```python): one character class, linear to match
_LANG = re.compile(r"[a-zA-Z0-9_+-]*")


@dataclass
class Reply:
    """A parsed reply. `kind` is "action", "answer" or "text" (no ACTION and no ANSWER)."""

    kind: str
    thought: str = ""
    code: str = ""  # action: the code, cleaned
    body: str = ""  # answer: what is between ANSWER: and END ANSWER
    text: str = ""  # text: the reply without its THOUGHT
    error: str = ""  # action: why it cannot run (an empty ACTION)


def clean_code(src: str) -> str:
    """Strip Markdown fences and common indentation from a code block."""
    s = src.strip("\n")
    body = _fenced_code(s)
    if body is not None:
        s = body
    return textwrap.dedent(s).strip("\n") + "\n"


def _fenced_code(s: str) -> str | None:
    """The code inside `s` if `s` is one fenced block, else None.

    A fenced block is: whitespace, an opening fence (three backticks, a language tag, whitespace
    that holds a line break), the code, and a closing fence with only whitespace after it. The code
    starts after the last line break of the opening fence's whitespace and ends where the
    whitespace before the closing fence starts (its first line keeps its indentation for dedent).
    The closing fence is the last non-blank characters, so it is found from the end, never by a
    lazy match that would try every place a closing fence might be.
    """
    start = len(s) - len(s.lstrip())  # the opening fence
    end = len(s.rstrip()) - 3  # the closing fence
    if not s.startswith("```", start) or not s.startswith("```", end):  # end >= start if the first holds
        return None
    tag = _LANG.match(s, start + 3).end()
    blank = len(s) - len(s[tag:].lstrip())  # the whitespace after the tag ends here
    newline = s.rfind("\n", tag, blank)
    if newline < 0 or end <= newline:  # no line break after the tag, or one fence for both
        return None
    code = newline + 1
    return s[code:max(code, len(s[:end].rstrip()))]


def parse_reply(text: str) -> Reply:
    """Read a reply: THOUGHT, then ACTION, ANSWER or plain text (tolerant of missing END markers).

    An ``ACTION:`` or ``ANSWER:`` inside a THOUGHT that is closed by END THOUGHT is part of the
    thought ("I will check the order in an ACTION: ..."), not the reply's action or answer.
    """
    thought = ""
    start = text.find("THOUGHT:")  # only the first THOUGHT counts (an END THOUGHT: holds another)
    after = 0  # where the reply's ACTION or ANSWER may start
    if start >= 0:
        start += len("THOUGHT:")
        close = text.find("END THOUGHT", start)
        if close >= 0:
            thought, after = text[start:close].strip(), close + len("END THOUGHT")
        else:  # a THOUGHT never closed ends at the first ACTION or ANSWER, or with the text
            ends = [i for i in (text.find("ACTION:", start), text.find("ANSWER:", start)) if i >= 0]
            thought = text[start:min(ends, default=len(text))].strip()
    a_pos, q_pos = text.find("ACTION:", after), text.find("ANSWER:", after)
    if a_pos >= 0 and (q_pos < 0 or a_pos < q_pos):
        code = clean_code(text[a_pos + len("ACTION:"):].split("END ACTION", 1)[0])
        return Reply("action", thought, code=code, error="" if code.strip() else "the ACTION is empty")
    if q_pos >= 0:
        return Reply("answer", thought, body=text[q_pos + len("ANSWER:"):].split("END ANSWER", 1)[0].strip())
    rest = text
    end = text.find("END THOUGHT")
    if end >= 0:
        rest = text[end + len("END THOUGHT"):]
    elif start >= 0:  # a THOUGHT never closed: what follows it is all there is to say
        rest = text[start:]
    return Reply("text", thought, text=rest.strip())


@dataclass
class TaskParts:
    """The CaT parts of a challenger's ANSWER, or what is missing."""

    task: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def parse_task(body: str) -> TaskParts:
    """The instruction, evaluation function, solution and failure cases in an ANSWER body."""
    found = {name: _tagged(body, name) for name in _TAGS}
    missing = [name for name in ("instruction", "evaluation_function", "solution") if not found[name]]
    if missing:
        return TaskParts(error="the ANSWER lacks " + ", ".join(f"<{m}>" for m in missing))
    return TaskParts({
        "instruction": " ".join(found["instruction"][0].split()),
        "evaluation_function": clean_code(found["evaluation_function"][0]),
        "solution": clean_code(found["solution"][0]),
        "failure_cases": [clean_code(x) for x in found["failure_case"]],
    })


def _tagged(body: str, name: str) -> list[str]:
    """What each ``<name>...</name>`` in `body` holds, in order (a part ends at its first close tag).

    An opening tag with no closing tag after it ends the search: no later one has one either.
    """
    opening, closing = f"<{name}>", f"</{name}>"
    parts, pos = [], 0
    while (start := body.find(opening, pos)) >= 0:
        start += len(opening)
        end = body.find(closing, start)
        if end < 0:
            break
        parts.append(body[start:end])
        pos = end + len(closing)
    return parts


def tool_listing(env: Any) -> str:
    """Each tool of `env` as its signature, kind and description (an agent's manual)."""
    blocks = []
    for t in env.tools():
        desc = textwrap.indent(t.description.strip(), "    ")
        blocks.append(f"{t.signature()}  [{t.kind}]\n{desc}")
    return "\n\n".join(blocks)


def complete_reply(text: str) -> str:
    """Put back the END marker a stop string cut off, so the transcript reads whole."""
    a, q = text.rfind("ACTION:"), text.rfind("ANSWER:")
    if a < 0 and q < 0:
        return text
    marker = "END ACTION" if a > q else "END ANSWER"
    return text if text.rstrip().endswith(marker) else text.rstrip() + "\n" + marker


def format_observation(res: Any, limit: int) -> str:
    """What an action's run shows the agent: its output, ``answer`` if set, or the error."""
    parts = []
    if res.stdout:
        parts.append(res.stdout.rstrip())
    if res.status == "ok":
        if res.answer is not None:
            parts.append(f"answer = {json.dumps(res.answer, ensure_ascii=False)[:500]}")
        if not parts:
            parts.append("(the code ran and printed nothing)")
    elif res.status == "timeout":
        parts.append("The code ran past the time limit and was stopped.")
    else:
        parts.append((res.traceback or f"{res.error_type}: {res.error}").rstrip())
    text = "\n".join(parts)
    if len(text) > limit:
        text = text[:limit] + f"\n... ({len(text) - limit} more characters cut)"
    return f"{OBSERVATION}\n{text}"


# -- the answer -----------------------------------------------------------------------------------

def answer_to_text(value: Any) -> str:
    """How an agent writes a value in its final reply: a string as itself, anything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def answer_from_text(text: str | None, user_facing: bool = False) -> Any:
    """The value ``evaluate(answer)`` receives for an agent's final text (docs/CAT.md, "The answer").

    In user-facing environments the answer is the text itself (the agent's last message to the
    user). Elsewhere the text, stripped (and unwrapped from one code fence), is read as JSON if
    it is JSON (``3``, ``2.5``, ``[1, 2]``, ``{"a": 1}``, ``"x"``, ``true``, ``null``), else as a
    Python literal if it is one (``'x'``, ``(1, 2)``, ``True``, ``None``; tuples become lists),
    else it is the text as a string. NaN and infinities are not values: such text stays text.
    """
    if text is None:
        return None
    t = text.strip()
    if user_facing:
        return t
    if len(t) >= 6 and t.startswith("```") and t.endswith("```"):  # one code fence, language tag and all
        t = t[_LANG.match(t, 3).end():-3].strip()
    if not t:
        return ""
    try:
        value = json.loads(t)
        if _finite(value):
            return value
    except (ValueError, RecursionError):
        pass
    if len(t) <= 100_000:
        try:
            value = _jsonable(ast.literal_eval(t))
            if value is not _NOT_JSON:
                return value
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return t


_NOT_JSON = object()
_MAX_INT_BITS = 4000 * 3  # about 3600 decimal digits: below Python's 4300-digit limit on int <-> str


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def _jsonable(value: Any) -> Any:
    """A Python literal as the JSON value it stands for, or _NOT_JSON (sets, bytes, complex, NaN...)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):  # a hex literal can be an int too long to write in decimal
        return value if value.bit_length() <= _MAX_INT_BITS else _NOT_JSON
    if isinstance(value, float):
        return value if math.isfinite(value) else _NOT_JSON
    if isinstance(value, (list, tuple)):
        items = [_jsonable(v) for v in value]
        return _NOT_JSON if any(v is _NOT_JSON for v in items) else items
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return _NOT_JSON
        items = {k: _jsonable(v) for k, v in value.items()}
        return _NOT_JSON if any(v is _NOT_JSON for v in items.values()) else items
    return _NOT_JSON
