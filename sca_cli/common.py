"""What every command shares: consoles, option definitions, error exits.

rich is imported on first use only, so `sca --help` stays fast.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NoReturn

import typer

EXIT_BAD_INPUT = 2


@lru_cache(maxsize=None)
def _console(stderr: bool) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


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

