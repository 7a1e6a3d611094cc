"""tau2-bench airline: an airline's reservation desk (see :mod:`envs._tau`)."""

from __future__ import annotations

from envs._tau import AIRLINE, TauEnvironment


def make() -> TauEnvironment:
    """An airline environment in its initial state."""
    return TauEnvironment(AIRLINE)
