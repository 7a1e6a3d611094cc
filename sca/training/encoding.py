"""Conversations as tokens: the assistant-only mask, its check, token parity and the end of turn.

**The loss covers the assistant's own tokens only**, in every assistant turn: never the
system prompt, user messages, observations or tool results. We build the mask from the chat
template ourselves, so it works with any template, with or without ``{% generation %}``
markers: the conversation is rendered progressively, and for the assistant message i

    context_i = render(messages[:i], add_generation_prompt=True)
    turn_i    = render(messages[:i + 1])[len(context_i):]

``turn_i`` (the reply, the end-of-turn token, and any glue the template writes after it) is
tokenized on its own and appended after the tokens of what came before; its tokens up to and
including the first end-of-turn token are trained, the glue after it (e.g. the newline after
``<|im_end|>``) is not: the model never generates it; after the last reply it is dropped (no
newline, empty turn or generation prompt left untrained at the end of an example). The end-of-turn
tokens are the checkpoint's eos ids, the tokenizer's eos token and the chat template's own
end-of-turn token (read from a rendered probe reply), so a tokenizer whose eos token is missing or
differs from the template's still trains each reply to its end of turn. A template that renders an earlier
part of the conversation differently once later turns exist (``render(messages[:i])`` not a
prefix of ``render(messages[:i+1])``, e.g. templates that drop reasoning from past turns)
cannot be trained on whole conversations and is refused with a one-line error. Messages after
the last assistant reply carry no loss and are dropped. **Before any training**, every
example is checked independently of how its mask was made (:func:`verify_mask`): the trained
positions must form exactly one run per assistant message, each run must decode to that message's
content and end with its end-of-turn token (unless the model stopped without one); this is checked
again on each example as trained, after the cut at ``max_length`` (:func:`window`); otherwise the run
stops with a one-line error naming the record and turn.

**Token parity** (``token_ids``, ``--token-ids``): a record's ``assistant_token_ids`` are the
token ids the model generated for each assistant message. ``check`` (default): re-tokenizing
each reply must reproduce them (the re-tokenized reply, or the same without its final
end-of-turn token when generation stopped on a stop string or the length limit); any mismatch
stops the run with the count and the first example. What is trained is then what the model
produced, as under ``use``: a reply it ended without an end-of-turn token is trained without one. ``use``: the generated ids are trained
on as they are (the reply's span is replaced by them; the template's end-of-turn token, when
the model did not generate one, follows as untrained context); mismatches are counted and
reported. ``ignore``: replies are re-tokenized and the ids are not looked at.

The same encoder turns GRPO's episodes into TRL's prompt, completion and mask
(:mod:`sca.training.grpo`). Needs a tokenizer, not TRL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sca.records.io import InputError
from sca.training.options import TOKEN_ID_POLICIES


@dataclass
class Encoded:
    """One conversation as tokens: `mask` is 1 on trained (assistant) tokens."""

    id: str
    input_ids: list[int]
    mask: list[int]
    expected: list[str]  # per assistant message, the text its trained tokens must decode to
    tool_names: list[list[str]]  # per assistant message, the tool names its span must mention
    #: per assistant message: its trained tokens end with an end-of-turn token (False when the model's own
    #: ids end without one: stopped on a stop string or the length limit, or a template that writes none)
    eot: list[bool] = field(default_factory=list)
    eos_ids: list[int] = field(default_factory=list)  # the end-of-turn token ids
    cut: bool = False  # cut at max_length inside its last trained span (see `window`)


@dataclass
class Parity:
    """Token parity between generated ids and re-tokenized replies, over the turns that have ids."""

    checked: int = 0
    mismatched: int = 0
    used: int = 0
    first: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ChatEncoder:
    """Encodes conversations with a tokenizer's chat template (see the module docstring)."""

    def __init__(self, tokenizer: Any, token_ids: str = "check", eos_token_ids: Iterable[int] | None = None):
        if token_ids not in TOKEN_ID_POLICIES:
            raise ValueError(f"token_ids must be one of {', '.join(TOKEN_ID_POLICIES)}")
        if not getattr(tokenizer, "chat_template", None):
            raise InputError("the tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.policy = token_ids
        self.eos = set(end_of_turn_ids(tokenizer, eos_token_ids))
        self.parity = Parity()

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool, where: str, index: int) -> str:
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as e:  # noqa: BLE001 (jinja raises its own errors: unsupported role, raise_exception...)
            raise InputError(f"{where}: the chat template fails on messages[:{index}]: {' '.join(str(e).split())}") \
                from None
        if not isinstance(text, str):
            raise InputError(f"{where}: the chat template did not render text")
        return text

    def _tokens(self, text: str) -> list[int]:
        # the template writes every special token it wants (as hf inference does)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, record: dict[str, Any], where: str) -> Encoded:
        messages = record["messages"]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        gen_ids = record.get("assistant_token_ids") or []
        ids: list[int] = []
        mask: list[int] = []
        expected: list[str] = []
        tools: list[list[str]] = []
        eot: list[bool] = []
        done = ""  # the text encoded so far
        k = -1  # index of the assistant message among assistant messages
        for i in range(last + 1):
            if messages[i]["role"] != "assistant":
                continue
            k += 1
            context = self._render(messages[:i], True, where, i)
            if not context.startswith(done):
                raise InputError(
                    f"{where}: the chat template is not prefix-stable: rendering messages[:{i}] changes the text "
                    f"of earlier turns, so a whole conversation would not match what the model saw; "
                    "use a template that renders past turns unchanged"
                )
            ids += self._tokens(context[len(done):])
            mask += [0] * (len(ids) - len(mask))
            full = self._render(messages[: i + 1], False, where, i + 1)
            if not full.startswith(context):
                raise InputError(
                    f"{where}: the chat template is not prefix-stable at messages[{i}]: the reply does not follow "
                    "the generation prompt (add_generation_prompt) as rendered"
                )
            turn_text = full[len(context):]
            piece = self._tokens(turn_text)
            eos_at = next((j for j, t in enumerate(piece) if t in self.eos), None)
            trained = piece[: eos_at + 1] if eos_at is not None else piece
            after = piece[eos_at + 1:] if eos_at is not None else []
            content = messages[i].get("content") or ""
            want = content if turn_text.startswith(content) else content.strip()
            generated = gen_ids[k] if k < len(gen_ids) else None
            if generated is not None and self.policy != "ignore":
                self.parity.checked += 1
                # the model stopped without its end-of-turn token (a stop string, put back in the text; the
                # length limit): its ids are the re-tokenized reply without the template's end-of-turn
                same = generated == trained or (eos_at is not None and generated == trained[:-1])
                if not same:
                    self.parity.mismatched += 1
                    if self.parity.first is None:
                        self.parity.first = f"{where}: assistant message {k} (messages[{i}]): " + _first_diff(
                            self.tokenizer, generated, trained)
                if self.policy == "use":
                    self.parity.used += 1
                if same or self.policy == "use":
                    # what is trained is what the model produced, under check as under use: its ids; the
                    # template's end-of-turn token, when the model did not generate one, follows as context
                    if not (generated and generated[-1] in self.eos) and eos_at is not None:
                        after = piece[eos_at:]
                    trained = list(generated)
                    if not same:
                        want = self.tokenizer.decode(trained, skip_special_tokens=True,
                                                     clean_up_tokenization_spaces=False)
            if i == last:
                # nothing after the last reply is trained or kept: the template's glue after it (a newline, a
                # generation prompt, an empty turn) would sit untrained at the end of every example; only the
                # end-of-turn token stays, as context, when the model did not generate it
                after = after[:1] if after and after[0] in self.eos else []
            ids += trained
            mask += [1] * len(trained)
            ids += after
            mask += [0] * len(after)
            expected.append(want)
            eot.append(bool(trained) and trained[-1] in self.eos)
            tools.append([str((c.get("function") or {}).get("name", "")) for c in messages[i].get("tool_calls") or []
                          if isinstance(c, dict)])
            done = full
        return Encoded(id=str(record["id"]), input_ids=ids, mask=mask, expected=expected, tool_names=tools,
                       eot=eot, eos_ids=sorted(self.eos))


def template_end_of_turn(tokenizer: Any) -> int | None:
    """The special token a chat template closes an assistant turn with (``<|im_end|>``, ``<|eot_id|>``...),
    found by rendering a probe reply; None if the template writes none (or cannot render the probe)."""
    reply = "sca-probe-reply"
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    special |= {i for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
                if getattr(t, "special", False)}
    for start in ([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                  [{"role": "user", "content": "u"}]):
        try:
            context = tokenizer.apply_chat_template(start, tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(start + [{"role": "assistant", "content": reply}], tokenize=False)
        except Exception:  # noqa: BLE001, S112 (a template that refuses a system message: try without)
            continue
        if not (isinstance(full, str) and isinstance(context, str) and full.startswith(context)):
            continue
        at = full.find(reply, len(context))
        if at < 0:
            continue
        for t in tokenizer(full[at + len(reply):], add_special_tokens=False)["input_ids"]:
            if t in special:
                return t
        return None
    return None


def end_of_turn_ids(tokenizer: Any, eos_token_ids: Iterable[int] | None = ()) -> list[int]:
    """The tokens that end an assistant turn: the checkpoint's eos ids (`eos_token_ids`, from its generation
    config), the tokenizer's eos token, and the chat template's own end-of-turn token (which a tokenizer whose
    eos_token is missing or different, e.g. a base model's, does not name)."""
    eos = {int(t) for t in eos_token_ids or () if t is not None}
    if getattr(tokenizer, "eos_token_id", None) is not None:
        eos.add(tokenizer.eos_token_id)
    eot = template_end_of_turn(tokenizer)
    if eot is not None:
        eos.add(eot)
    return sorted(eos)


def ensure_pad_token(tokenizer: Any, eos_ids: list[int]) -> None:
    """A pad token for batching: the tokenizer's, else its eos token, else the template's end-of-turn token."""
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    elif eos_ids:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(eos_ids[0])
    else:
        raise InputError("the tokenizer has no pad, eos or end-of-turn token to pad batches with")


def _first_diff(tokenizer: Any, generated: list[int], retokenized: list[int]) -> str:
    at = next((j for j, (a, b) in enumerate(zip(generated, retokenized)) if a != b), min(len(generated), len(retokenized)))
    g, r = generated[at: at + 4], retokenized[at: at + 4]
    return (f"at token {at}, generated {g} {tokenizer.decode(g, clean_up_tokenization_spaces=False)!r} vs "
            f"re-tokenized {r} {tokenizer.decode(r, clean_up_tokenization_spaces=False)!r} "
            f"({len(generated)} vs {len(retokenized)} tokens)")


def mask_runs(mask: list[int]) -> list[tuple[int, int]]:
    """The [start, end) runs of 1s in a 0/1 mask."""
    runs, start = [], None
    for j, bit in enumerate(mask):
        if bit and start is None:
            start = j
        elif not bit and start is not None:
            runs.append((start, j))
            start = None
    if start is not None:
        runs.append((start, len(mask)))
    return runs


def verify_mask(tokenizer: Any, enc: Encoded, where: str) -> None:
    """Check, independently of how the mask was built, that it covers exactly the assistant turns.

    The trained tokens must form one run per assistant message, in order, each decoding to that
    message's content (a tool-calling message: starting with its content and naming its tools) and
    ending with the end-of-turn token exactly when the turn has one (``Encoded.eot``). An example cut
    at max_length (:func:`window`, ``Encoded.cut``) is checked as it is trained: its last run may stop
    at the end of the sequence, a prefix of its message. Raises :class:`InputError` (one line) otherwise.
    """
    if len(enc.mask) != len(enc.input_ids):
        raise InputError(f"{where}: the assistant mask has {len(enc.mask)} entries for {len(enc.input_ids)} tokens")
    runs = mask_runs(enc.mask)
    if not runs:
        raise InputError(f"{where}: the assistant mask is empty: no token would be trained")
    if len(runs) != len(enc.expected):
        raise InputError(
            f"{where}: the assistant mask has {len(runs)} trained spans for {len(enc.expected)} assistant messages"
        )
    eos = set(enc.eos_ids)
    for k, ((s, e), want, names) in enumerate(zip(runs, enc.expected, enc.tool_names)):
        got = tokenizer.decode(enc.input_ids[s:e], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if enc.cut and k == len(runs) - 1:  # cut by max_length: a prefix of the message (a split character aside)
            if e != len(enc.input_ids) or not want.startswith(got.rstrip("\ufffd")):
                raise InputError(
                    f"{where}: the assistant mask does not match assistant message {k} as cut at max_length: its "
                    f"tokens decode to {_clip(got)} but the message starts {_clip(want[:len(got) + 10])}"
                )
            continue
        ok = got.startswith(want) and all(n in got for n in names) if names else got == want
        if not ok:
            raise InputError(
                f"{where}: the assistant mask does not match assistant message {k}: its tokens decode to "
                f"{_clip(got)} but the message is {_clip(want)}"
            )
        if k < len(enc.eot) and (enc.input_ids[e - 1] in eos) != enc.eot[k]:
            what = "leaves out its end-of-turn token" if enc.eot[k] else "ends on an end-of-turn token the model " \
                                                                         "did not generate"
            raise InputError(f"{where}: the assistant mask of assistant message {k} {what}")


def window(enc: Encoded, start: int, end: int) -> Encoded:
    """`enc` as a trainer gets it: cut at `end` (max_length) and trained only from `start` on (a DPO
    completion after its shared prompt); the messages it keeps are those whose trained span starts in
    [start, end), and a span that `end` cuts sets ``cut``. Check the result with :func:`verify_mask`."""
    runs = mask_runs(enc.mask)
    keep = [k for k, (s, _) in enumerate(runs) if start <= s < end]
    return dataclasses.replace(
        enc, input_ids=enc.input_ids[:end], mask=[0] * min(start, end) + enc.mask[start:end],
        expected=[enc.expected[k] for k in keep if k < len(enc.expected)],
        tool_names=[enc.tool_names[k] for k in keep if k < len(enc.tool_names)],
        eot=[enc.eot[k] for k in keep if k < len(enc.eot)],
        cut=bool(keep) and runs[keep[-1]][1] > end,
    )


def _clip(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[: n // 2] + "..." + text[-n // 2:])


def check_parity(parity: Parity, policy: str) -> None:
    """Under `check`, any mismatch between generated and re-tokenized ids stops the run."""
    if policy == "check" and parity.mismatched:
        raise InputError(
            f"token ids: {parity.mismatched} of {parity.checked} assistant messages are not reproduced by "
            f"re-tokenizing; first: {parity.first}; pass --token-ids use to train on the generated ids, "
            "or --token-ids ignore to re-tokenize"
        )


def eos_token_ids(model_path: str) -> list[int]:
    """End-of-turn ids of a checkpoint's generation config (as the hf inference backend stops on)."""
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except Exception:  # noqa: BLE001 (no generation_config.json: the tokenizer's eos alone)
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
