"""The `sca` application: one sub-command per stage.

Commands import their stage (and any heavy library) only when they run, so
`sca --help` stays fast.
"""

from __future__ import annotations

import typer

from sca import __version__
from sca_cli.common import LOG_LEVEL_HELP, LOG_LEVELS, QUIET_HELP, fail, set_output, stage_command
from sca_cli import (
    audit_cmd,
    envs_cmd,
    eval_cmd,
    propose_cmd,
    report_cmd,
    rollout_cmd,
    train_cmd,
    validate_cmd,
)

app = typer.Typer(
    name="sca",
    help=(
        "Self-Challenging Agent toolkit: an LLM invents tool-use tasks as code (CaT), "
        "verifies them in a sandbox, solves them and learns from the result.\n\n"
        "Stages read and write JSON Lines, so they chain in shell scripts; `-` is stdin/stdout."
    ),
    no_args_is_help=True,
    add_completion=False,
    # plain click help and tracebacks: rich's help renderer alone costs ~120 ms per start
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sca {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help=QUIET_HELP + " Every command also takes -q."),
    log_level: str = typer.Option(None, "--log-level", help=LOG_LEVEL_HELP + " Every command also takes it."),
) -> None:
    """Self-Challenging Agent toolkit."""
    # every invocation starts from these (a test runs many in one process); a command's own -q or --log-level
    # then adds to them
    if log_level is not None and log_level.lower() not in LOG_LEVELS:
        fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}")
    set_output(quiet=quiet, log_level=log_level or "warning")


app.add_typer(envs_cmd.app, name="envs")
# each stage's command also takes --config FILE.yaml (train: its own, of TRL options), --log-level and -q, and its
# renamed flags' old names for one release (sca_cli.common.stage_command)
app.command("propose", epilog=propose_cmd.EXAMPLES, cls=stage_command())(propose_cmd.propose)
app.command("validate", epilog=validate_cmd.EXAMPLES, cls=stage_command())(validate_cmd.validate)
app.command("train", epilog=train_cmd.EXAMPLES, cls=stage_command(train_cmd.RENAMED, config=False))(train_cmd.train)
app.command("rollout", epilog=rollout_cmd.EXAMPLES, cls=stage_command(rollout_cmd.RENAMED))(rollout_cmd.rollout)
app.command("eval", epilog=eval_cmd.EXAMPLES, cls=stage_command(eval_cmd.RENAMED))(eval_cmd.eval_)
app.command("report", epilog=report_cmd.EXAMPLES, cls=stage_command(report_cmd.RENAMED))(report_cmd.report)
app.command("audit", epilog=audit_cmd.EXAMPLES, cls=stage_command())(audit_cmd.audit)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
