"""Every JSONL record that flows between stages, and how it is checked on read.

Records stay plain dicts (so fields a stage does not know pass through
untouched); a :class:`RecordSchema` names the fields a stage relies on and
checks them. The CaT task follows ``docs/CAT.md`` exactly; the trajectory, ``docs/TRAJECTORY.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


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

    def check(self, record: dict[str, Any]) -> None:
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


# -- the CaT task (docs/CAT.md) ----------------------------------------
CAT_TASK = RecordSchema(
    name="CaT task",
    fields=(
        Field("id", str, non_empty=True, doc="unique within a file"),
        Field("env", str, non_empty=True, doc="environment name"),
        Field("instruction", str, doc="what the executor (or simulated user) is asked to achieve"),
        Field("evaluation_function", str, doc="Python source defining evaluate() or evaluate(answer)"),
        Field("solution", str, doc="Python source of one example solution"),
        Field("failure_cases", list, item_type=str, doc="Python sources of near misses that must not pass"),
        Field("meta", dict, required=False, doc="anything else, carried through untouched"),
    ),
    extra_checks=(check_known_env,),
)


def check_trajectory(record: dict[str, Any]) -> None:
    """What a reader of trajectories relies on beyond the field types."""
    messages = record["messages"]
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise RecordError(f"messages[{i}]", "expected an object with role system, user, assistant or tool")
        if not isinstance(m.get("content"), str) and not (m.get("role") == "assistant" and m.get("tool_calls")):
            raise RecordError(f"messages[{i}].content", "expected a string")
    if not messages or messages[0].get("role") != "system":
        raise RecordError("messages", "the first message must be the system prompt")
    reward = record.get("reward")
    if reward not in (0, 1, None) or isinstance(reward, float) and reward not in (0.0, 1.0):
        raise RecordError("reward", f"expected 0, 1 or null, got {reward!r}")
    if record["id"] != f"{record['task_id']}#{record['trial']}":
        raise RecordError("id", f"expected {record['task_id']}#{record['trial']}, got {record['id']!r}")
    ids = record.get("assistant_token_ids")
    if ids is not None:
        assistants = sum(1 for m in messages if m.get("role") == "assistant")
        if not isinstance(ids, list) or len(ids) != assistants:
            raise RecordError("assistant_token_ids", f"expected a list of {assistants} entries (one per assistant message)")
        for i, row in enumerate(ids):
            if row is not None and (not isinstance(row, list) or not all(isinstance(t, int) for t in row)):
                raise RecordError(f"assistant_token_ids[{i}]", "expected a list of integers or null")


# -- the trajectory (docs/TRAJECTORY.md): what sca rollout writes, sca train reads --------------
TRAJECTORY = RecordSchema(
    name="trajectory",
    fields=(
        Field("id", str, non_empty=True, doc="<task_id>#<trial>"),
        Field("task_id", str, non_empty=True),
        Field("trial", int),
        Field("env", str, non_empty=True),
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
        Field("assistant_token_ids", list, required=False),
        Field("tokens", dict, required=False),
        Field("timings", dict, required=False),
        Field("models", dict, required=False),
        Field("meta", dict, required=False),
    ),
    extra_checks=(check_trajectory,),
)

#: every way an episode of the executor ends
TERMINATIONS = ("final_answer", "user_stop", "max_steps", "context_limit", "error")

# -- an eval result: a trajectory scored by a benchmark's own scorer ----------------------------
EVAL_RESULT = RecordSchema(
    name="eval result",
    fields=TRAJECTORY.fields + (
        Field("split", str, required=False),
        Field("scorer", str, required=False, doc="tau2 | m3_tolerant | evaluate"),
        Field("scorer_detail", dict, required=False),
    ),
    extra_checks=(check_trajectory,),
)
