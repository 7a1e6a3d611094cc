"""The task formats, and which parts of a task each one has: the one place they are written.

The paper compares tasks written three ways (docs/CAT.md, "Task formats"):

* ``cat``: Code-as-Task, the paper's SCA: an instruction, an evaluation function, an example
  solution and failure cases, filtered by every CaT check;
* ``eval-only``: the rebuttal's "SCA no filtering": the challenger explores, then writes the
  instruction and the evaluation function only, and nothing is filtered beyond that the code compiles;
* ``instruction-only``: PAE's tasks: an instruction alone, scored by an LLM judge.

A record names its format in the field ``format``; a record without one is ``cat`` (files written
before the formats existed stay valid). A record has exactly its format's parts: one that carries a part
its format lacks claims what it is not (an instruction-only task with an ``evaluation_function`` would be
scored by code nobody meant to run), and the schema refuses it. Standard library only: the record
schemas, the challenger, the checks and the command line (``sca --help``) all read it.
"""

from __future__ import annotations

from typing import Any, Iterable

#: the task formats, the default first
TASK_FORMATS = ("cat", "eval-only", "instruction-only")
#: a record without a ``format`` field is of this one
DEFAULT_FORMAT = TASK_FORMATS[0]
#: the parts of a task (beside id, env, format and meta), in the record's order
TASK_PARTS = ("instruction", "evaluation_function", "solution", "failure_cases")
#: the parts each format has: each required in it, and absent from every other
FORMAT_PARTS: dict[str, tuple[str, ...]] = {
    "cat": TASK_PARTS,
    "eval-only": ("instruction", "evaluation_function"),
    "instruction-only": ("instruction",),
}


def task_format(record: dict[str, Any]) -> str:
    """The format a task record (or a trajectory copied from one) is of: its ``format``, else ``cat``."""
    return record.get("format") or DEFAULT_FORMAT


def formats_of(records: Iterable[dict[str, Any]]) -> set[str]:
    """The formats the given records are of."""
    return {task_format(r) for r in records}
