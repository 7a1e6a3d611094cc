"""The options of `sca audit` and `sca validate --audit`, with their defaults: :class:`AuditConfig`.

Apart from the audit itself, and standard library only (with the sandbox's settings), because the
command line imports it for ``sca --help``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sandbox.config import SandboxConfig


@dataclass
class AuditConfig:
    """Options of `sca audit` (and of `sca validate --audit`): the sandbox, how many mutants, and the
    bootstrap of the rates; the labelling sheet's draw and episode length."""

    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    max_mutants: int = field(default=40, metadata={
        "help": "Mutant runs per task at most (taken kind by kind in turn).", "min": 1})
    alternatives_per_argument: int = field(default=3, metadata={
        "help": "Other values tried per argument of a write (and for the answer).", "min": 1})
    n_boot: int = field(default=2000, metadata={"help": "Bootstrap resamples of every interval.", "min": 1})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap and of the sheet's draw."})
    episode_chars: int = field(default=6000, metadata={
        "help": "Characters of each episode on the labelling sheet (the middle is cut).", "min": 200})
    confidence: float = 0.95
