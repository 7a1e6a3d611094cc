"""`sca envs`: list the environments and show one's tools and policy."""

from __future__ import annotations

import json
from typing import Optional

import typer

from sca_cli.common import err_console, examples, fail, out_console

app = typer.Typer(
    help="List the tool environments, or show one's tools, policy and benchmark tasks.",
    invoke_without_command=True,
    no_args_is_help=False,
)

EXAMPLES_LIST = examples("sca envs", "sca envs --json | jq '.[].name'", "sca envs show retail")
EXAMPLES_SHOW = examples("sca envs show retail", "sca envs show airline --json > airline_tools.json",
                         "sca envs show calculation --no-policy")


def _load(name: str):
    from envs import UnknownEnvironmentError, make_env

    try:
        return make_env(name)
    except UnknownEnvironmentError as e:
        fail(str(e))


@app.callback(epilog=EXAMPLES_LIST)
def list_envs(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List every environment with a one-line description and its tool count."""
    if ctx.invoked_subcommand is not None:
        return
    from envs import env_names

    summaries = []
    for name in env_names():
        try:
            summaries.append(_load(name).summary())
        except Exception as e:  # an environment whose package is broken must not hide the others
            summaries.append({"name": name, "description": f"(failed to load: {e})", "tools": None,
                              "read_tools": None, "write_tools": None, "user_facing": None})
    if as_json:
        typer.echo(json.dumps(summaries, indent=2))
        return
    from rich.table import Table

    table = Table(title="environments", title_justify="left")
    for col in ("name", "tools", "read/write", "user", "description"):
        table.add_column(col, overflow="fold")
    for s in summaries:
        rw = "" if s["tools"] is None else f"{s['read_tools']}/{s['write_tools']}"
        user = "" if s["user_facing"] is None else ("simulated" if s["user_facing"] else "-")
        table.add_row(s["name"], str(s["tools"] or ""), rw, user, s["description"])
    out_console.print(table)


@app.command("show", epilog=EXAMPLES_SHOW)
def show(
    name: str = typer.Argument(..., help="Environment name (see `sca envs`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: description, tools, policy."),
    no_policy: bool = typer.Option(False, "--no-policy", help="Leave the policy text out."),
) -> None:
    """Show an environment's tools (name, signature, description, read or write) and its policy."""
    env = _load(name)
    tools = env.tools()
    if as_json:
        doc = {**env.summary(), "tool_list": [t.to_dict() for t in tools]}
        if not no_policy:
            doc["policy"] = env.policy
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    from rich.markup import escape

    s = env.summary()
    out_console.print(f"[bold]{env.name}[/]: {escape(env.description)}")
    out_console.print(f"{s['tools']} tools ({s['read_tools']} read, {s['write_tools']} write)\n")
    for t in tools:
        tag = "[red]write[/]" if t.kind == "write" else "[green]read[/]"
        out_console.print(f"{tag}  [bold]{escape(t.signature())}[/]")
        for line in t.description.strip().splitlines():
            out_console.print(f"       {escape(line)}", soft_wrap=True)
        out_console.print()
    if not no_policy:
        out_console.rule("policy")
        out_console.print(escape(env.policy.strip() or "(no policy)"), soft_wrap=True)
    err_console.print(f"[dim]{len(tools)} tools[/]")


EXAMPLES_TASKS = examples(
    "sca envs tasks retail --split test",
    "sca envs tasks calculation --json > calculation_tasks.json",
    "sca envs tasks calculation --m3tooleval-dir ~/src/code-act   # the official M3ToolEval tasks",
)


@app.command("tasks", epilog=EXAMPLES_TASKS)
def tasks(
    name: str = typer.Argument(..., help="Environment name (see `sca envs`)."),
    split: Optional[str] = typer.Option(None, "--split", help="Only this split (e.g. train, test)."),
    m3tooleval_dir: Optional[str] = typer.Option(
        None, "--m3tooleval-dir",
        help="calculation / web_browsing: list the official M3ToolEval tasks of your own CodeAct checkout instead."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: one object per task, with its data."),
) -> None:
    """List an environment's benchmark tasks (what `sca eval` measures)."""
    env = _load(name)
    if m3tooleval_dir:
        if name not in ("calculation", "web_browsing"):
            fail("--m3tooleval-dir goes with calculation or web_browsing")
        from envs._m3.official import OfficialTaskError, load_official_tasks

        try:
            found = [t for t in load_official_tasks(m3tooleval_dir) if t.data.get("env") == name]
        except OfficialTaskError as e:
            fail(str(e))
    else:
        try:
            found = env.tasks(split)
        except ValueError as e:
            fail(str(e))
    if split and m3tooleval_dir:
        found = [t for t in found if t.split == split]
    if as_json:
        typer.echo(json.dumps([{"id": t.id, "split": t.split, "instruction": t.instruction, "data": t.data}
                               for t in found], indent=2, ensure_ascii=False, default=str))
        return
    from rich.markup import escape

    for t in found:
        out_console.print(f"[bold]{escape(t.id)}[/] [dim]({t.split})[/] {escape(' '.join(t.instruction.split()))}",
                          soft_wrap=True)
    counts = {s: sum(t.split == s for t in found) for s in sorted({t.split for t in found})}
    err_console.print(f"[dim]{len(found)} tasks: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "[/]")
