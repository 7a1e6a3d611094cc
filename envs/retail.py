"""tau2-bench retail: an online store's customer service (see :mod:`envs._tau`)."""

from __future__ import annotations

from envs._tau import RETAIL, TauEnvironment


def make() -> TauEnvironment:
    """A retail environment in its initial state."""
    return TauEnvironment(RETAIL)
