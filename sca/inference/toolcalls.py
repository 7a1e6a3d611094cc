"""Native function calling for backends that see raw model text (hf, vllm).

The chat template decides how the tools are shown to the model; what the model
writes back depends on its family. This module turns that text into the
OpenAI-style tool calls of :class:`~sca.inference.base.Generation`::

    {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": "{\\"x\\": 1}"}}

Families (see :func:`detect_family`):

``llama3``
    Llama 3.1/3.2: a JSON object ``{"name": ..., "parameters": {...}}`` (or
    ``"arguments"``), possibly after ``<|python_tag|>``, possibly several
    separated by ``;`` or newlines.
``hermes``
    Hermes 2 Pro, Qwen2.5/Qwen3: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
    one block per call.
``mistral``
    ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``, or the newer
    ``[TOOL_CALLS]name[ARGS]{...}``.
``generic``
    Any of the markers above, else a fenced ```json block or a bare JSON
    object that has a name and arguments/parameters.

Parsing never raises on model output: anything that is not a well-formed call
(malformed JSON, no name, arguments that are not an object) stays text.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from sca.inference.base import cut_at_stop

FAMILIES = ("llama3", "hermes", "mistral", "generic")

#: special tokens that carry tool calls; kept when the rest of the special tokens are dropped
TOOL_MARKERS = ("<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]")

_DECODER = json.JSONDecoder()
_NAMED_ARGS = re.compile(r"\s*([A-Za-z0-9_.\-]+)(?:\[CALL_ID\][A-Za-z0-9_\-]*)?\[ARGS\]")
_Span = tuple[int, int, list[tuple[str, dict]]]  # start, end, the (name, arguments) of the calls in it


# -- public API ---------------------------------------------------------------------------------


def parse_tool_calls(text: str, family: str = "generic") -> tuple[str, list[dict]]:
    """Split model output into ``(content, tool_calls)``.

    `content` is the text outside the calls (whitespace-trimmed; the text
    unchanged when there are no calls). `tool_calls` are OpenAI-style, with
    arguments as JSON text and ids ``call_0``, ``call_1``... A family parser
    that finds no call falls back to the generic one, which defers to any
    marker in the text (so a malformed ``<tool_call>`` block is never
    salvaged as bare JSON).
    """
    if family not in PARSERS:
        raise ValueError(f"unknown tool-call family {family!r}; choose one of {', '.join(FAMILIES)}")
    if not isinstance(text, str) or not text:
        return text, []
    try:
        spans = _SPANNERS[family](text)
        if not spans and family != "generic":
            spans = _generic_spans(text)
        return _assemble(text, spans)
    except (ValueError, TypeError, RecursionError):  # never let odd model output raise
        return text, []


def parse_llama3(text: str) -> tuple[str, list[dict]]:
    """Llama 3.1/3.2 JSON calls (see the module docstring)."""
    return parse_tool_calls(text, "llama3")


def parse_hermes(text: str) -> tuple[str, list[dict]]:
    """Hermes/Qwen ``<tool_call>`` blocks."""
    return parse_tool_calls(text, "hermes")


def parse_mistral(text: str) -> tuple[str, list[dict]]:
    """Mistral ``[TOOL_CALLS]`` lists."""
    return parse_tool_calls(text, "mistral")


def parse_generic(text: str) -> tuple[str, list[dict]]:
    """Any known marker, else fenced or bare JSON calls."""
    return parse_tool_calls(text, "generic")


PARSERS: dict[str, Callable[[str], tuple[str, list[dict]]]] = {
    "llama3": parse_llama3,
    "hermes": parse_hermes,
    "mistral": parse_mistral,
    "generic": parse_generic,
}


def detect_family(tokenizer_or_chat_template: Any, model_name: str | None = None) -> str:
    """The tool-call family of a model, from markers in its chat template, else its name.

    `tokenizer_or_chat_template`: a tokenizer (its ``chat_template`` is read),
    a template string, a dict of named templates, or None. ``[TOOL_CALLS]``
    means mistral, ``<tool_call>`` hermes, ``<|python_tag|>`` (or a Llama 3
    header template that mentions parameters) llama3. Without markers, the
    model name decides (llama-3, qwen/hermes, mistral/mixtral); else generic.
    """
    template = _template_text(tokenizer_or_chat_template)
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<tool_call>" in template:
        return "hermes"
    if "<|python_tag|>" in template or ("<|start_header_id|>" in template and "parameters" in template):
        return "llama3"
    name = model_name
    if not name and not isinstance(tokenizer_or_chat_template, (str, dict)):
        name = getattr(tokenizer_or_chat_template, "name_or_path", None)
    name = str(name or "").lower()
    if re.search(r"llama[-_ .]?3", name):
        return "llama3"
    if "qwen" in name or "hermes" in name:
        return "hermes"
    if any(k in name for k in ("mistral", "mixtral", "ministral", "codestral")):
        return "mistral"
    return "generic"


def make_tool_call(name: str, arguments: dict, index: int) -> dict:
    """One OpenAI-style tool call with id ``call_<index>``; `arguments` become JSON text."""
    return {
        "id": f"call_{index}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def decode_for_tools(tokenizer: Any, token_ids: list[int]) -> str:
    """Decode `token_ids` without special tokens, except the tool-call markers (:data:`TOOL_MARKERS`).

    ``skip_special_tokens=True`` would also drop markers such as ``[TOOL_CALLS]``
    or ``<|python_tag|>`` that some tokenizers treat as special.
    """
    special, keep = _special_ids(tokenizer)
    ids = [t for t in token_ids if t not in special or t in keep]
    return tokenizer.decode(ids, skip_special_tokens=False)


def extract_tool_calls(
    tokenizer: Any, token_ids: list[int] | None, text: str, stop: list[str], family: str
) -> tuple[str, list[dict] | None]:
    """The ``(text, tool_calls)`` of a generation made with tools offered.

    The completion is decoded again keeping the tool-call markers (when the
    tokenizer and token ids are at hand; else `text` is parsed), cut at the
    first stop string, and parsed. No calls: `text` comes back unchanged, with
    None.
    """
    raw = text
    if tokenizer is not None and token_ids is not None:
        try:
            raw, _ = cut_at_stop(decode_for_tools(tokenizer, token_ids), stop)
        except Exception:  # noqa: BLE001 - an unusual tokenizer: parse the plain text instead
            raw = text
    content, calls = parse_tool_calls(raw, family)
    if not calls:
        return text, None
    return content, calls


def template_messages(conversation: list[dict], family: str | None = None) -> list[dict]:
    """Copies of the messages as chat templates expect them.

    Tool-call arguments given as JSON text become objects (templates write
    them with ``tojson``); a None content next to tool calls becomes "". For
    mistral, tool-call ids that are not 9 alphanumeric characters (its
    templates insist) are replaced by a stable 9-character digest, the same
    in the assistant's call and in the tool's answer.
    """
    out = []
    for message in conversation:
        msg = dict(message)
        if msg.get("tool_calls"):
            calls = []
            for call in msg["tool_calls"]:
                call = dict(call)
                fn = dict(call.get("function") or {})
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        parsed = json.loads(args) if args.strip() else {}
                    except ValueError:
                        parsed = None
                    if isinstance(parsed, dict):
                        fn["arguments"] = parsed
                call["function"] = fn
                call.setdefault("type", "function")
                if family == "mistral" and isinstance(call.get("id"), str):
                    call["id"] = _mistral_id(call["id"])
                calls.append(call)
            msg["tool_calls"] = calls
            if msg.get("content") is None:
                msg["content"] = ""
        if family == "mistral" and msg.get("role") == "tool" and isinstance(msg.get("tool_call_id"), str):
            msg["tool_call_id"] = _mistral_id(msg["tool_call_id"])
        out.append(msg)
    return out


def openai_messages(conversation: list[dict]) -> list[dict]:
    """Copies of the messages as the OpenAI API expects them.

    Tool-call arguments become JSON text, and an empty ``tool_calls`` list
    (which the API refuses) is left out.
    """
    out = []
    for message in conversation:
        msg = dict(message)
        if "tool_calls" in msg and not msg["tool_calls"]:
            del msg["tool_calls"]
        if msg.get("tool_calls"):
            calls = []
            for call in msg["tool_calls"]:
                call = dict(call)
                fn = dict(call.get("function") or {})
                if not isinstance(fn.get("arguments"), str):
                    fn["arguments"] = json.dumps(fn.get("arguments") or {}, ensure_ascii=False)
                call["function"] = fn
                call.setdefault("type", "function")
                calls.append(call)
            msg["tool_calls"] = calls
            msg.setdefault("content", None)
        out.append(msg)
    return out


# -- per-family span finders --------------------------------------------------------------------


def _llama3_spans(text: str) -> list[_Span]:
    spans: list[_Span] = []
    tag = "<|python_tag|>"
    start = text.find(tag)
    while start >= 0:
        calls, end = _call_sequence(text, start + len(tag), strict=False)
        if calls:
            spans.append((start, end, calls))
        start = text.find(tag, max(end, start + len(tag)))
    # Without the tag: JSON calls anywhere (after some prose too), a fenced one with its fence.
    fenced, fences = _fence_spans(text, exclude=spans)
    return sorted(spans + fenced + _bare_spans(text, exclude=spans + fences))


def _hermes_spans(text: str) -> list[_Span]:
    spans: list[_Span] = []
    for m in re.finditer(r"<tool_call>(.*?)(</tool_call>|\Z)", text, re.DOTALL):
        calls = _as_calls(_loads(_unfence(m.group(1).strip())), strict=False)
        end = m.end()
        if not calls and not m.group(2):  # never closed: cut at a stop string, out of tokens...
            calls, end = _unclosed_call(text, m.start(1))
        if calls:
            spans.append((m.start(), end, calls))
    return spans


def _unclosed_call(text: str, i: int) -> tuple[list[tuple[str, dict]], int]:
    """The call(s) of a ``<tool_call>`` block that was never closed, starting at `i`, and where the block ends.

    The JSON (possibly fenced) must come first; a closing tag cut short after it belongs
    to the block, anything else the model wrote on stays text.
    """
    start = _skip_space(text, i)
    fence = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?").match(text, start)
    j = _skip_space(text, fence.end()) if fence else start
    value, end = _decode_at(text, j)
    calls = _as_calls(value, strict=False) if end > j else []
    if not calls:
        return [], i
    if fence and text.startswith("```", _skip_space(text, end)):
        end = _skip_space(text, end) + 3
    tail = _skip_space(text, end)
    if "</tool_call>".startswith(text[tail:]):  # nothing more, or the closing tag cut short
        end = len(text)
    return calls, end


def _mistral_spans(text: str) -> list[_Span]:
    spans: list[_Span] = []
    marker = "[TOOL_CALLS]"
    start = text.find(marker)
    while start >= 0:
        i = _skip_space(text, start + len(marker))
        calls: list[tuple[str, dict]] = []
        end = i
        if text[i : i + 1] in ("[", "{"):
            value, end = _decode_at(text, i)
            calls = _as_calls(value, strict=False) if end > i else []
        else:  # [TOOL_CALLS]name[ARGS]{...} (or name[CALL_ID]id[ARGS]{...}), possibly several in a row
            while m := _NAMED_ARGS.match(text, end):
                value, after = _decode_at(text, _skip_space(text, m.end()))
                if after == -1 or not isinstance(value, dict):
                    break
                calls.append((m.group(1), value))
                end = after
        if calls and end > i:
            spans.append((start, end, calls))
        start = text.find(marker, max(end, start + len(marker)))
    return spans


def _generic_spans(text: str) -> list[_Span]:
    if "<tool_call>" in text:
        return _hermes_spans(text)
    if "[TOOL_CALLS]" in text:
        return _mistral_spans(text)
    if "<|python_tag|>" in text:
        return _llama3_spans(text)
    spans, fences = _fence_spans(text)
    return sorted(spans + _bare_spans(text, exclude=fences))


_SPANNERS: dict[str, Callable[[str], list[_Span]]] = {
    "llama3": _llama3_spans,
    "hermes": _hermes_spans,
    "mistral": _mistral_spans,
    "generic": _generic_spans,
}


# -- helpers ------------------------------------------------------------------------------------


def _assemble(text: str, spans: list[_Span]) -> tuple[str, list[dict]]:
    """Content (the text outside the spans) and numbered calls."""
    if not spans:
        return text, []
    spans = sorted(spans)
    pieces, calls, pos = [], [], 0
    for start, end, found in spans:
        gap = text[pos:start]
        if not (pos > 0 and re.fullmatch(r"[\s;,]*", gap)):  # separators between calls go too
            pieces.append(gap.strip())
        calls.extend(found)
        pos = end
    pieces.append(text[pos:].strip())
    content = "\n".join(p for p in pieces if p)
    return content, [make_tool_call(name, args, k) for k, (name, args) in enumerate(calls)]


def _call_sequence(text: str, i: int, strict: bool) -> tuple[list[tuple[str, dict]], int]:
    """Consecutive calls (objects or lists) from `i`, separated by whitespace or ``;``; and where they end."""
    calls: list[tuple[str, dict]] = []
    end = i
    while True:
        j = i
        while j < len(text) and (text[j].isspace() or text[j] == ";"):
            j += 1
        value, after = _decode_at(text, j)
        found = _as_calls(value, strict) if after > j else []
        if not found:
            return calls, end
        calls.extend(found)
        end = i = after


def _fence_spans(text: str, exclude: list[_Span] = ()) -> tuple[list[_Span], list[_Span]]:
    """Fenced blocks (```json, or no language) that hold only calls; and every fenced block.

    Fences starting inside an `exclude` span are ignored.
    """
    spans: list[_Span] = []
    fences: list[_Span] = []
    for m in re.finditer(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n?(.*?)```", text, re.DOTALL):
        if any(s <= m.start() < e for s, e, _ in exclude):
            continue
        fences.append((m.start(), m.end(), []))
        if m.group(1).lower() not in ("", "json", "tool_call", "tool_code"):
            continue
        calls = _as_calls(_loads(m.group(2).strip()), strict=True)
        if calls:
            spans.append((m.start(), m.end(), calls))
    return spans, fences


def _bare_spans(text: str, exclude: list[_Span]) -> list[_Span]:
    """JSON objects (or lists of them) anywhere in `text` that are calls with explicit arguments."""
    spans: list[_Span] = []
    i = 0
    while True:
        i = _next_bracket(text, i)
        if i < 0:
            return spans
        inside = next((e for s, e, _ in exclude if s <= i < e), None)
        if inside is not None:
            i = inside
            continue
        value, end = _decode_at(text, i)
        if end == _TOO_DEEP:  # a pile of brackets: go on from its last one (no call starts deeper)
            j, last = i, i + 1
            while j < len(text) and (text[j] in "[{" or text[j].isspace()):
                if text[j] in "[{":
                    last = j
                j += 1
            i = max(last, i + 1)
            continue
        if end <= i:  # not JSON here
            i += 1
            continue
        calls = _as_calls(value, strict=True)
        if calls:
            spans.append((i, end, calls))
        i = end  # a JSON value that is not a call: skip what is inside it too


def _next_bracket(text: str, i: int) -> int:
    found = [k for k in (text.find("{", i), text.find("[", i)) if k >= 0]
    return min(found) if found else -1


_TOO_DEEP = -2


def _decode_at(text: str, i: int) -> tuple[Any, int]:
    """The JSON value starting at `i` and where it ends; (None, -1) if there is none, (None, -2) if too deep."""
    try:
        return _DECODER.raw_decode(text, i)
    except ValueError:
        return None, -1
    except RecursionError:
        return None, _TOO_DEEP


def _loads(body: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _unfence(body: str) -> str:
    m = re.fullmatch(r"```[A-Za-z0-9_-]*\s*(.*?)\s*```", body, re.DOTALL)
    return m.group(1) if m else body


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _as_calls(value: Any, strict: bool) -> list[tuple[str, dict]]:
    """`value` as calls: one call object, or a non-empty list whose items all are calls; else []."""
    if isinstance(value, list):
        calls = [_as_call(v, strict) for v in value]
        return [c for c in calls if c is not None] if calls and all(calls) else []
    call = _as_call(value, strict)
    return [call] if call else []


def _as_call(obj: Any, strict: bool) -> tuple[str, dict] | None:
    """`(name, arguments)` if `obj` is a call object; `strict` also requires the arguments key."""
    if not isinstance(obj, dict):
        return None
    if "name" not in obj and isinstance(obj.get("function"), dict):  # OpenAI-shaped
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    if "arguments" in obj:
        args = obj["arguments"]
    elif "parameters" in obj:
        args = obj["parameters"]
    elif strict:
        return None
    else:
        args = {}
    if isinstance(args, str):  # arguments written as JSON text
        args = _loads(args) if args.strip() else {}
    if args is None and not strict:
        args = {}
    if not isinstance(args, dict):
        return None
    return name.strip(), args


def _template_text(source: Any) -> str:
    if source is None:
        return ""
    if isinstance(source, str):
        return source
    if isinstance(source, dict):
        return "\n".join(str(v) for v in source.values())
    return _template_text(getattr(source, "chat_template", None))


def _special_ids(tokenizer: Any) -> tuple[set[int], set[int]]:
    """The ids of the tokenizer's special tokens, and those of them that are tool-call markers."""
    special = set(getattr(tokenizer, "all_special_ids", None) or ())
    keep: set[int] = set()
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for token_id, token in added.items():
        content = getattr(token, "content", str(token))
        if getattr(token, "special", False):
            special.add(token_id)
        if content in TOOL_MARKERS:
            keep.add(token_id)
    return special, keep


def _mistral_id(call_id: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9]{9}", call_id):
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]
