"""tau2-bench airline: an airline's reservation desk (see :mod:`envs._tau`)."""

from __future__ import annotations

from typing import Any

from envs._tau import AIRLINE, TauEnvironment, domain_tools
from envs.base import EnvSpec


class AirlineEnvironment(TauEnvironment):
    """Airline: tau2's domain, and what ``sca audit`` asks of it."""

    def argument_alternatives(self, tool: str, args: dict[str, Any]) -> dict[str, list[Any]]:
        """The schema's alternatives (cabin, flight type, counts), and the user's other reservations and
        payment methods."""
        out = super().argument_alternatives(tool, args)
        db = self.db
        rid = args.get("reservation_id")
        reservation = db.reservations.get(rid) if isinstance(rid, str) else None
        user_id = args.get("user_id") if isinstance(args.get("user_id"), str) else getattr(reservation, "user_id", None)
        user = db.users.get(user_id) if isinstance(user_id, str) else None
        if user is not None:
            if "reservation_id" in args:
                out["reservation_id"] = [r for r in user.reservations if r != rid]
            if "payment_id" in args:
                out["payment_id"] = [p for p in user.payment_methods if p != args["payment_id"]]
        return {name: values for name, values in out.items() if values}


def make() -> AirlineEnvironment:
    """An airline environment in its initial state."""
    return AirlineEnvironment(AIRLINE)


SPEC = EnvSpec(AIRLINE.name, AIRLINE.description, make, tools=lambda: domain_tools(AIRLINE),
               user_facing=AirlineEnvironment.user_facing)
