"""Every JSONL record that flows between stages, and how it is checked on read.

Records stay plain dicts (so fields a stage does not know pass through
untouched); a :class:`RecordSchema` names the fields a stage relies on and
checks them. The CaT task follows ``docs/CAT.md`` exactly, in each task format (:mod:`sca.task_formats`:
a record has its format's parts, no more); the trajectory (as rollout writes it,
and as train reads it) and the training log line, ``docs/TRAJECTORY.md``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from sca.task_formats import FORMAT_PARTS, TASK_FORMATS, task_format


class RecordError(ValueError):
    """A record breaks its schema: `field` names the culprit ("" for the whole record)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "object"}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    for t, name in _TYPE_NAMES.items():
        if type(value) is t:
            return name
    return type(value).__name__


@dataclass(frozen=True)
class Field:
    name: str
    type: type
    required: bool = True
    item_type: type | None = None  # for lists: the type of every item
    non_empty: bool = False
    doc: str = ""
    choices: tuple[Any, ...] = ()  # where set: the only values allowed
    part: bool = False  # a part of a task (sca.task_formats): required in its record's format, absent elsewhere

    def check(self, record: dict[str, Any]) -> None:
        if self.part:
            fmt = task_format(record)
            if self.name not in FORMAT_PARTS.get(fmt, ()):
                if self.name in record:
                    raise RecordError(self.name, f"a task of format {fmt} has no {self.name} (docs/CAT.md, "
                                                 "'Task formats'): drop the field, or name the format the task has")
                return
        if self.name not in record:
            if self.required:
                raise RecordError(self.name, "missing required field")
            return
        value = record[self.name]
        if value is None and not self.required:
            return
        ok = isinstance(value, self.type) and not (self.type is int and isinstance(value, bool))
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise RecordError(self.name, f"expected {_TYPE_NAMES.get(self.type, self.type.__name__)}, got {_type_name(value)}")
        if self.non_empty and not value:
            raise RecordError(self.name, "must not be empty")
        if self.choices and value not in self.choices:
            raise RecordError(self.name, f"expected one of {', '.join(map(str, self.choices))}, got {json.dumps(value)}")
        if self.item_type is not None:
            for i, item in enumerate(value):
                if not isinstance(item, self.item_type):
                    raise RecordError(
                        f"{self.name}[{i}]",
                        f"expected {_TYPE_NAMES.get(self.item_type, self.item_type.__name__)}, got {_type_name(item)}",
                    )


@dataclass(frozen=True)
class RecordSchema:
    """The fields one kind of record must have; extra fields are always allowed."""

    name: str
    fields: tuple[Field, ...]
    id_field: str = "id"
    extra_checks: tuple[Callable[[dict[str, Any]], None], ...] = field(default=())

    def check(self, record: Any) -> None:
        """Raise :class:`RecordError` for the first problem found."""
        if not isinstance(record, dict):
            raise RecordError("", f"expected a JSON object, got {_type_name(record)}")
        for f in self.fields:
            f.check(record)
        for extra in self.extra_checks:
            extra(record)


def check_known_env(record: dict[str, Any]) -> None:
    from envs import env_names  # cheap: lists module names, imports no environment

    names = env_names()
    if record["env"] not in names:
        raise RecordError("env", f"unknown environment {record['env']!r} (available: {', '.join(names)})")


#: a record's task format (sca.task_formats): absent or null means cat; checked before the parts it decides
FORMAT_FIELD = Field("format", str, required=False, choices=TASK_FORMATS,
                     doc="cat (the default) | eval-only | instruction-only")

# -- the CaT task (docs/CAT.md): the parts (part=True) are those of the record's format, no more -------------
CAT_TASK = RecordSchema(
    name="CaT task",
    fields=(
        Field("id", str, non_empty=True, doc="unique within a file"),
        Field("env", str, non_empty=True, doc="environment name"),
        FORMAT_FIELD,
        Field("instruction", str, part=True, doc="what the executor (or simulated user) is asked to achieve"),
        Field("evaluation_function", str, part=True, doc="Python source defining evaluate() or evaluate(answer)"),
        Field("solution", str, part=True, doc="Python source of one example solution"),
        Field("failure_cases", list, item_type=str, part=True,
              doc="Python sources of near misses that must not pass"),
        Field("meta", dict, required=False, doc="anything else, carried through untouched"),
    ),
    extra_checks=(check_known_env,),
)


def check_validation(record: dict[str, Any]) -> None:
    """The ``validation`` object `sca validate` adds (docs/CAT.md, "The checks"), when present: ``valid``,
    each of ``checks`` naming its check and whether it passed, and for a rejected task its ``reason`` and
    the ``failed_check``."""
    v = record.get("validation")
    if v is None:
        return
    if not isinstance(v.get("valid"), bool):
        raise RecordError("validation.valid", "expected a boolean")
    if "format" in v and v["format"] != task_format(record):  # a verdict on a task of another format
        raise RecordError("validation.format", f"the validation is of a {v['format']} task, the record a "
                                               f"{task_format(record)} one")
    checks = v.get("checks")
    if checks is not None:
        if not isinstance(checks, list):
            raise RecordError("validation.checks", "expected a list")
        for i, c in enumerate(checks):
            if not isinstance(c, dict) or not isinstance(c.get("check"), str) or not isinstance(c.get("ok"), bool):
                raise RecordError(f"validation.checks[{i}]", "expected an object with check (string) and ok (boolean)")
    if not v["valid"]:
        if not isinstance(v.get("reason"), str) or not v["reason"]:
            raise RecordError("validation.reason", "expected the rejection reason (a string)")
        if v.get("failed_check") is not None and not isinstance(v["failed_check"], str):
            raise RecordError("validation.failed_check", "expected a string")


# -- a failed propose episode (docs/CAT.md, "Failed episodes"): what sca propose writes to --rejected ---------
#: the ``kind`` of a failed episode's record; a task record has no ``kind``
FAILED_EPISODE_KIND = "failed_episode"

#: why a challenger episode ended without a valid task (its ``reason``)
EPISODE_FAILURES = ("invalid_answer", "max_steps", "context_limit", "inference_error", "sandbox_error")


def check_failed_episode(record: dict[str, Any]) -> None:
    """No task field at the top (it is no task); the last answer holds parts of its format only, and
    has the validation that judged it beside it."""
    parts = FORMAT_PARTS[task_format(record)]
    for name in FORMAT_PARTS["cat"]:
        if name in record:
            raise RecordError(name, f"a failed episode has no {name}: its last answer is under last_answer")
    answer = record.get("last_answer")
    if answer is not None:
        for name in answer:
            if name not in parts:
                raise RecordError(f"last_answer.{name}", f"not a part of a {task_format(record)} task")
        if record.get("validation") is None:
            raise RecordError("validation", "the last answer's validation is missing")
    elif record.get("validation") is not None:
        raise RecordError("last_answer", "a validation without the answer it judged")
    check_validation(record)


FAILED_EPISODE = RecordSchema(
    name="failed episode",
    fields=(
        Field("kind", str, choices=(FAILED_EPISODE_KIND,)),
        Field("id", str, non_empty=True, doc="<env>-s<seed>-e<episode>: the key of resume"),
        Field("env", str, non_empty=True),
        FORMAT_FIELD,
        Field("reason", str, non_empty=True, doc="invalid_answer | max_steps | context_limit | *_error"),
        Field("steps", int, required=False, doc="the challenger's replies"),
        Field("last_answer", dict, required=False, doc="the parts of its last ANSWER, as given; absent: none"),
        Field("validation", dict, required=False, doc="the verdict on the last answer"),
        Field("meta", dict, required=False, doc="the episode's account; its transcript last"),
    ),
    extra_checks=(check_failed_episode,),
)


# -- a validated task: what sca validate writes (accepted and rejected alike) ---------------------
VALIDATED_TASK = RecordSchema(
    name="validated CaT task",
    fields=CAT_TASK.fields + (Field("validation", dict, doc="the verdict of the CaT checks"),),
    extra_checks=(check_known_env, check_validation),
)


#: the roles of a trajectory's messages
ROLES = ("system", "user", "assistant", "tool")


#: the key of a system message whose text is in the file's sidecar (``system_prompts``), not in the record
PROMPT_REF = "content_sha256"
_HEX = frozenset("0123456789abcdef")


def prompt_sha256(text: str) -> str:
    """The key of a system prompt in a sidecar's ``system_prompts``: the SHA-256 of its UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def prompt_reference(message: Any) -> str | None:
    """The hash a system message names in place of its text (``{"role": "system", "content": null,
    "content_sha256": HEX}``, docs/TRAJECTORY.md), else None."""
    if isinstance(message, dict) and message.get("content") is None and PROMPT_REF in message:
        ref = message[PROMPT_REF]
        if message.get("role") == "system" and isinstance(ref, str) and len(ref) == 64 and set(ref) <= _HEX:
            return ref
    return None


def check_messages(record: dict[str, Any]) -> None:
    """Each message an object with a known role and text content (an assistant message that calls tools may
    have null content; the system prompt may name its text in the sidecar by hash); the system prompt first."""
    messages = record["messages"]
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RecordError(f"messages[{i}]", f"expected an object, got {_type_name(m)}")
        role = m.get("role")
        if role not in ROLES:
            raise RecordError(f"messages[{i}].role", f"expected one of {', '.join(ROLES)}, got {role!r}")
        content = m.get("content")
        if i == 0 and PROMPT_REF in m and content is None:
            if prompt_reference(m) is None:
                raise RecordError(f"messages[0].{PROMPT_REF}", "expected the SHA-256 (64 hex digits) of a system "
                                                               "prompt in the sidecar")
            continue
        if not isinstance(content, str) and not (content is None and role == "assistant" and m.get("tool_calls")):
            raise RecordError(f"messages[{i}].content", f"expected string, got {_type_name(content)}")
    if messages[0].get("role") != "system":
        raise RecordError("messages[0].role", f"the system prompt must come first, got {messages[0].get('role')!r}")


def check_reward(record: dict[str, Any]) -> None:
    """A reward, where there is one, is 0, 1 or null (an infrastructure failure); never a boolean."""
    r = record.get("reward")
    if r is not None and (isinstance(r, bool) or r not in (0, 1)):
        raise RecordError("reward", f"expected 0, 1 or null, got {json.dumps(r)}")


def check_reward_present(record: dict[str, Any]) -> None:
    """The reward is there, null included (a reader that sorts trajectories by reward cannot guess one)."""
    if "reward" not in record:
        raise RecordError("reward", "missing required field")


def check_trial_id(record: dict[str, Any]) -> None:
    """The id of a trajectory that sca rollout wrote is ``<task_id>#<trial>``: the key of resume."""
    if record["id"] != f"{record['task_id']}#{record['trial']}":
        raise RecordError("id", f"expected {record['task_id']}#{record['trial']}, got {record['id']!r}")


def check_token_ids(record: dict[str, Any]) -> None:
    """``assistant_token_ids``: one entry per assistant message, each a list of token ids or null."""
    ids = record.get("assistant_token_ids")
    if ids is None:
        return
    if not isinstance(ids, list):
        raise RecordError("assistant_token_ids", f"expected list or null, got {_type_name(ids)}")
    n = sum(1 for m in record["messages"] if m.get("role") == "assistant")
    if len(ids) != n:
        raise RecordError("assistant_token_ids", f"{len(ids)} entries for {n} assistant messages")
    for i, entry in enumerate(ids):
        if entry is None:
            continue
        if not isinstance(entry, list) or any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in entry):
            raise RecordError(f"assistant_token_ids[{i}]", "expected a list of token ids (integers >= 0) or null")


# -- the trajectory (docs/TRAJECTORY.md): what sca rollout writes, sca train reads --------------
TRAJECTORY = RecordSchema(
    name="trajectory",
    fields=(
        Field("id", str, non_empty=True, doc="<task_id>#<trial>"),
        Field("task_id", str, non_empty=True),
        Field("trial", int),
        Field("env", str, non_empty=True),
        FORMAT_FIELD,  # the task's, copied
        Field("instruction", str),
        Field("messages", list, non_empty=True, doc="OpenAI-style chat messages, the system prompt first"),
        Field("tool_calls", list, required=False),
        Field("tool_calls_omitted", int, required=False, doc="calls past the 1,000 recorded, counted only"),
        Field("final_answer", str, required=False),
        Field("reward", int, required=False, doc="0, 1, or null for an infrastructure failure"),
        Field("evaluation", dict, required=False),
        Field("termination", str, required=False),
        Field("infra_error", dict, required=False),
        Field("steps", int, required=False),
        Field("action_format", str, required=False),
        Field("reward_source", str, required=False, doc="evaluate (the task's code) | judge (a model's verdict)"),
        Field("assistant_token_ids", list, required=False),
        Field("tokens", dict, required=False),
        Field("timings", dict, required=False),
        Field("models", dict, required=False),
        Field("meta", dict, required=False),
    ),
    extra_checks=(check_messages, check_reward, check_trial_id, check_token_ids),
)

#: every way an episode of the executor ends
TERMINATIONS = ("final_answer", "user_stop", "max_steps", "context_limit", "error")


def _picked(schema: RecordSchema, names: tuple[str, ...], optional: tuple[str, ...] = ()) -> tuple[Field, ...]:
    """The fields `names` of `schema`, as it defines them; those in `optional` may be missing or null."""
    by_name = {f.name: f for f in schema.fields}
    return tuple(replace(by_name[n], required=False) if n in optional else by_name[n] for n in names)


# -- the trajectory as sca train reads it: the fields it relies on, from another tool as from rollout --------
TRAINING_TRAJECTORY = RecordSchema(
    name="trajectory",
    fields=_picked(TRAJECTORY, ("id", "task_id", "trial", "messages", "assistant_token_ids"), optional=("trial",)),
    extra_checks=(check_messages, check_reward_present, check_reward, check_token_ids),
)
"""The trajectory record as ``sca train`` reads it: the same fields and checks as :data:`TRAJECTORY`, but only
those training relies on. Trajectories written by another tool are trained on too, so ``trial`` (used only to
order DPO pairs), ``env`` and ``instruction`` may be missing and the id need not be ``<task_id>#<trial>``; the
reward must be there (0, 1, or null: left out), as it decides what is trained, and may be written 1.0 or 0.0."""

# -- an eval result: a trajectory scored by a benchmark's own scorer ----------------------------
EVAL_RESULT = RecordSchema(
    name="eval result",
    fields=TRAJECTORY.fields + (
        Field("split", str, required=False),
        Field("scorer", str, required=False, doc="tau2 | m3_tolerant | evaluate"),
        Field("scorer_detail", dict, required=False),
    ),
    extra_checks=TRAJECTORY.extra_checks,
)

# -- the layout of a trajectory line (docs/TRAJECTORY.md): for reading by hand --------------------
#: the fields a reader looks at first, in this order (those a record has): which trial, its outcome
TRAJECTORY_SUMMARY = ("id", "task_id", "trial", "env", "format", "split", "benchmark_task_id", "reward",
                      "reward_source", "scorer", "termination", "final_answer", "answer", "steps", "infra_error",
                      "instruction")
#: the conversation, last: an 11 KB system prompt and the token ids would bury everything after them
TRAJECTORY_CONVERSATION = ("messages", "tool_calls", "assistant_token_ids")


#: what ends a record: a task's or failed episode's account (``meta``, its transcript last), a trajectory's
#: conversation
RECORD_TAIL = ("meta",) + TRAJECTORY_CONVERSATION


def with_field(record: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """The record with `key` set to `value`, placed before its tail (:data:`RECORD_TAIL`), else last: a
    field a stage adds to a finished record (the run that made it) keeps the conversation last."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if k in RECORD_TAIL and key not in out:
            out[key] = value
        if k != key:
            out[k] = v
    out.setdefault(key, value)
    return out


def summary_first(record: dict[str, Any]) -> dict[str, Any]:
    """The record with the fields of :data:`TRAJECTORY_SUMMARY` first and those of
    :data:`TRAJECTORY_CONVERSATION` last, every other field between them in its order: JSON key order
    only, no field added, dropped or renamed."""
    head = {k: record[k] for k in TRAJECTORY_SUMMARY if k in record}
    tail = {k: record[k] for k in TRAJECTORY_CONVERSATION if k in record}
    return {**head, **{k: v for k, v in record.items() if k not in head and k not in tail}, **tail}


# -- a training log line (docs/TRAJECTORY.md, "Training logs"): what sca train writes, sca report reads ----------
#: the numbers of a train log line, each a number or null where present: every line's, DPO's, GRPO's
TRAIN_LOG_NUMBERS = ("epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s", "elapsed_s",
                     "reward_margin", "reward_accuracy", "logps_chosen", "logps_rejected",
                     "reward", "reward_std", "frac_reward_zero_std", "kl")
#: the counts of a train log line, each an integer or null where present: tokens trained on so far (TRL's
#: count), and GRPO's episodes and groups since the start of the run
TRAIN_LOG_COUNTS = ("num_tokens", "groups", "groups_uniform", "episodes", "rewarded", "infra_failures", "unrewarded")


def check_train_log_line(record: dict[str, Any]) -> None:
    """A step (an integer), its numbers and counts, and a loss: the training loss or an eval loss."""
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise RecordError("step", "missing or not an integer")
    for name in TRAIN_LOG_NUMBERS:
        value = record.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RecordError(name, f"expected a number or null, got {type(value).__name__}")
    for name in TRAIN_LOG_COUNTS:
        value = record.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise RecordError(name, f"expected an integer or null, got {type(value).__name__}")
    if record.get("loss") is None and record.get("eval_loss") is None:
        raise RecordError("loss", "a train log line needs loss or eval_loss")


TRAIN_LOG_LINE = RecordSchema(name="train log line", fields=(), id_field="step", extra_checks=(check_train_log_line,))
"""One line of ``CHECKPOINT_DIR/train_log.jsonl``: ``step`` and, as the logging step had them, the numbers of
:data:`TRAIN_LOG_NUMBERS` and the counts of :data:`TRAIN_LOG_COUNTS`; fields beyond those pass. Steps repeat
(an eval line beside a training line, a run resumed from an earlier checkpoint), so check lines one by one
(``TRAIN_LOG_LINE.check``) rather than through a reader that wants unique ids."""
