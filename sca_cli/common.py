"""What every command shares: consoles, option definitions, error exits.

rich is imported on first use only, so `sca --help` stays fast.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NoReturn

import typer

from sandbox.config import BACKEND_NAMES, SandboxConfig
from sca.inference.config import BACKEND_NAMES as MODEL_BACKENDS
from sca.inference.config import ModelConfig

EXIT_BAD_INPUT = 2


@lru_cache(maxsize=None)
def _console(stderr: bool) -> Any:
    import sys

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



# -- the sandbox flags, shared by every command that runs model-written code --------------------------
# Defaults come from SandboxConfig: the one place they are set.
_SANDBOX = SandboxConfig(workers=1)
SANDBOX = typer.Option(_SANDBOX.backend, "--sandbox", help=" | ".join(BACKEND_NAMES) + " (subprocess: no isolation).")
WORKERS = typer.Option(None, "--workers", min=1, help="Sandbox workers, runs at once [default: cores].")
TIMEOUT = typer.Option(_SANDBOX.timeout, "--timeout", min=0.1,
                       help="Seconds of wall clock for each run of code, tool calls included.")
MEMORY_MB = typer.Option(_SANDBOX.memory_mb, "--memory-mb", min=64, help="Memory cap of each process of a run, MiB.")
MAX_TOOL_CALLS = typer.Option(_SANDBOX.max_tool_calls, "--max-tool-calls", min=1, help="Tool calls allowed per run.")
MAX_TOOL_BYTES = typer.Option(_SANDBOX.max_tool_bytes, "--max-tool-bytes", min=1024,
                              help="Bytes of JSON tool arguments and results allowed per run.")


def sandbox_config(backend: str, workers: int | None, timeout: float, memory_mb: int, max_tool_calls: int,
                   max_tool_bytes: int) -> SandboxConfig:
    """The SandboxConfig the sandbox flags describe (a one-line error, exit 2, if they are wrong)."""
    if backend not in BACKEND_NAMES:
        fail(f"--sandbox must be one of {', '.join(BACKEND_NAMES)}, not {backend!r}")
    try:
        return SandboxConfig(backend=backend, timeout=timeout, memory_mb=memory_mb, max_tool_calls=max_tool_calls,
                             max_tool_bytes=max_tool_bytes).with_(workers=workers)
    except ValueError as e:
        fail(str(e))


# -- model flags: a role's model, backend, servers and sampling ----------------------------------------
# Each command passes its stage's default ModelConfig, so the defaults shown are the stage's own.


def model_flag(prefix: str = "", what: str = "") -> Any:
    return typer.Option(None, f"--{prefix}model",
                        help=f"{what}HF name or local path (hf, vllm) or served name (openai) "
                             "[default: bundled SmolLM2-135M-Instruct].")


def backend_flag(default: ModelConfig, prefix: str = "") -> Any:
    return typer.Option(default.backend, f"--{prefix}backend", help=" | ".join(MODEL_BACKENDS) + ".")


def base_url_flag(prefix: str = "") -> Any:
    return typer.Option(None, f"--{prefix}base-url",
                        help="OpenAI-compatible server (with the openai backend); repeat to share load round-robin.")


def temperature_flag(default: ModelConfig, prefix: str = "") -> Any:
    return typer.Option(default.temperature, f"--{prefix}temperature", min=0.0, help="Sampling temperature (0: greedy).")


def top_p_flag(default: ModelConfig, prefix: str = "") -> Any:
    return typer.Option(default.top_p, f"--{prefix}top-p", min=0.0, max=1.0)


def max_new_tokens_flag(default: ModelConfig, prefix: str = "") -> Any:
    return typer.Option(default.max_new_tokens, f"--{prefix}max-new-tokens", min=1, help="Tokens per reply at most.")


def model_config(model: str | None, backend: str, base_urls: list[str] | None, temperature: float, top_p: float,
                 max_new_tokens: int, flag: str = "--") -> ModelConfig:
    """The ModelConfig the model flags describe (a one-line error, exit 2, if they are wrong)."""
    if backend not in MODEL_BACKENDS:
        fail(f"{flag}backend must be one of {', '.join(MODEL_BACKENDS)}, not {backend!r}")
    if base_urls and backend != "openai":
        fail(f"{flag}base-url goes with {flag}backend openai")
    try:
        return ModelConfig(model=model, backend=backend, base_urls=list(base_urls or []), temperature=temperature,
                           top_p=top_p, max_new_tokens=max_new_tokens)
    except ValueError as e:
        fail(str(e))


# -- the executor's flags, shared by `sca rollout` and `sca eval` ----------------------------------------
USER_MODEL = typer.Option(None, "--user-model", help="Simulated user's model [default: the executor's].")
USER_BACKEND = typer.Option(None, "--user-backend", help="Simulated user's backend [default: the executor's].")
USER_BASE_URL = typer.Option(None, "--user-base-url", help="Simulated user's server(s) [default: the executor's].")
USER_TEMPERATURE = typer.Option(None, "--user-temperature", min=0.0, help="[default: the executor's]")
ACTION_FORMAT = typer.Option("code", "--action-format",
                             help="code (THOUGHT/ACTION blocks, as in the paper) | json (native function calling).")
MAX_STEPS = typer.Option(15, "--max-steps", min=1, help="Executor replies per episode (the paper's cap is 15).")
CONCURRENCY = typer.Option(8, "--concurrency", min=1,
                           help="Episodes live at once (one batched generation per role per step).")


def executor_configs(model: str | None, backend: str, base_url: list[str] | None, temperature: float, top_p: float,
                     max_new_tokens: int, user_model: str | None, user_backend: str | None,
                     user_base_url: list[str] | None, user_temperature: float | None, action_format: str,
                     max_steps: int) -> tuple[ModelConfig, ModelConfig | None, Any]:
    """The executor's ModelConfig, the simulated user's (None: the executor's) and the ExecutorConfig
    that the flags describe (a one-line error, exit 2, if they are wrong)."""
    from sca.agent.executor import ACTION_FORMATS, ExecutorConfig

    if action_format not in ACTION_FORMATS:
        fail(f"--action-format must be one of {', '.join(ACTION_FORMATS)}, not {action_format!r}")
    executor = model_config(model, backend, base_url, temperature, top_p, max_new_tokens)
    user = user_config(executor, user_model, user_backend, user_base_url, user_temperature)
    return executor, user, ExecutorConfig(max_steps=max_steps, action_format=action_format)


def user_config(executor: ModelConfig, user_model: str | None, user_backend: str | None,
                user_base_url: list[str] | None, user_temperature: float | None) -> ModelConfig | None:
    """The simulated user's ModelConfig that the --user-* flags describe, each unset one taken from
    `executor` (its model, backend, servers where the backend is the same, and sampling); None when no
    --user-* flag is set: the user is then the executor's model with the executor's settings. `sca
    rollout`, `sca eval` and GRPO (`sca train --algo grpo`) build their user here."""
    if not (user_model or user_backend or user_base_url or user_temperature is not None):
        return None
    ub = user_backend or executor.backend
    urls = user_base_url if user_base_url else (executor.base_urls if ub == executor.backend else None)
    return model_config(user_model or executor.model, ub, urls,
                        executor.temperature if user_temperature is None else user_temperature, executor.top_p,
                        executor.max_new_tokens, flag="--user-")
