"""`sca envs`: list the environments and show one's tools and policy."""

from __future__ import annotations

import json
from typing import Optional

import typer

from sca_cli.common import CommandGroup, err_console, examples, fail, out_console, stage_command, stage_errors

app = typer.Typer(
    cls=CommandGroup,  # --config, --log-level and -q, as on every command
    help="List the tool environments, or show one's tools, policy and benchmark tasks.",
    invoke_without_command=True,
    no_args_is_help=False,
)

EXAMPLES_LIST = examples("sca envs", "sca envs --json | jq '.[].name'", "sca envs show retail")
EXAMPLES_SHOW = examples("sca envs show retail", "sca envs show airline --json > airline_tools.json",
                         "sca envs show calculation --no-policy")


def _spec(name: str):
    from envs import env_spec

    with stage_errors():
        return env_spec(name)


def _described(summary: dict) -> dict:
    """An environment's summary as ``--json`` prints it: its tool count as ``tool_count`` (``tools`` is
    the list of tools, in ``sca envs show --json``: one name, one meaning)."""
    return {("tool_count" if k == "tools" else k): v for k, v in summary.items()}


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
            summaries.append(_spec(name).summary())
        except Exception as e:  # an environment whose package is broken must not hide the others
            summaries.append({"name": name, "description": f"(failed to load: {e})", "tools": None,
                              "read_tools": None, "write_tools": None, "user_facing": None})
    if as_json:
        typer.echo(json.dumps([_described(s) for s in summaries], indent=2))
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


@app.command("show", epilog=EXAMPLES_SHOW, cls=stage_command())
def show(
    name: str = typer.Argument(..., help="Environment name (see `sca envs`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: description, tool_count, tools (the list), policy."),
    no_policy: bool = typer.Option(False, "--no-policy", help="Leave the policy text out."),
) -> None:
    """Show an environment's tools (name, signature, description, read or write) and its policy."""
    spec = _spec(name)
    tools = spec.tools()
    policy = None if no_policy else spec.make().policy
    if as_json:
        doc = {**_described(spec.summary()), "tools": [t.to_dict() for t in tools]}
        if policy is not None:
            doc["policy"] = policy
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    from rich.markup import escape

    s = spec.summary()
    out_console.print(f"[bold]{spec.name}[/]: {escape(spec.description)}")
    out_console.print(f"{s['tools']} tools ({s['read_tools']} read, {s['write_tools']} write)\n")
    for t in tools:
        tag = "[red]write[/]" if t.kind == "write" else "[green]read[/]"
        out_console.print(f"{tag}  [bold]{escape(t.signature())}[/]")
        for line in t.description.strip().splitlines():
            out_console.print(f"       {escape(line)}", soft_wrap=True)
        out_console.print()
    if policy is not None:
        out_console.rule("policy")
        out_console.print(escape(policy.strip() or "(no policy)"), soft_wrap=True)
    err_console.print(f"[dim]{len(tools)} tools[/]")


EXAMPLES_TASKS = examples(
    "sca envs tasks retail --split test",
    "sca envs tasks calculation --json > calculation_tasks.json",
    "sca envs tasks calculation --m3tooleval-dir ~/src/code-act   # the official M3ToolEval tasks",
)


@app.command("tasks", epilog=EXAMPLES_TASKS, cls=stage_command())
def tasks(
    name: str = typer.Argument(..., help="Environment name (see `sca envs`)."),
    split: Optional[str] = typer.Option(None, "--split", help="Only this split (e.g. train, test)."),
    m3tooleval_dir: Optional[str] = typer.Option(
        None, "--m3tooleval-dir",
        help="calculation / web_browsing: list the official M3ToolEval tasks of your own CodeAct checkout instead."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: one object per task, with its data."),
) -> None:
    """List an environment's benchmark tasks (what `sca eval` measures)."""
    from sca.benchmarks import checkout_benchmark_names, find_benchmark

    _spec(name)
    bench = find_benchmark(name)
    if m3tooleval_dir:
        if name not in checkout_benchmark_names():
            fail(f"--m3tooleval-dir goes with {' or '.join(checkout_benchmark_names())}")
        with stage_errors():
            found = bench.from_checkout(m3tooleval_dir).tasks()
    elif bench is None:  # an environment without a benchmark: no tasks, and no split
        if split:
            fail(f"{name}: unknown split {split!r} (have: )")
        found = []
    else:
        try:
            found = bench.tasks(split)
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
