"""tau2-bench retail: an online store's customer service (see :mod:`envs._tau`)."""

from __future__ import annotations

import re
from typing import Any

from envs._tau import RETAIL, TauEnvironment, domain_tools
from envs.base import EnvSpec

_ORDER_ID = re.compile(r"\s*#W\d{7}\b")
#: the reasons cancel_pending_order accepts (tau2 refuses any other; its schema names them in words only)
CANCEL_REASONS = ("no longer needed", "ordered by mistake")


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

    def argument_alternatives(self, tool: str, args: dict[str, Any]) -> dict[str, list[Any]]:
        """The schema's alternatives, and what the store knows: the user's other orders and payment
        methods, the other cancellation reason, another item of the same order, another available
        variant of the same product (a list argument changes in one place)."""
        out = super().argument_alternatives(tool, args)
        db = self.db
        order = db.orders.get(args.get("order_id")) if isinstance(args.get("order_id"), str) else None
        user_id = args.get("user_id") if isinstance(args.get("user_id"), str) else getattr(order, "user_id", None)
        user = db.users.get(user_id) if isinstance(user_id, str) else None
        found: dict[str, list[Any]] = {}
        if user is not None:
            found["order_id"] = [o for o in user.orders if o != args.get("order_id")]
            found["payment_method_id"] = [p for p in user.payment_methods if p != args.get("payment_method_id")]
        if tool == "cancel_pending_order":
            found["reason"] = [r for r in CANCEL_REASONS if r != args.get("reason")]
        items = args.get("item_ids")
        if order is not None and isinstance(items, list):
            in_order = list(dict.fromkeys(i.item_id for i in order.items))
            found["item_ids"] = _one_changed(items, lambda k, item: [i for i in in_order if i not in items])
            products = {i.item_id: i.product_id for i in order.items}
            new_items = args.get("new_item_ids")
            if isinstance(new_items, list):
                def variants(k: int, item: Any) -> list[Any]:
                    product = db.products.get(products.get(items[k])) if k < len(items) else None
                    if product is None:
                        return []
                    return [v for v, variant in product.variants.items()
                            if variant.available and v not in (item, items[k])]
                found["new_item_ids"] = _one_changed(new_items, variants)
        for name, values in found.items():
            if name in args and values:
                out[name] = out.get(name, []) + [v for v in values if v not in out.get(name, [])]
        return out


def _one_changed(values: list[Any], others: Any) -> list[list[Any]]:
    """Copies of the list `values`, each with one item replaced by one of ``others(position, item)``."""
    out = []
    for k, item in enumerate(values):
        for other in others(k, item):
            out.append(values[:k] + [other] + values[k + 1:])
    return out


def make() -> RetailEnvironment:
    """A retail environment in its initial state."""
    return RetailEnvironment(RETAIL)


SPEC = EnvSpec(RETAIL.name, RETAIL.description, make, tools=lambda: domain_tools(RETAIL),
               user_facing=RetailEnvironment.user_facing)
