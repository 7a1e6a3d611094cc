"""The documentation, checked: a newcomer's first page stays short and starts where they start, every
link leads somewhere, every `sca` command shown runs with flags that exist, and the CLI reference is
the commands' own `--help`, regenerated (`python -m sca_cli.reference > docs/cli.md`)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: the README's size at most, in bytes (issue 18: "a README of at most about 10 KB")
README_MAX_BYTES = 10_500
#: the README's first commands: the main job on the defaults, then the whole test suite (CI runs the same)
SETUP_COMMANDS = ("bash examples/quickstart.sh", "bash .ci/run")

FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """Markdown without its code blocks and code spans: what is left can hold links."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (`_` and `-` kept), spaces to `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown page, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"#{1,6} +(.*?) *#* *$", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """The relative links of a page whose file, or heading, does not exist."""
    bad = []
    for target in LINK.findall(prose(path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check offline
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{path.name}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{path.name}: {target} (no such heading)")
    return bad


def shown_commands(path: Path) -> list[str]:
    """The `sca ...` command lines of a page's shell blocks, continuation lines joined."""
    out = []
    for block in re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("sca "):
                out.append(line)
    return out


def unknown_flags(line: str, root) -> list[str]:
    """What of one command line `sca` would not accept: an unknown command or option."""
    words = shlex.split(line, comments=True)[1:]
    words = words[:next((i for i, w in enumerate(words) if w in {"|", ">", "&&", ";", "2>"}), len(words))]
    command, bad = root, []
    for word in words:
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}
        if hasattr(command, "commands") and word in command.commands:
            command = command.commands[word]
        elif word.startswith("-") and word != "-" and not re.match(r"-\d", word):
            if word.split("=", 1)[0] not in options:
                bad.append(f"{word} (not an option of {command.name})")
        elif hasattr(command, "commands"):
            return bad + [f"{word} (not a command of {command.name})"]  # the rest would be read as its words
    return bad


def test_readme_is_short_and_starts_with_the_setup_commands():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes; at most {README_MAX_BYTES:,}: move detail to docs/"
    text = README.read_text(encoding="utf-8")
    first = FENCE.search(text)
    assert first and "\n## " not in text[:first.start()], "the README's first block comes before any section"
    commands = [line.split("#", 1)[0].strip() for line in first.group(0).splitlines()[1:-1]]
    assert tuple(c for c in commands if c)[:2] == SETUP_COMMANDS


def test_every_relative_link_resolves():
    bad = [b for page in pages() for b in broken_links(page)]
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_citation_file_names_the_paper_as_the_readme_does():
    import yaml

    paper = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))["preferred-citation"]
    readme = README.read_text(encoding="utf-8")
    assert f"title     = {{{paper['title']}}}" in readme
    assert " and ".join(f"{a['family-names']}, {a['given-names']}" for a in paper["authors"]) in readme
    assert paper["identifiers"][0]["value"].removeprefix("arXiv:") in readme


def test_every_command_shown_uses_real_flags():
    from typer.main import get_command

    from sca_cli.app import app

    root = get_command(app)
    shown = [(page, line) for page in pages() for line in shown_commands(page)]
    assert len(shown) > 20  # the check reads the pages' blocks at all
    bad = [f"{page.name}: {line}\n    {b}" for page, line in shown for b in unknown_flags(line, root)]
    assert not bad, "commands the CLI would refuse:\n" + "\n".join(bad)


def test_cli_reference_is_current():
    from sca_cli.reference import render

    assert (DOCS / "cli.md").read_text(encoding="utf-8") == render(), (
        "docs/cli.md is stale: python -m sca_cli.reference > docs/cli.md")


def test_cli_reference_names_every_flag():
    """The reference holds each command's every visible flag with its default, as --help shows it."""
    from typer.main import get_command

    from sca_cli.app import app

    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    root = get_command(app)
    rollout = page.split("\n## sca rollout\n", 1)[1].split("\n## ", 1)[0]
    assert "- `--max-steps <int range>`: " in rollout and "[default: 15; x>=1]" in rollout
    for name, command in root.commands.items():
        assert f"\n## sca {name}\n" in page
        section = page.split(f"\n## sca {name}\n", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            if not getattr(param, "hidden", False) and param.param_type_name == "option":
                assert f"`{', '.join(param.opts)}" in section, (name, param.opts)


@pytest.mark.parametrize("text, expected", [
    ("### `sca envs`: the environments", "sca-envs-the-environments"),
    ("## Resuming, interrupting, progress", "resuming-interrupting-progress"),
    ("## sca envs show", "sca-envs-show"),
    ("#### Why there is no PPO", "why-there-is-no-ppo"),
])
def test_slug_is_githubs(text, expected):
    assert slug(text.lstrip("#").strip()) == expected


def test_the_checks_can_fail(tmp_path):
    """Each check above finds what it is for: a dead link, a missing heading, an unknown flag."""
    from typer.main import get_command

    from sca_cli.app import app

    (tmp_path / "a.md").write_text("# Title\n\n## Some `code` here\n\nsee [x](b.md), [y](#nope), [z](#some-code-here)\n"
                                   "`[not](a-link.md)`\n")
    assert broken_links(tmp_path / "a.md") == ["a.md: b.md (no such file)", "a.md: #nope (no such heading)"]
    root = get_command(app)
    assert unknown_flags("sca rollout t.jsonl -o x --trails 4  # typo", root) == [
        "--trails (not an option of rollout)"]
    assert unknown_flags("sca envs shw retail", root) == ["shw (not a command of envs)"]
    assert unknown_flags("sca eval --env retail -o - | head", root) == []
