"""Reset speed of the tau2 environments (retail, airline) against reloading or copying the database.

Each episode makes four realistic writes that succeed (chosen from the database),
through ``Environment.call`` as a task would, then resets. Baselines, measured in
the same run: tau2's own ``<DB>.load`` from JSON, and ``copy.deepcopy`` of the
parsed database (the two obvious ways to get a fresh state).

    python bench/env_reset.py [--iterations 300] [--envs retail airline]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

# the repository first: bench/sandbox.py, beside this script, would otherwise stand for the sandbox package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs import make_env  # noqa: E402

ADDRESS = {"address1": "1 Bench St", "address2": "", "city": "Austin", "state": "TX", "country": "USA",
           "zip": "73301"}


def retail_episode(db: Any) -> list[tuple[str, dict[str, Any]]]:
    """Cancel a pending order, re-address another, move a user, return a delivered item."""
    pending = [o for o in db.orders.values() if o.status == "pending"]
    delivered = next(o for o in db.orders.values() if o.status == "delivered")
    return [
        ("cancel_pending_order", {"order_id": pending[0].order_id, "reason": "ordered by mistake"}),
        ("modify_pending_order_address", {"order_id": pending[1].order_id, **ADDRESS}),
        ("modify_user_address", {"user_id": pending[0].user_id, **ADDRESS}),
        ("return_delivered_order_items", {"order_id": delivered.order_id,
                                          "item_ids": [delivered.items[0].item_id],
                                          "payment_method_id": delivered.payment_history[0].payment_method_id}),
    ]


def airline_episode(db: Any) -> list[tuple[str, dict[str, Any]]]:
    """Book a flight, cancel a reservation, add a paid bag, send a certificate."""
    def card(user_id: str) -> str | None:
        return next((p for p, m in db.users[user_id].payment_methods.items() if m.source == "credit_card"), None)

    user = next(u for u in db.users.values() if card(u.user_id))
    flight, date = next((f, d) for f in db.flights.values() for d, s in f.dates.items()
                        if s.status == "available" and s.available_seats["economy"] > 0)
    live = [r for r in db.reservations.values() if r.status is None and card(r.user_id)]
    return [
        ("book_reservation", {
            "user_id": user.user_id, "origin": flight.origin, "destination": flight.destination,
            "flight_type": "one_way", "cabin": "economy",
            "flights": [{"flight_number": flight.flight_number, "date": date}],
            "passengers": [{"first_name": user.name.first_name, "last_name": user.name.last_name, "dob": user.dob}],
            "payment_methods": [{"payment_id": card(user.user_id),
                                 "amount": flight.dates[date].prices["economy"]}],
            "total_baggages": 0, "nonfree_baggages": 0, "insurance": "no"}),
        ("cancel_reservation", {"reservation_id": live[0].reservation_id}),
        ("update_reservation_baggages", {"reservation_id": live[1].reservation_id,
                                         "total_baggages": live[1].total_baggages + 1,
                                         "nonfree_baggages": live[1].nonfree_baggages + 1,
                                         "payment_id": card(live[1].user_id)}),
        ("send_certificate", {"user_id": user.user_id, "amount": 100}),
    ]


EPISODES = {"retail": retail_episode, "airline": airline_episode}


def bench_env(name: str, iterations: int, baseline_runs: int) -> list[tuple[str, str, float]]:
    """Rows (env, what, seconds per operation)."""
    t0 = time.perf_counter()
    env = make_env(name)
    first_make = time.perf_counter() - t0
    t0 = time.perf_counter()
    make_env(name)
    next_make = time.perf_counter() - t0
    episode = EPISODES[name](env.db)
    initial = env.state_hash()

    def run_episode() -> None:
        for tool, args in episode:
            env.call(tool, args)

    run_episode()  # warm up, and check that every write succeeds and changes the state
    assert env.state_hash() != initial
    env.reset()

    t0 = time.perf_counter()
    for _ in range(iterations):
        run_episode()
        env.reset()
    loop = (time.perf_counter() - t0) / iterations
    assert env.state_hash() == initial

    episode_s = reset_s = hash_s = 0.0
    for _ in range(iterations):
        t0 = time.perf_counter()
        run_episode()
        t1 = time.perf_counter()
        changed = env.state_hash()
        t2 = time.perf_counter()
        env.reset()
        t3 = time.perf_counter()
        episode_s, hash_s, reset_s = episode_s + t1 - t0, hash_s + t2 - t1, reset_s + t3 - t2
        assert changed != initial
    assert env.state_hash() == initial

    domain = env._domain  # the baselines: tau2's loader, and a deep copy of the parsed database
    load_s = _time(lambda: domain.db_class.load(str(domain.db_path)), baseline_runs)
    parsed = domain.db_class.load(str(domain.db_path))
    copy_s = _time(lambda: copy.deepcopy(parsed), baseline_runs)
    n = iterations
    return [
        (name, "make() first (parse + tau2 import)", first_make),
        (name, "make() cached", next_make),
        (name, f"episode ({len(episode)} writes) + reset", loop),
        (name, f"  episode alone ({len(episode)} writes)", episode_s / n),
        (name, "  state_hash after episode", hash_s / n),
        (name, "  reset alone", reset_s / n),
        (name, "baseline: tau2 DB.load (JSON)", load_s),
        (name, "baseline: copy.deepcopy(DB)", copy_s),
        (name, "baseline: episode + deepcopy reset", episode_s / n + copy_s),
    ]


def _time(fn: Any, runs: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - t0) / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300, help="episodes per measurement")
    parser.add_argument("--baseline-runs", type=int, default=5, help="loads/copies per baseline")
    parser.add_argument("--envs", nargs="+", default=list(EPISODES), choices=list(EPISODES))
    args = parser.parse_args()

    print(f"{'env':8} {'operation':40} {'ms/op':>10} {'ops/s':>10}")
    for name in args.envs:
        rows = bench_env(name, args.iterations, args.baseline_runs)
        per = {what: s for _, what, s in rows}
        for env_name, what, seconds in rows:
            print(f"{env_name:8} {what:40} {seconds * 1e3:10.3f} {1 / seconds:10.0f}")
        loop = next(s for w, s in per.items() if w.startswith("episode ("))
        reset = per["  reset alone"]
        print(f"{name:8} reset alone is {per['baseline: tau2 DB.load (JSON)'] / reset:,.0f}x faster than "
              f"DB.load and {per['baseline: copy.deepcopy(DB)'] / reset:,.0f}x faster than deepcopy; "
              f"episode+reset is {per['baseline: episode + deepcopy reset'] / loop:,.1f}x faster than "
              f"episode+deepcopy")
        print()


if __name__ == "__main__":
    main()
