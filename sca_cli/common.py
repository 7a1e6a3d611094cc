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
from typing import Any, NoReturn, Optional, TypeVar

import typer
from typer._click.core import ParameterSource  # typer's own click, which its commands use
from typer._click.exceptions import BadParameter
from typer.core import TyperCommand, TyperGroup

from sandbox.config import BACKEND_NAMES, SandboxConfig
from sca.agent.config import ACTION_FORMATS, ExecutorConfig
from sca.inference.config import BACKEND_NAMES as MODEL_BACKENDS
from sca.inference.config import ModelConfig

#: exit codes (docs/stages.md, "Common behaviour of every stage"): bad input, options or setup; the model failed
EXIT_BAD_INPUT = 2
EXIT_MODEL = 1

Config = TypeVar("Config")


@cache
def _console(stderr: bool) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # A terminal sets its own width; a log file or a pipe gets tables wide enough not to wrap.
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 160)


#: what -q turns off: the summaries of err_console (errors and warnings are printed either way)
_quiet = {"on": False}


class _LazyConsole:
    def __init__(self, stderr: bool):
        self._stderr = stderr

    def __getattr__(self, name: str) -> Any:
        if name == "print" and self._stderr and _quiet["on"]:
            return lambda *args, **kwargs: None
        return getattr(_console(self._stderr), name)


#: progress, warnings and summaries go to stderr, so `-o -` keeps stdout pure JSONL; under -q, only errors and
#: warnings (fail, warn)
err_console = _LazyConsole(stderr=True)
out_console = _LazyConsole(stderr=False)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print a one-line error and exit (code 2 = bad input, as documented)."""
    from rich.markup import escape

    _console(True).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    from rich.markup import escape

    _console(True).print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


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
    ("sca.metrics_log", "MetricsLogUnavailable", "{}", EXIT_BAD_INPUT),  # --report-to's library is missing
)


@contextmanager
def stage_errors() -> Iterator[None]:
    """Run a stage: an error of :data:`EXITS` becomes its one-line message and exit code.

    Each class is looked up only where its module is loaded: an error of a module never imported
    cannot have been raised, and so this imports nothing (the command imports what its stage needs).
    """
    try:
        yield
    except KeyboardInterrupt as e:  # SIGINT or SIGTERM: the stage has said how to resume; 128 + the signal
        raise typer.Exit(getattr(e, "exit_code", 130)) from None
    except Exception as e:
        for module, name, message, code in EXITS:
            cls = getattr(sys.modules.get(module), name, None)
            if cls is not None and isinstance(e, cls):
                fail(message.format(e), code)
        raise


def output_or_default(given: str | None, stage: str, name: str, suffix: str = ".jsonl", *,
                      directory: bool = False) -> str:
    """-o, or where it is left out the default under runs/ (:func:`sca.records.io.output_path`, the one rule),
    printed first; a -o that is a directory where a file is written is a one-line error, exit 2."""
    from sca.records.io import output_path

    with stage_errors():
        path = output_path(given, stage, name, suffix, directory=directory)
    if given is None:
        err_console.print(f"output: {path}", markup=False, highlight=False, soft_wrap=True)
    return path


def split_ids(values: list[str] | None) -> list[str] | None:
    """--task-ids, comma-separated or repeated (`--task-ids a,b --task-ids c`), as one list; None: not given."""
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()] or None


@contextmanager
def closing_metrics(metrics: Any) -> Iterator[None]:
    """Run a stage that logs to `metrics` (``--report-to``; None: none): if the stage stops, its sinks
    are closed (what they hold is kept); if it finishes, the command logs the summary and closes them."""
    try:
        yield
    except BaseException:
        if metrics is not None:
            metrics.close()
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


def _role_flags_set(model: str | None, backend: str | None, base_url: list[str] | None,
                    temperature: float | None) -> bool:
    """Whether any of a role's flags (--user-*, --judge-*) is set."""
    return bool(model or backend or base_url or temperature is not None)


def _role_config(executor: ModelConfig, model: str | None, backend: str | None, base_url: list[str] | None,
                 temperature: float | None, prefix: str) -> ModelConfig | None:
    """Another role's ModelConfig from its flags (`prefix`: their names'), each unset one taken from
    `executor` (servers only where the backend is the same); None when none is set."""
    if not _role_flags_set(model, backend, base_url, temperature):
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
    return _role_flags_set(judge_model, judge_backend, judge_base_url, judge_temperature)


def judge_config(executor: ModelConfig, judge_model: str | None, judge_backend: str | None,
                 judge_base_url: list[str] | None, judge_temperature: float | None) -> ModelConfig | None:
    """The judge's ModelConfig that the --judge-* flags describe, each unset one taken from `executor` (as
    :func:`user_config` does for the simulated user); None when no --judge-* flag is set: the judge is then
    the executor's model with the executor's settings."""
    return _role_config(executor, judge_model, judge_backend, judge_base_url, judge_temperature, "--judge-")


# -- what every stage command takes besides its own flags: --config, --log-level, -q; renamed flags ----------
# Written once here, for every command, by the command class (:func:`stage_command`) rather than in each
# signature: they set how the command runs (its flags' values, its output), not what its stage does.

#: the levels of --log-level
LOG_LEVELS = ("debug", "info", "warning", "error")
#: the packages whose loggers --log-level sets (other libraries' stay at warning)
LOGGERS = ("sca", "stages", "sandbox", "envs", "sca_cli")
#: libraries whose loggers print through a handler of their own: the root handler leaves their records alone
OWN_HANDLER = ("transformers",)
LOG_LEVEL_HELP = "Level of sca's log messages on stderr: " + ", ".join(LOG_LEVELS) + " [default: warning]."
QUIET_HELP = "No progress and no summary: only errors and warnings (and the output)."
CONFIG_HELP = ("YAML file of flag values (keys: this command's flag names, e.g. max-new-tokens or max_new_tokens); "
               "flags given on the command line win.")


@cache
def _log_handler() -> Any:
    """The one handler of log records: to the sys.stderr of the moment (a test runner swaps it between
    commands), as `warning: sandbox.pool: ...`. Made on first use: logging costs `sca --help` time."""
    import logging

    class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
        @property  # type: ignore[override]
        def stream(self) -> Any:
            return sys.stderr

        @stream.setter
        def stream(self, value: Any) -> None:  # StreamHandler.__init__ sets it
            pass

    class LevelFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"{record.levelname.lower()}: {record.name}: {record.getMessage()}"

    def not_printed_already(record: logging.LogRecord) -> bool:
        # transformers prints its records through its own handler, and also hands them on to the root logger
        # where the environment variable CI is set (as in GitHub Actions): printed once, by transformers
        return not any(record.name == own or record.name.startswith(own + ".") for own in OWN_HANDLER)

    handler = StderrHandler()
    handler.setFormatter(LevelFormatter())
    handler.addFilter(not_printed_already)
    return handler


def set_output(quiet: bool | None = None, log_level: str | None = None) -> None:
    """-q (progress off, err_console's summaries off) and --log-level (the level of sca's loggers); None
    leaves a setting as it is. Log records go to stderr through one handler, added once."""
    if quiet is not None:
        from sca.records.progress import set_enabled

        _quiet["on"] = quiet
        set_enabled(not quiet)
    import logging

    if log_level is not None:
        for name in LOGGERS:
            logging.getLogger(name).setLevel(log_level.upper())
    root = logging.getLogger()
    if _log_handler() not in root.handlers:
        root.addHandler(_log_handler())


def _key(name: str) -> str:
    """A flag's name as a config file may spell it: `--max-new-tokens`, `max-new-tokens`, `max_new_tokens`."""
    return name.lstrip("-").replace("-", "_")


_CONFIG_FILE, _CONFIG_KEYS = "sca.config_file", "sca.config_keys"  # in ctx.meta


def _read_config(ctx: Any, param: Any, path: str | None) -> str | None:
    """--config FILE.yaml: its values become the command's defaults (click's default_map), so a flag on the
    command line wins over the file, and the file over the built-in defaults (as `sca train --config`).
    Eager: read before any other flag is looked at. A key that names no flag of the command, or a value its
    flag refuses, is a one-line error naming the file and the key."""
    if path is None:
        return None
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        fail(f"{path}: {e.strerror or e}")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        fail(f"{path}{f':{mark.line + 1}' if mark is not None else ''}: not valid YAML: "
             f"{getattr(e, 'problem', None) or e}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        fail(f"{path}: expected a mapping of flag: value, got {type(data).__name__}")
    command = ctx.command
    params = {}
    for p in command.params:
        if p.name != "config_file":
            for name in (p.name, *getattr(p, "opts", ())):
                params[_key(name)] = p
    renamed = {_key(old): new for old, new in getattr(command, "renamed", {}).items()}
    values: dict[str, Any] = {}
    keys: dict[str, str] = {}
    for key, value in data.items():
        k = _key(str(key))
        if k in renamed:
            warn(f"{path}: {key} is the old name of {renamed[k]}; it goes in the next release")
            k = _key(renamed[k])
        p = params.get(k)
        if p is None:
            import difflib

            close = difflib.get_close_matches(k, sorted(params), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            fail(f"{path}: unknown key {key!r}: {ctx.command_path} has no flag --{k.replace('_', '-')}{hint}")
        if (p.multiple or p.nargs != 1) and value is not None and not isinstance(value, list):
            value = [value]
        values[p.name] = value
        keys[p.name] = str(key)
    ctx.default_map = {**(ctx.default_map or {}), **values}
    ctx.meta[_CONFIG_FILE], ctx.meta[_CONFIG_KEYS] = path, keys  # a value its flag refuses names them
    return path


def _quiet_flag(value: bool) -> bool:
    if value:  # off unless set here or by `sca -q`
        set_output(quiet=True)
    return value


def _log_level_flag(value: str | None) -> str | None:
    if value is not None:
        if value.lower() not in LOG_LEVELS:
            fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}, not {value!r}")
        set_output(log_level=value)
    return value


def _config_flag(ctx: typer.Context, value: str | None) -> str | None:
    return _read_config(ctx, None, value)


@cache  # made once, shared by every command: a parameter holds no state of its command (ctx.command does)
def _shared_options(config: bool) -> tuple[Any, ...]:
    """The click parameters of --config (where `config`), --log-level and -q, made by typer from a signature
    like any command's. None of them reaches the command's function (expose_value=False): their callbacks
    act at once."""
    shared = typer.Typer(add_completion=False)

    @shared.command()
    def options(
        config_file: Optional[str] = typer.Option(None, "--config", metavar="FILE.yaml", is_eager=True,
                                                  expose_value=False, callback=_config_flag, help=CONFIG_HELP),
        log_level: Optional[str] = typer.Option(None, "--log-level", metavar="LEVEL", expose_value=False,
                                                callback=_log_level_flag, help=LOG_LEVEL_HELP),
        quiet: bool = typer.Option(False, "-q", "--quiet", expose_value=False, callback=_quiet_flag, help=QUIET_HELP),
    ) -> None: ...

    return tuple(p for p in typer.main.get_command(shared).params if config or p.name != "config_file")


def _rename(args: list[str], renamed: dict[str, str]) -> list[str]:
    """The command line with each deprecated flag (`--k`, `--k=3`) under its new name, one warning each."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":  # what follows is arguments, not flags
            return out + args[i:]
        name, eq, value = arg.partition("=")
        if name in renamed:
            new = renamed[name]
            if any(a == new or a.startswith(new + "=") for a in args):
                fail(f"{name} is the old name of {new}: give one")
            warn(f"{name} is deprecated and goes in the next release: use {new}")
            arg = new + eq + value
        out.append(arg)
    return out


def stage_command(renamed: dict[str, str] | None = None, config: bool = True) -> type:
    """The click command class of a stage's command: its own flags (typer's, from its signature) plus
    --config FILE.yaml (unless `config` is False: `sca train` has its own, of TRL options), --log-level and
    -q; `renamed` maps an old flag to its new name (`{"--k": "--trials"}`): the old one still works for one
    release, with a warning, and the new one's help names it."""
    renamed = dict(renamed or {})

    class StageCommand(TyperCommand):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for p in self.params:
                for old, new in renamed.items():
                    if new in getattr(p, "opts", ()):
                        p.help = f"{p.help or ''} Was {old} (deprecated).".strip()
            self.params.extend(_shared_options(config))

        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
            try:
                return super().parse_args(ctx, _rename(list(args), renamed))
            except BadParameter as e:  # a value of the --config file: say which file and key
                key = ctx.meta.get(_CONFIG_KEYS, {}).get(getattr(e.param, "name", None))
                if key is None or ctx.get_parameter_source(e.param.name) != ParameterSource.DEFAULT_MAP:
                    raise
                fail(f"{ctx.meta[_CONFIG_FILE]}: {key}: {e.message}")

    StageCommand.renamed = renamed  # type: ignore[attr-defined]
    return StageCommand


class CommandGroup(TyperGroup):
    """The click group class of a command with sub-commands (``sca envs``): --config FILE.yaml, --log-level
    and -q on the group's own command as on every other (its sub-commands take them too, through
    :func:`stage_command`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_shared_options(True))
