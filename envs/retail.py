"""tau2-bench retail: an online store's customer service (see :mod:`envs._tau`)."""

from __future__ import annotations

import re

from envs._tau import RETAIL, TauEnvironment, domain_tools
from envs.base import EnvSpec

_ORDER_ID = re.compile(r"\s*#W\d{7}\b")


def remove_order_ids(instruction: str) -> str:
    """Drop order numbers (``#W1234567``) from an instruction, and the space or gap they leave."""
    out = _ORDER_ID.sub("", instruction)
    out = re.sub(r"\s+([,.;:!?])", r"\1", out)
    return re.sub(r"\s{2,}", " ", out).strip()


class RetailEnvironment(TauEnvironment):
    """Retail, with the paper's rule for proposed tasks: order numbers are removed from the
    instruction after validation, so the executor must find the order itself."""

    def finalize_instruction(self, instruction: str) -> str:
        return remove_order_ids(instruction)


def make() -> RetailEnvironment:
    """A retail environment in its initial state."""
    return RetailEnvironment(RETAIL)


SPEC = EnvSpec(RETAIL.name, RETAIL.description, make, tools=lambda: domain_tools(RETAIL),
               user_facing=RetailEnvironment.user_facing)
