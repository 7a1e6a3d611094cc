"""The command-line reference, docs/cli.md, written from the commands themselves.

    python -m sca_cli.reference > docs/cli.md

Every usage line, flag, default, bound and example comes from the same click objects that `--help`
prints, so the page cannot say what the code does not do; tests/test_docs.py fails when the file
differs from what this writes now. Markdown lists rather than tables: help texts hold `|`
(`hf | vllm | openai`), which would split a table's cells.
"""

from __future__ import annotations

import sys

HEADER = """\
# Command-line reference

Every `sca` command with its usage, arguments, options (defaults and bounds in brackets) and examples,
as `--help` prints them. This page is generated: `python -m sca_cli.reference > docs/cli.md`
(tests/test_docs.py fails when it is stale). What each stage does: [stages.md](stages.md).
"""


def _commands(group, ctx) -> list:
    """(command, context) of the group itself, then of each sub-command in the order the app registers
    them, depth first. Duck-typed on click's API: typer may bring its own copy of click."""
    out = [(group, ctx)]
    for name, command in group.commands.items():
        sub = command.context_class(command, info_name=name, parent=ctx, **command.context_settings)
        if hasattr(command, "commands"):
            out += _commands(command, sub)
        elif not command.hidden:
            out.append((command, sub))
    return out


def _text(text: str | None) -> str:
    """Help or epilog text as written, without click's `\\b` (do not rewrap) markers."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip() != "\b"]
    return "\n".join(lines).strip()


def _examples(epilog: str) -> list[str]:
    """The example command lines of an epilog ("Examples:" and then one indented command a line)."""
    body = _text(epilog)
    if body.startswith("Examples:"):
        body = body[len("Examples:"):]
    return [line.strip() for line in body.splitlines() if line.strip()]


def _section(command, ctx) -> str:
    path = ctx.command_path
    usage = command.get_usage(ctx).removeprefix("Usage: ")
    out = [f"## {path}", "", f"`{usage}`", ""]
    if command.help:
        out += [_text(command.help), ""]
    for title, kind in (("Arguments", "argument"), ("Options", "option")):
        records = [p.get_help_record(ctx) for p in command.get_params(ctx) if p.param_type_name == kind]
        records = [r for r in records if r]  # hidden parameters have none
        if records:
            out += [f"{title}:", ""]
            out += [f"- `{flags}`" + (f": {' '.join(help_.split())}" if help_ else "")
                    for flags, help_ in records]
            out.append("")
    if hasattr(command, "commands"):
        out += ["Commands: " + ", ".join(f"`{path} {name}`" for name in command.commands), ""]
    examples = _examples(command.epilog or "")
    if examples:
        out += ["Examples:", "", "```bash", *examples, "```", ""]
    return "\n".join(out)


def render() -> str:
    """docs/cli.md as the commands are now."""
    from typer.main import get_command

    from sca_cli.app import app

    root = get_command(app)
    sections = _commands(root, root.context_class(root, info_name="sca", **root.context_settings))
    contents = [f"- [{ctx.command_path}](#{ctx.command_path.replace(' ', '-')})" for _, ctx in sections]
    return "\n".join([HEADER, *contents, ""] + [_section(c, ctx) for c, ctx in sections]).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
