"""The tau2-bench environments (retail, airline): every tool, the journaled reset, the hash."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from envs import make_env
from envs._tau import _Collection, _copy_record, load_domain
from envs.base import ToolError, UnknownToolError, WriteForbiddenError

ADDRESS = {"address1": "1 Test Way", "address2": "Unit 9", "city": "Austin", "state": "TX",
           "country": "USA", "zip": "73301"}

Case = tuple[dict[str, Any], Callable[[Any], bool]]


# -- argument finders: each tool with arguments (from the database) that make it succeed ------
def _retail_cases(db: Any) -> dict[str, Case]:
    users, orders, products = db.users, db.orders, db.products

    def non_gift_card(user_id: str) -> str:
        return next(pm for pm, m in users[user_id].payment_methods.items() if m.source != "gift_card")

    def swap(order: Any) -> tuple[str, str] | None:
        """(item id, another available variant of the same product), if the order has one."""
        for item in order.items:
            for vid, variant in products[item.product_id].variants.items():
                if vid != item.item_id and variant.available:
                    return item.item_id, vid
        return None

    pending = [o for o in orders.values() if o.status == "pending"]
    delivered = [o for o in orders.values() if o.status == "delivered"]
    payable = [o for o in pending[2:] if len(o.payment_history) == 1 and any(
        pm != o.payment_history[0].payment_method_id and m.source != "gift_card"
        for pm, m in users[o.user_id].payment_methods.items())]
    new_payment = next(pm for pm, m in users[payable[0].user_id].payment_methods.items()
                       if pm != payable[0].payment_history[0].payment_method_id and m.source != "gift_card")
    to_modify = next(o for o in pending[3:] if swap(o) and o.order_id != payable[0].order_id)
    to_exchange = next(o for o in delivered[1:] if swap(o))
    user = next(iter(users.values()))
    order, product = delivered[0], next(iter(products.values()))
    return {
        # read tools
        "calculate": ({"expression": "(2 + 3) * 4 / 8"}, lambda r: r == "2.5"),
        "find_user_id_by_email": ({"email": user.email.upper()}, lambda r: r == user.user_id),
        "find_user_id_by_name_zip": (
            {"first_name": user.name.first_name, "last_name": user.name.last_name, "zip": user.address.zip},
            lambda r: r == user.user_id),
        "get_order_details": ({"order_id": order.order_id}, lambda r: r["order_id"] == order.order_id),
        "get_product_details": ({"product_id": product.product_id}, lambda r: r["name"] == product.name),
        "get_user_details": ({"user_id": user.user_id}, lambda r: r["email"] == user.email),
        "list_all_product_types": ({}, lambda r: len(json.loads(r)) == len(products)),
        "transfer_to_human_agents": ({"summary": "wants a human"}, lambda r: r == "Transfer successful"),
        # write tools
        "cancel_pending_order": ({"order_id": pending[0].order_id, "reason": "no longer needed"},
                                 lambda r: r["status"] == "cancelled" and r["cancel_reason"] == "no longer needed"),
        "modify_pending_order_address": ({"order_id": pending[1].order_id, **ADDRESS},
                                         lambda r: r["address"] == ADDRESS),
        "modify_pending_order_payment": (
            {"order_id": payable[0].order_id, "payment_method_id": new_payment},
            lambda r: r["payment_history"][-2]["payment_method_id"] == new_payment),
        "modify_pending_order_items": (
            {"order_id": to_modify.order_id, "item_ids": [swap(to_modify)[0]],
             "new_item_ids": [swap(to_modify)[1]], "payment_method_id": non_gift_card(to_modify.user_id)},
            lambda r: r["status"] == "pending (item modified)"),
        "exchange_delivered_order_items": (
            {"order_id": to_exchange.order_id, "item_ids": [swap(to_exchange)[0]],
             "new_item_ids": [swap(to_exchange)[1]], "payment_method_id": non_gift_card(to_exchange.user_id)},
            lambda r: r["status"] == "exchange requested"),
        "return_delivered_order_items": (
            {"order_id": order.order_id, "item_ids": [order.items[0].item_id],
             "payment_method_id": order.payment_history[0].payment_method_id},
            lambda r: r["status"] == "return requested"),
        "modify_user_address": ({"user_id": user.user_id, **ADDRESS}, lambda r: r["address"] == ADDRESS),
    }


def _available(db: Any, flight_number: str, date: str, cabin: str, seats: int) -> bool:
    status = db.flights[flight_number].dates.get(date)
    return status is not None and status.status == "available" and status.available_seats[cabin] >= seats


def _airline_cases(db: Any) -> dict[str, Case]:
    users, flights, reservations = db.users, db.flights, db.reservations

    def credit_card(user_id: str) -> str | None:
        return next((pm for pm, m in users[user_id].payment_methods.items() if m.source == "credit_card"), None)

    user = next(u for u in users.values() if credit_card(u.user_id))
    card = credit_card(user.user_id)
    flight, date = next((f, d) for f in flights.values() for d in f.dates
                        if _available(db, f.flight_number, d, "economy", 1))
    price = flight.dates[date].prices["economy"]
    live = [r for r in reservations.values() if r.status is None and credit_card(r.user_id)]
    rebook, new_cabin = next(
        (r, cabin) for r in live for cabin in ("business", "economy", "basic_economy")
        if cabin != r.cabin and all(_available(db, f.flight_number, f.date, cabin, len(r.passengers))
                                    for f in r.flights))
    renamed = [p.model_dump() for p in live[2].passengers]
    renamed[0]["first_name"] = "Renamed"
    direct = {"origin": flight.origin, "destination": flight.destination, "date": date}
    return {
        # read tools
        "calculate": ({"expression": "100 - 2.5"}, lambda r: r == "97.5"),
        "get_flight_status": ({"flight_number": flight.flight_number, "date": date}, lambda r: r == "available"),
        "get_reservation_details": ({"reservation_id": live[0].reservation_id},
                                    lambda r: r["reservation_id"] == live[0].reservation_id),
        "get_user_details": ({"user_id": user.user_id}, lambda r: r["user_id"] == user.user_id),
        "list_all_airports": ({}, lambda r: {"iata": "SFO", "city": "San Francisco"} in r),
        "search_direct_flight": (direct, lambda r: flight.flight_number in {f["flight_number"] for f in r}),
        "search_onestop_flight": (direct, lambda r: isinstance(r, list) and all(len(pair) == 2 for pair in r)),
        "transfer_to_human_agents": ({"summary": "wants a human"}, lambda r: r == "Transfer successful"),
        # write tools
        "book_reservation": (
            {"user_id": user.user_id, "origin": flight.origin, "destination": flight.destination,
             "flight_type": "one_way", "cabin": "economy",
             "flights": [{"flight_number": flight.flight_number, "date": date}],
             "passengers": [{"first_name": user.name.first_name, "last_name": user.name.last_name, "dob": user.dob}],
             "payment_methods": [{"payment_id": card, "amount": price}],
             "total_baggages": 0, "nonfree_baggages": 0, "insurance": "no"},
            lambda r: r["reservation_id"] not in reservations and r["payment_history"][0]["amount"] == price),
        "cancel_reservation": ({"reservation_id": live[0].reservation_id}, lambda r: r["status"] == "cancelled"),
        "send_certificate": ({"user_id": user.user_id, "amount": 150}, lambda r: "certificate_" in r),
        "update_reservation_baggages": (
            {"reservation_id": live[1].reservation_id, "total_baggages": live[1].total_baggages + 1,
             "nonfree_baggages": live[1].nonfree_baggages + 1, "payment_id": credit_card(live[1].user_id)},
            lambda r: r["nonfree_baggages"] == live[1].nonfree_baggages + 1),
        "update_reservation_flights": (
            {"reservation_id": rebook.reservation_id, "cabin": new_cabin,
             "flights": [{"flight_number": f.flight_number, "date": f.date} for f in rebook.flights],
             "payment_id": credit_card(rebook.user_id)},
            lambda r: r["cabin"] == new_cabin),
        "update_reservation_passengers": ({"reservation_id": live[2].reservation_id, "passengers": renamed},
                                          lambda r: r["passengers"] == renamed),
    }


FINDERS = {"retail": _retail_cases, "airline": _airline_cases}
WRITES = {
    "retail": {"cancel_pending_order", "exchange_delivered_order_items", "modify_pending_order_address",
               "modify_pending_order_items", "modify_pending_order_payment", "modify_user_address",
               "return_delivered_order_items"},
    "airline": {"book_reservation", "cancel_reservation", "send_certificate", "update_reservation_baggages",
                "update_reservation_flights", "update_reservation_passengers"},
}


@pytest.fixture(scope="module")
def cases() -> dict[str, dict[str, Case]]:
    return {name: FINDERS[name](make_env(name).db) for name in FINDERS}


def _tool_params() -> list[tuple[str, str]]:
    return [(env, tool) for env in FINDERS for tool in make_env(env).tool_names()]


def _full_dump(env: Any) -> str:
    """A digest of the whole database as tau2 would dump it, key order included."""
    return _digest(env.db)


def _digest(db: Any) -> str:
    return hashlib.sha256(json.dumps(db.model_dump(mode="json", warnings=False)).encode()).hexdigest()


# -- description ----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FINDERS))
def test_description_and_tools(name: str, cases: dict[str, dict[str, Case]]) -> None:
    env = make_env(name)
    assert env.name == name and env.user_facing and "\n" not in env.description
    assert env.policy.startswith("#") and len(env.policy) > 1000
    names = env.tool_names()
    assert names == sorted(names) and set(names) == set(cases[name])  # every tool has a case below
    tau_tools = load_domain(env._domain.spec).tau_tools
    for tool in env.tools():
        assert tool.kind == ("write" if tool.name in WRITES[name] else "read")
        assert tool.parameters == tau_tools[tool.name].params.model_json_schema()
        assert tool.description and tool.signature().startswith(tool.name + "(")


# -- every tool, round trip ------------------------------------------------------------
@pytest.mark.parametrize("env_name,tool", _tool_params())
def test_tool_round_trip(env_name: str, tool: str, cases: dict[str, dict[str, Case]]) -> None:
    env = make_env(env_name)
    args, check = cases[env_name][tool]
    initial = env.state_hash()
    result = env.call(tool, args)
    assert check(result), result
    if tool in WRITES[env_name]:
        changed = env.state_hash()
        assert changed != initial
        assert env.state_hash() == changed  # stable
        with pytest.raises(WriteForbiddenError):
            env.call(tool, args, allow_write=False)
        assert env.state_hash() == changed
    else:
        assert env.state_hash() == initial
        assert env.call(tool, args, allow_write=False) == result
    env.reset()
    assert env.state_hash() == initial
    if tool in WRITES[env_name]:  # the same write succeeds again after reset, with the same state
        env.call(tool, args)
        assert env.state_hash() == changed


@pytest.mark.parametrize("name", sorted(FINDERS))
def test_episode_reset_restores_everything(name: str, cases: dict[str, dict[str, Case]]) -> None:
    """All tools in one episode, twice; after reset the whole database is the file's, key order included."""
    fresh = make_env(name)
    expected = _full_dump(fresh)
    env = make_env(name)
    initial = env.state_hash()
    for _ in range(2):
        for tool, (args, _check) in cases[name].items():
            try:
                env.call(tool, args)
            except ToolError:  # a write already done this episode may now be refused: fine
                pass
        assert env.state_hash() != initial
        env.reset()
        assert env.state_hash() == initial
    assert _full_dump(env) == expected
    # the shared pristine records are exactly what tau2 loads from its file
    domain = load_domain(env._domain.spec)
    loaded = domain.db_class.load(str(domain.db_path))
    assert _digest(loaded) == expected
    assert fresh.state_hash() == initial


# -- refusals ----------------------------------------------------------------------------
def test_refusals_carry_the_environment_message(cases: dict[str, dict[str, Case]]) -> None:
    env = make_env("retail")
    initial = env.state_hash()
    delivered = cases["retail"]["return_delivered_order_items"][0]["order_id"]
    with pytest.raises(ToolError, match="^Non-pending order cannot be cancelled$"):
        env.call("cancel_pending_order", {"order_id": delivered, "reason": "no longer needed"})
    with pytest.raises(ToolError, match="^Order not found$"):
        env.call("get_order_details", {"order_id": "#W0"})
    pending = cases["retail"]["cancel_pending_order"][0]["order_id"]
    with pytest.raises(ToolError, match="^Invalid reason$"):
        env.call("cancel_pending_order", {"order_id": pending, "reason": "bored"})
    with pytest.raises(ToolError, match="^Invalid characters in expression$"):
        env.call("calculate", {"expression": "__import__('os')"})
    with pytest.raises(ToolError, match="ZeroDivisionError"):
        env.call("calculate", {"expression": "1 / 0"})
    with pytest.raises(ToolError, match=r"\*\*"):  # a power tower would hang the process
        env.call("calculate", {"expression": "9 ** 9 ** 9 ** 9"})
    assert env.state_hash() == initial


def test_refused_write_is_rolled_back_even_after_partial_changes() -> None:
    """tau2's book_reservation with one certificate listed twice pops it, then fails on the second."""
    env = make_env("airline")
    db = env.db
    user, cert = next((u, pm) for u in db.users.values() for pm, m in u.payment_methods.items()
                      if m.source == "certificate" and m.amount >= 300)
    flight, date = next((f, d) for f in db.flights.values() for d in f.dates
                        if _available(db, f.flight_number, d, "basic_economy", 1)
                        and f.dates[d].prices["basic_economy"] <= 500)
    price = flight.dates[date].prices["basic_economy"]
    before_user = db.users[user.user_id].model_dump()
    initial, dump = env.state_hash(), _full_dump(env)
    args = {"user_id": user.user_id, "origin": flight.origin, "destination": flight.destination,
            "flight_type": "one_way", "cabin": "basic_economy",
            "flights": [{"flight_number": flight.flight_number, "date": date}],
            "passengers": [{"first_name": "A", "last_name": "B", "dob": "1990-01-01"}],
            "payment_methods": [{"payment_id": cert, "amount": price // 2},
                                {"payment_id": cert, "amount": price - price // 2}],
            "total_baggages": 0, "nonfree_baggages": 0, "insurance": "no"}
    with pytest.raises(ToolError, match="KeyError"):
        env.call("book_reservation", args)
    assert env.state_hash() == initial
    assert db.users[user.user_id].model_dump() == before_user
    assert _full_dump(env) == dump


def test_unknown_tool_and_bad_arguments(cases: dict[str, dict[str, Case]]) -> None:
    env = make_env("airline")
    initial = env.state_hash()
    with pytest.raises(UnknownToolError):
        env.call("delete_everything", {})
    with pytest.raises(ToolError, match="missing required argument"):
        env.call("get_user_details", {})
    with pytest.raises(ToolError, match="unexpected keyword argument"):
        env.call("get_user_details", {"user_id": "x", "admin": True})
    with pytest.raises(ToolError, match="invalid arguments for get_user_details: user_id"):
        env.call("get_user_details", {"user_id": 123})
    args = dict(cases["airline"]["update_reservation_baggages"][0], total_baggages="lots")
    with pytest.raises(ToolError, match="total_baggages"):  # tau2 alone would store the string
        env.call("update_reservation_baggages", args)
    booking = dict(cases["airline"]["book_reservation"][0])
    # no date: not a FlightInfo, so pydantic keeps it a plain dict (the union's other member); the tool gets
    # every flight as a plain dict, as tau2's replay of the call does, and tau2's FlightInfo refuses it
    booking["flights"] = booking["flights"] + [{"flight_number": "HAT001"}]
    with pytest.raises(ToolError, match="validation error for FlightInfo"):
        env.call("book_reservation", booking)
    with pytest.raises(ToolError, match="Input should be 'yes' or 'no'"):
        env.call("book_reservation", dict(cases["airline"]["book_reservation"][0], insurance="maybe"))
    assert env.state_hash() == initial


# -- state: instances, hash ---------------------------------------------------------------
def test_instances_are_independent(cases: dict[str, dict[str, Case]]) -> None:
    a, b = make_env("retail"), make_env("retail")
    args, _ = cases["retail"]["cancel_pending_order"]
    initial = b.state_hash()
    a.call("cancel_pending_order", args)
    assert b.state_hash() == initial
    assert b.call("get_order_details", {"order_id": args["order_id"]})["status"] == "pending"
    b.call("cancel_pending_order", args)  # b can do the same write: it never saw a's
    assert a.state_hash() == b.state_hash() != initial
    a.reset()
    assert a.state_hash() == initial != b.state_hash()


def test_hash_is_a_function_of_the_state(cases: dict[str, dict[str, Case]]) -> None:
    env = make_env("retail")
    initial = env.state_hash()
    user_id = cases["retail"]["modify_user_address"][0]["user_id"]
    original = env.call("get_user_details", {"user_id": user_id})["address"]
    env.call("modify_user_address", {"user_id": user_id, **ADDRESS})
    moved = env.state_hash()
    env.call("modify_user_address", {"user_id": user_id, **dict(ADDRESS, zip="73302")})
    assert env.state_hash() not in (initial, moved)
    env.call("modify_user_address", {"user_id": user_id, **original})  # back where it was
    assert env.state_hash() == initial


def test_read_tools_never_copy() -> None:
    env = make_env("retail")
    user_id = next(iter(env.db.users))
    record = env.db.users[user_id]
    env.call("get_user_details", {"user_id": user_id})
    assert env.call("find_user_id_by_email", {"email": record.email}) == user_id
    assert env.db.users[user_id] is record  # still the shared pristine record


def test_record_copies_are_faithful() -> None:
    for name in FINDERS:
        domain = load_domain(make_env(name)._domain.spec)
        for records in domain.pristine.values():
            for record in records.values():
                copied = _copy_record(record)
                assert copied is not record and type(copied) is type(record)
                assert copied.model_dump() == record.model_dump()


def test_collection_journal_keeps_key_order() -> None:
    pristine = {k: [k] for k in "abcde"}
    c = _Collection("t", pristine)
    c.begin()
    assert c.pop("b") == ["b"] and c["a"] is not pristine["a"]  # copies on access
    c["z"] = ["z"]
    c.setdefault("y", ["y"]).append("!")
    c.rollback()
    assert list(c.items()) == list(pristine.items()) and all(c[k] is pristine[k] for k in c)
    c.begin()
    del c["a"]
    c.update(x=["x"])
    c.commit()
    assert list(c) == ["b", "c", "d", "e", "x"]
    assert [k for k, _ in c.changes(lambda *_: "")] == ["a", "x"]
    c.restore()
    assert list(c.items()) == list(pristine.items()) and not c.changes(lambda *_: "")
    assert pristine == {k: [k] for k in "abcde"}


# -- tasks, prompts --------------------------------------------------------------------------
@pytest.mark.parametrize("name,train,test", [("retail", 74, 40), ("airline", 30, 20)])
def test_tasks_and_splits(name: str, train: int, test: int) -> None:
    from sca.benchmarks import benchmark

    bench = benchmark(name)
    assert bench.splits() == ["test", "train"]
    assert len(bench.tasks("train")) == train and len(bench.tasks("test")) == test
    tasks = bench.tasks()
    assert len(tasks) == train + test and len({t.id for t in tasks}) == len(tasks)
    for task in tasks:
        assert task.data["id"] == task.id
        reason = task.data["user_scenario"]["instructions"]["reason_for_call"]
        assert task.instruction.startswith("Reason for call:\n") and reason.strip() in task.instruction
    tasks[0].data["id"] = "changed"  # callers get their own copies
    assert bench.tasks()[0].data["id"] == tasks[0].id
    with pytest.raises(ValueError):
        bench.tasks("base")


@pytest.mark.parametrize("name", sorted(FINDERS))
def test_challenger_context(name: str) -> None:
    env = make_env(name)
    first = env.challenger_context(random.Random(7))
    assert first == env.challenger_context(random.Random(7))
    user = env.call("get_user_details", {"user_id": first["user_id"]})
    assert first["name"] == f"{user['name']['first_name']} {user['name']['last_name']}"
    assert first["email"] == user["email"]
    assert len({env.challenger_context(random.Random(i))["user_id"] for i in range(20)}) > 1
