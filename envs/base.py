"""The interface every environment implements, and what is known of one without building it.

An environment is a tool-using world: a policy text, a set of tools (each
read or write, each with a JSON schema of its parameters), and a hidden state
that the tools read and change. (The tasks measured on it are its benchmark's:
:mod:`sca.benchmarks`.)

An :class:`EnvSpec` holds the static facts of an environment (its name, description,
whether a simulated user speaks in it, its tools) and its factory: stages that need a fact
ask the spec, and build an environment only to run an episode in it.

The environment object lives only in the trusted process. Model-written code
reaches it through :meth:`Environment.call` (from the sandbox's request
channel), never directly.
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Literal

from sandbox.errors import ToolError, UnknownToolError, WriteForbiddenError

__all__ = ["EnvSpec", "Environment", "Tool", "ToolError", "ToolKind", "UnknownToolError", "WriteForbiddenError",
           "check_arguments", "schema_alternatives", "schema_from_signature", "to_json_value"]

ToolKind = Literal["read", "write"]


@dataclass(frozen=True)
class Tool:
    """One tool: its name, description, JSON schema of parameters, read or write."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema: {"type": "object", "properties": ..., "required": [...]}
    kind: ToolKind
    returns: str = ""  # a one-line description of what it returns, when known

    @property
    def param_names(self) -> list[str]:
        return list(self.parameters.get("properties", {}))

    @property
    def required(self) -> list[str]:
        return list(self.parameters.get("required", []))

    def signature(self) -> str:
        """A Python-like signature, e.g. ``get_order_details(order_id: str)``."""
        parts = []
        required = set(self.required)
        for name, schema in self.parameters.get("properties", {}).items():
            typ = _schema_type_name(schema)
            part = f"{name}: {typ}" if typ else name
            if name not in required:
                default = schema.get("default")
                part += f" = {default!r}"
            parts.append(part)
        return f"{self.name}({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "signature": self.signature(),
            "description": self.description,
            "kind": self.kind,
            "parameters": self.parameters,
            "returns": self.returns,
        }

    def openai_schema(self) -> dict[str, Any]:
        """The tool in the OpenAI function-calling format (used by chat templates)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def _schema_type_name(schema: dict[str, Any]) -> str:
    if "type" in schema:
        t = schema["type"]
        if t == "array" and isinstance(schema.get("items"), dict):
            inner = _schema_type_name(schema["items"])
            return f"list[{inner}]" if inner else "list"
        return {"string": "str", "integer": "int", "number": "float", "boolean": "bool",
                "object": "dict", "array": "list", "null": "None"}.get(t, str(t))
    for key in ("anyOf", "oneOf"):
        if key in schema:
            names = [_schema_type_name(s) for s in schema[key]]
            return " | ".join(n for n in names if n)
    return ""


class Environment(ABC):
    """Base class of every environment.

    Subclasses set :attr:`name` and :attr:`description` and implement the
    abstract methods. A module ``envs/<name>.py`` that defines ``make()``
    returning an instance is all it takes to add one (see :mod:`envs`).
    """

    name: str = ""
    description: str = ""
    #: whether tasks are given to a simulated user (TauBench) or to the agent directly
    user_facing: bool = False

    # -- description -------------------------------------------------------
    @property
    @abstractmethod
    def policy(self) -> str:
        """The policy text the agent must follow (may be empty)."""

    @abstractmethod
    def tools(self) -> list[Tool]:
        """Every tool, in a stable order."""

    def tool(self, name: str) -> Tool:
        for t in self.tools():
            if t.name == name:
                return t
        raise UnknownToolError(f"unknown tool {name!r}")

    def tool_names(self) -> list[str]:
        return [t.name for t in self.tools()]

    # -- state -------------------------------------------------------------
    @abstractmethod
    def reset(self) -> None:
        """Return to the initial state. Called before every run; must be fast."""

    @abstractmethod
    def state_hash(self) -> str:
        """A hash of the current state: equal states give equal hashes."""

    @abstractmethod
    def _call(self, name: str, args: dict[str, Any]) -> Any:
        """Run tool `name`; return a JSON-able value or raise :class:`ToolError`."""

    def call(self, name: str, args: dict[str, Any] | None = None, *, allow_write: bool = True) -> Any:
        """Call a tool by name with JSON arguments.

        Returns the tool's result as plain JSON values (decoded from its JSON
        encoding, so the caller never holds a reference into the state).
        Raises :class:`ToolError` with the environment's message on refusal,
        :class:`UnknownToolError` for a name that is not a tool, and
        :class:`WriteForbiddenError` for a write tool when ``allow_write`` is false.
        """
        args = dict(args or {})
        tool = self.tool(name)
        if tool.kind == "write" and not allow_write:
            raise WriteForbiddenError(f"write tool {name!r} called where only read tools are allowed")
        check_arguments(tool, args)
        result = self._call(name, args)
        return to_json_value(result)

    # -- prompts and the environment's own rules ----------------------------
    #: one more rule for the challenger's prompt: what makes a good task here (may be empty)
    challenger_guidance: str = ""

    def challenger_context(self, rng: Any) -> dict[str, Any]:
        """Extra facts for the challenger's prompt (e.g. a sampled user id)."""
        return {}

    def finalize_instruction(self, instruction: str) -> str:
        """A valid task's instruction as the executor (or the simulated user) will get it.

        Called by ``sca propose`` after validation; the original is kept in the task's
        ``meta.original_instruction``. Default: unchanged.
        """
        return instruction

    # -- what `sca audit` asks (mutants of a task's solution: sca.audit) ------------------------
    #: whether the state the write tools leave is what a task asks for. False where the writes only move
    #: a position (web browsing's page and scroll): a task there is judged on its answer, so a mutant that
    #: only browses differently is no counterexample, and `sca audit` compares answers only.
    outcome_state: bool = True

    def argument_alternatives(self, tool: str, args: dict[str, Any]) -> dict[str, list[Any]]:
        """Other values each argument of a call of write tool `tool` with `args` could take that the tool
        would accept, by argument name, the most plausible first (the current state is the initial one).
        ``sca audit`` changes one argument of a solution's write to each, to see whether ``evaluate()``
        notices. Default: what the tool's schema alone offers (another member of an enum, the other
        boolean, an integer one up or down); an environment adds what its state knows (tau: another id of
        the same kind that the same user owns)."""
        try:
            properties = self.tool(tool).parameters.get("properties", {})
        except UnknownToolError:
            return {}
        out: dict[str, list[Any]] = {}
        for name, value in args.items():
            others = schema_alternatives(properties.get(name, {}), value)
            if others:
                out[name] = others
        return out


class EnvSpec:
    """An environment as known without building one: its name, description, whether a simulated
    user speaks in it, its tools (names, kinds, JSON schemas), and the factory of fresh instances.

    A built-in environment's module declares its spec (``SPEC``); a plug-in's entry point names
    one, or names a factory only, whose spec is then read off one instance (:meth:`of_instance`).
    `tools` is called once, on first use: the tools of some environments come from an installed
    package (tau2's toolkits) that a command listing names only should not import.
    """

    def __init__(self, name: str, description: str, factory: Callable[[], Environment], *,
                 tools: Callable[[], list[Tool]], user_facing: bool = False) -> None:
        self.name = name
        self.description = description
        self.factory = factory
        self.user_facing = user_facing
        self._load_tools = tools
        self._tools: list[Tool] | None = None

    @classmethod
    def of_class(cls, env_class: type[Environment], factory: Callable[[], Environment], *,
                 tools: Callable[[], list[Tool]]) -> EnvSpec:
        """The spec of an environment whose class states its name, description and user."""
        return cls(env_class.name, env_class.description, factory, tools=tools, user_facing=env_class.user_facing)

    @classmethod
    def of_instance(cls, factory: Callable[[], Environment], where: str) -> EnvSpec:
        """The spec of a factory that declares nothing: read off one instance it builds."""
        env = _checked(factory(), where)
        return cls(env.name, env.description, factory, tools=env.tools, user_facing=env.user_facing)

    def tools(self) -> list[Tool]:
        """Every tool, in the environment's order."""
        if self._tools is None:
            self._tools = list(self._load_tools())
        return list(self._tools)

    def tool_schemas(self) -> list[dict[str, Any]]:
        """The tools in the OpenAI function-calling format (offered to a model natively)."""
        return [t.openai_schema() for t in self.tools()]

    def make(self) -> Environment:
        """A fresh instance, in its initial state."""
        return _checked(self.factory(), repr(self.name))

    def summary(self) -> dict[str, Any]:
        """What ``sca envs`` lists of it."""
        tools = self.tools()
        return {
            "name": self.name,
            "description": self.description,
            "tools": len(tools),
            "read_tools": sum(t.kind == "read" for t in tools),
            "write_tools": sum(t.kind == "write" for t in tools),
            "user_facing": self.user_facing,
        }


def _checked(env: Any, where: str) -> Environment:
    if not isinstance(env, Environment):
        raise TypeError(f"environment factory for {where} returned {type(env).__name__}, not an Environment")
    return env


def schema_alternatives(schema: dict[str, Any], value: Any) -> list[Any]:
    """Other values than `value` that a parameter's JSON schema alone names: the other members of its
    enum (also inside ``anyOf``/``oneOf``), the other boolean, or an integer one up and one down (not
    below 0: counts and amounts)."""
    enums = list(schema.get("enum", []))
    for key in ("anyOf", "oneOf"):
        for option in schema.get(key, []):
            if isinstance(option, dict):
                enums += option.get("enum", [])
    if enums:
        return [e for i, e in enumerate(enums) if e != value and e not in enums[:i]]
    if isinstance(value, bool):
        return [not value] if schema.get("type") in (None, "boolean") else []
    if isinstance(value, int) and schema.get("type") == "integer":
        return [value + 1] + ([value - 1] if value > 0 else [])
    return []


def check_arguments(tool: Tool, args: dict[str, Any]) -> None:
    """Refuse unknown or missing arguments with a clear :class:`ToolError`."""
    known = tool.param_names
    unknown = [a for a in args if a not in known]
    if unknown:
        raise ToolError(f"{tool.name}() got an unexpected keyword argument {unknown[0]!r}")
    missing = [p for p in tool.required if p not in args]
    if missing:
        raise ToolError(f"{tool.name}() missing required argument {missing[0]!r}")


def to_json_value(value: Any) -> Any:
    """Whatever a tool returned, as it would look after a JSON round trip."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)  # pydantic models
    if callable(dump):
        return dump(mode="json")
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    raise TypeError(f"tool returned a value that is not JSON: {type(obj).__name__}")


def schema_from_signature(func: Any, doc_params: dict[str, str] | None = None) -> dict[str, Any]:
    """A JSON schema of a Python function's parameters, from its annotations.

    For environments written in this package: a tool is a method with type
    hints; this turns it into the schema :class:`Tool` needs.
    """
    doc_params = doc_params or {}
    props: dict[str, Any] = {}
    required: list[str] = []
    for name, p in inspect.signature(func).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        schema = _annotation_schema(p.annotation)
        if name in doc_params:
            schema["description"] = doc_params[name]
        if p.default is inspect.Parameter.empty:
            required.append(name)
        else:
            schema["default"] = p.default
        props[name] = schema
    return {"type": "object", "properties": props, "required": required}


def _annotation_schema(ann: Any) -> dict[str, Any]:
    if isinstance(ann, str):
        ann = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}.get(ann, ann)
    mapping = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}
    if ann in mapping:
        return {"type": mapping[ann]}
    origin = getattr(ann, "__origin__", None)
    if origin in (list, tuple):
        args = getattr(ann, "__args__", ())
        out: dict[str, Any] = {"type": "array"}
        if args:
            out["items"] = _annotation_schema(args[0])
        return out
    if origin is dict:
        return {"type": "object"}
    return {}
