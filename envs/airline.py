"""tau2-bench airline: an airline's reservation desk (see :mod:`envs._tau`)."""

from __future__ import annotations

from envs._tau import AIRLINE, TauEnvironment, domain_tools
from envs.base import EnvSpec


def make() -> TauEnvironment:
    """An airline environment in its initial state."""
    return TauEnvironment(AIRLINE)


SPEC = EnvSpec(AIRLINE.name, AIRLINE.description, make, tools=lambda: domain_tools(AIRLINE),
               user_facing=TauEnvironment.user_facing)
