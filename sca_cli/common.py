"""What every command shares: consoles, flags derived from the config dataclasses, error exits.

A command's flags are written out in its function's signature: typer reads them there, and a reader
sees every flag of a command in one place, in the order of its `--help`. Each takes its default, help
and bounds from a config field (:func:`flag`), so the library states each default once (as TRL's
scripts derive their parsers from dataclass fields). Every command runs its stage inside
:func:`stage_errors`, the one mapping from the errors a user can fix to a one-line message and an
exit code.

rich is imported on first use only, and the config modules are standard library only, so
`sca --help` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, fields
from functools import cache
from typing import Any, NoReturn, TypeVar

import typer

from sandbox.config import BACKEND_NAMES, SandboxConfig
from sca.agent.config import ACTION_FORMATS, ExecutorConfig
from sca.inference.config import BACKEND_NAMES as MODEL_BACKENDS
from sca.inference.config import ModelConfig

#: exit codes (README, "Common behaviour of every stage"): bad input, options or setup; the model failed
EXIT_BAD_INPUT = 2
EXIT_MODEL = 1

Config = TypeVar("Config")


@cache
def _console(stderr: bool) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # A terminal sets its own width; a log file or a pipe gets tables wide enough not to wrap.
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 160)


class _LazyConsole:
    def __init__(self, stderr: bool):
        self._stderr = stderr

    def __getattr__(self, name: str) -> Any:
        return getattr(_console(self._stderr), name)


#: progress, warnings and summaries go to stderr, so `-o -` keeps stdout pure JSONL
err_console = _LazyConsole(stderr=True)
out_console = _LazyConsole(stderr=False)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print a one-line error and exit (code 2 = bad input, as documented)."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    from rich.markup import escape

    err_console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


SKIP_INVALID = typer.Option(
    False, "--skip-invalid", help="Report and skip bad input lines instead of stopping at the first one."
)
OVERWRITE = typer.Option(False, "--overwrite", help="Start the output afresh instead of resuming it.")


def examples(*commands: str) -> str:
    """An epilog listing example command lines (kept unwrapped by click)."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {c}" for c in commands)


# -- flags from config fields ------------------------------------------------------------------------


def flag(config: Any, name: str, *decls: str, **option: Any) -> Any:
    """The typer option `decls` of the field `name` of `config`, a config dataclass or an instance of one
    (a role's defaults, such as ``executor_defaults()``): its default is the field's (the instance's
    value), its help and bounds those in the field's ``metadata`` ("help", "min", "max"). `option` adds
    to them or overrides them: another help, or ``default=None`` where an unset flag leaves the config
    its own default (which the help then names)."""
    spec = {f.name: f for f in fields(config)}[name]
    settings = {key: spec.metadata[key] for key in ("help", "min", "max") if key in spec.metadata}
    settings.update(option)
    if "default" in settings:
        default = settings.pop("default")
    elif not isinstance(config, type):
        default = getattr(config, name)
    else:
        default = spec.default if spec.default is not MISSING else spec.default_factory()
    return typer.Option(default, *decls, **settings)


def field_help(config: Any, name: str) -> str:
    """The help of the field `name` of `config` (for a flag whose help adds to it)."""
    return {f.name: f for f in fields(config)}[name].metadata["help"]


def configured(cls: type[Config], *args: Any, **kwargs: Any) -> Config:
    """``cls(*args, **kwargs)``: a config from the flags; a value it refuses (its ValueError) is a one-line
    error, exit 2."""
    try:
        return cls(*args, **kwargs)
    except ValueError as e:
        fail(str(e))


# -- errors: one mapping for every command --------------------------------------------------------------
#: the errors a stage raises for what the user can fix: (module, class, message, exit code). Anything
#: else is a bug, and keeps its traceback.
EXITS = (
    ("sca.records.io", "InputError", "{}", EXIT_BAD_INPUT),  # bad input: FILE:LINE: what is wrong
    ("envs", "UnknownEnvironmentError", "{}", EXIT_BAD_INPUT),
    ("sca.benchmarks.m3.official", "OfficialTaskError", "{}", EXIT_BAD_INPUT),  # a CodeAct checkout refused
    ("sandbox.result", "SandboxUnavailable", "sandbox unavailable: {}", EXIT_BAD_INPUT),
    ("sca.inference.base", "InferenceError", "model: {}", EXIT_MODEL),
)


@contextmanager
def stage_errors() -> Iterator[None]:
    """Run a stage: an error of :data:`EXITS` becomes its one-line message and exit code.

    Each class is looked up only where its module is loaded: an error of a module never imported
    cannot have been raised, and so this imports nothing (the command imports what its stage needs).
    """
    try:
        yield
    except Exception as e:
        for module, name, message, code in EXITS:
            cls = getattr(sys.modules.get(module), name, None)
            if cls is not None and isinstance(e, cls):
                fail(message.format(e), code)
        raise


# -- the sandbox flags, shared by every command that runs model-written code --------------------------
SANDBOX = flag(SandboxConfig, "backend", "--sandbox")
WORKERS = flag(SandboxConfig, "workers", "--workers", default=None)  # None: SandboxConfig's (the cores)
TIMEOUT = flag(SandboxConfig, "timeout", "--timeout")
MEMORY_MB = flag(SandboxConfig, "memory_mb", "--memory-mb")
MAX_TOOL_CALLS = flag(SandboxConfig, "max_tool_calls", "--max-tool-calls")
MAX_TOOL_BYTES = flag(SandboxConfig, "max_tool_bytes", "--max-tool-bytes")


def sandbox_config(backend: str, workers: int | None, timeout: float, memory_mb: int | None = None,
                   max_tool_calls: int | None = None, max_tool_bytes: int | None = None) -> SandboxConfig:
    """The SandboxConfig the sandbox flags describe (a one-line error, exit 2, if they are wrong); a
    setting without a flag (None: `sca train` has only the first three) keeps SandboxConfig's default."""
    if backend not in BACKEND_NAMES:
        fail(f"--sandbox must be one of {', '.join(BACKEND_NAMES)}, not {backend!r}")
    given = {"timeout": timeout, "memory_mb": memory_mb, "max_tool_calls": max_tool_calls,
             "max_tool_bytes": max_tool_bytes, "workers": workers}
    return configured(SandboxConfig, backend=backend, **{k: v for k, v in given.items() if v is not None})


# -- model flags: a role's model, backend, servers and sampling ----------------------------------------
# A command takes the defaults of its stage's role (flag(executor_defaults(), "temperature", ...)), so
# the defaults shown are the role's own.


def model_flag(what: str = "") -> Any:
    """--model, its help led by the role it names (`what`: "Executor: ")."""
    return flag(ModelConfig, "model", "--model", help=what + field_help(ModelConfig, "model"))


BASE_URL = flag(ModelConfig, "base_urls", "--base-url", default=None)  # None: no server (not an empty list)


def model_config(model: str | None, backend: str, base_urls: list[str] | None, temperature: float, top_p: float,
                 max_new_tokens: int, prefix: str = "--") -> ModelConfig:
    """The ModelConfig the model flags describe (a one-line error, exit 2, if they are wrong); `prefix`:
    their names' ("--user-" for the simulated user's)."""
    if backend not in MODEL_BACKENDS:
        fail(f"{prefix}backend must be one of {', '.join(MODEL_BACKENDS)}, not {backend!r}")
    if base_urls and backend != "openai":
        fail(f"{prefix}base-url goes with {prefix}backend openai")
    return configured(ModelConfig, model=model, backend=backend, base_urls=list(base_urls or []),
                      temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)


# -- the executor's flags, shared by `sca rollout` and `sca eval` ----------------------------------------
USER_MODEL = typer.Option(None, "--user-model", help="Simulated user's model [default: the executor's].")
USER_BACKEND = typer.Option(None, "--user-backend", help="Simulated user's backend [default: the executor's].")
USER_BASE_URL = typer.Option(None, "--user-base-url", help="Simulated user's server(s) [default: the executor's].")
USER_TEMPERATURE = flag(ModelConfig, "temperature", "--user-temperature", default=None,
                        help="[default: the executor's]")
ACTION_FORMAT = flag(ExecutorConfig, "action_format", "--action-format")
MAX_STEPS = flag(ExecutorConfig, "max_steps", "--max-steps")


def executor_configs(model: str | None, backend: str, base_url: list[str] | None, temperature: float, top_p: float,
                     max_new_tokens: int, user_model: str | None, user_backend: str | None,
                     user_base_url: list[str] | None, user_temperature: float | None, action_format: str,
                     max_steps: int) -> tuple[ModelConfig, ModelConfig | None, ExecutorConfig]:
    """The executor's ModelConfig, the simulated user's (None: the executor's) and the ExecutorConfig
    that the flags describe (a one-line error, exit 2, if they are wrong)."""
    if action_format not in ACTION_FORMATS:
        fail(f"--action-format must be one of {', '.join(ACTION_FORMATS)}, not {action_format!r}")
    executor = model_config(model, backend, base_url, temperature, top_p, max_new_tokens)
    user = user_config(executor, user_model, user_backend, user_base_url, user_temperature)
    return executor, user, configured(ExecutorConfig, max_steps=max_steps, action_format=action_format)


def user_config(executor: ModelConfig, user_model: str | None, user_backend: str | None,
                user_base_url: list[str] | None, user_temperature: float | None) -> ModelConfig | None:
    """The simulated user's ModelConfig that the --user-* flags describe, each unset one taken from
    `executor` (its model, backend, servers where the backend is the same, and sampling); None when no
    --user-* flag is set: the user is then the executor's model with the executor's settings. `sca
    rollout`, `sca eval` and GRPO (`sca train --algo grpo`) build their user here."""
    return _role_config(executor, user_model, user_backend, user_base_url, user_temperature, "--user-")


def _role_config(executor: ModelConfig, model: str | None, backend: str | None, base_url: list[str] | None,
                 temperature: float | None, prefix: str) -> ModelConfig | None:
    """Another role's ModelConfig from its flags (`prefix`: their names'), each unset one taken from
    `executor` (servers only where the backend is the same); None when none is set."""
    if not (model or backend or base_url or temperature is not None):
        return None
    b = backend or executor.backend
    urls = base_url if base_url else (executor.base_urls if b == executor.backend else None)
    return model_config(model or executor.model, b, urls, executor.temperature if temperature is None else temperature,
                        executor.top_p, executor.max_new_tokens, prefix=prefix)


# -- the judge's flags (--reward judge), shared by `sca rollout` and `sca train --algo grpo` --------------------
JUDGE_MODEL = typer.Option(None, "--judge-model", help="Judge's model, with --reward judge [default: the executor's].")
JUDGE_BACKEND = typer.Option(None, "--judge-backend", help="Judge's backend [default: the executor's].")
JUDGE_BASE_URL = typer.Option(None, "--judge-base-url", help="Judge's server(s) [default: the executor's].")
JUDGE_TEMPERATURE = flag(ModelConfig, "temperature", "--judge-temperature", default=None,
                         help="Judge's sampling temperature [default: the executor's].")


def judge_flags_set(judge_model: str | None, judge_backend: str | None, judge_base_url: list[str] | None,
                    judge_temperature: float | None) -> bool:
    """Whether any --judge-* flag is set (they go with --reward judge)."""
    return bool(judge_model or judge_backend or judge_base_url or judge_temperature is not None)


def judge_config(executor: ModelConfig, judge_model: str | None, judge_backend: str | None,
                 judge_base_url: list[str] | None, judge_temperature: float | None) -> ModelConfig | None:
    """The judge's ModelConfig that the --judge-* flags describe, each unset one taken from `executor` (as
    :func:`user_config` does for the simulated user); None when no --judge-* flag is set: the judge is then
    the executor's model with the executor's settings."""
    return _role_config(executor, judge_model, judge_backend, judge_base_url, judge_temperature, "--judge-")
