"""The rollout engine's own cost, its throughput with a real model, and its memory per episode.

1. Overhead: a model that answers at once with canned replies drives `sca rollout` on
   calculation (4 actions, then the answer) and retail (the simulated user, 3 actions, a
   message, the user's stop). Printed: episodes/s, and the engine's own time per step in ms
   (wall time minus the time inside sandbox runs, which `bench/sandbox.py` measures), with one
   sandbox worker so that the two add up. Goal: <= 5 ms per step.
2. Throughput (`--model-episodes N`, default 16; 0 skips): the bundled model on CPU rolls out
   calculation tasks; every conversation it was asked is then generated again, in the same
   batches, by plain batched generation (no engine, no sandbox): tokens/s of both, same run.
   Goal: rollout >= 0.85x plain batched generation.
3. Memory: 1,000 live retail episodes, each with its own environment state after a few write
   tool calls; the growth of this process's memory. Goal: <= 2 GB.
4. Memory under hostile code (`--hostile-episodes N`, default 8; 0 skips): N retail episodes live at
   once, each ACTION of which spends the run's whole budget (8 MiB of tool data, 2,000 calls) on
   arguments built to weigh the most once decoded, for 15 steps. Printed: this process's peak growth
   per live episode and the trajectory record's size, against an honest episode's, same run. Goal:
   <= 64 MiB per live episode (the ceiling the executor states: 1 MiB of payloads kept in full, stubs
   and 1,000 call records past it), and a record of at most a few MB.

    python bench/rollout.py [--episodes 64] [--model-episodes 16] [--hostile-episodes 8] [--sandbox bwrap]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sca.inference.base import ChatModel, Generation  # noqa: E402

ORDER = "#W2974929"
CALC_TASK = {"id": "calc", "env": "calculation", "instruction": "How long is the string abcd?",
             "evaluation_function": "def evaluate(answer):\n    return answer == 4\n",
             "solution": "answer = string_length(string='abcd')\n", "failure_cases": ["pass\n"] * 3}
RETAIL_TASK = {"id": "retail", "env": "retail", "instruction": "Cancel your pending skateboard order: no longer needed.",
               "evaluation_function": (f'def evaluate():\n    o = get_order_details(order_id="{ORDER}")\n'
                                       '    return o["status"] == "cancelled"\n'),
               "solution": "pass\n", "failure_cases": ["pass\n"] * 3}
CALC_REPLIES = ["THOUGHT: t END THOUGHT\nACTION:\nprint(string_length(string='abcd'))\n"] * 4 + ["THOUGHT: t END THOUGHT\n4"]
RETAIL_REPLIES = [
    "THOUGHT: t END THOUGHT\nACTION:\nprint(get_user_details(user_id='fatima_anderson_2157')['orders'])\n",
    f"THOUGHT: t END THOUGHT\nACTION:\nprint(get_order_details(order_id='{ORDER}')['status'])\n",
    f"THOUGHT: t END THOUGHT\nACTION:\ncancel_pending_order(order_id='{ORDER}', reason='no longer needed')\n",
    "THOUGHT: t END THOUGHT\nDone: your order is cancelled.",
]


class InstantModel(ChatModel):
    """Canned replies by turn; the simulated user asks once, then stops."""

    name = backend = "instant"

    def generate(self, conversations, sampling, tools=None):
        out = []
        for conv in conversations:
            turn = sum(m["role"] == "assistant" for m in conv)
            if "# Your scenario" in conv[0]["content"]:
                text = "Please cancel my skateboard order." if turn == 0 else "###STOP###"
            else:
                replies = CALC_REPLIES if conv[1]["content"] == CALC_TASK["instruction"] else RETAIL_REPLIES
                text = replies[min(turn, len(replies) - 1)]
            out.append(Generation(text, 1, 1, "stop"))
        return out

    def info(self):
        return {"model": self.name, "backend": self.backend}


def overhead(task: dict, episodes: int, sandbox_backend: str) -> tuple[float, float, int]:
    """(episodes/s, engine ms per step outside sandbox runs, steps) for `episodes` trials of `task`."""
    from sandbox.config import SandboxConfig
    from sandbox.pool import Sandbox
    from stages.rollout import RolloutConfig, rollout_file

    inside = {"s": 0.0}
    real_run = Sandbox.run

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real_run(self, *args, **kwargs)
        finally:
            inside["s"] += time.perf_counter() - t0

    Sandbox.run = timed
    try:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "t.jsonl").write_text(json.dumps(task) + "\n")
            cfg = RolloutConfig(trials=episodes, concurrency=16, sandbox=SandboxConfig(backend=sandbox_backend, workers=1))
            model = InstantModel()
            rollout_file(f"{tmp}/t.jsonl", f"{tmp}/warm.jsonl", RolloutConfig(trials=2, sandbox=cfg.sandbox),
                         executor_model=model, user_model=model, show_progress=False)
            inside["s"] = 0.0
            t0 = time.perf_counter()
            rollout_file(f"{tmp}/t.jsonl", f"{tmp}/out.jsonl", cfg, executor_model=model, user_model=model,
                         show_progress=False)
            wall = time.perf_counter() - t0
            records = [json.loads(x) for x in Path(tmp, "out.jsonl").read_text().splitlines()]
    finally:
        Sandbox.run = real_run
    assert all(r["reward"] == 1 for r in records), [r["evaluation"] for r in records if r["reward"] != 1][:1]
    # generate steps: the executor's replies, and the simulated user's (its messages, in user-facing envs)
    user_turns = sum(1 for r in records if r["env"] == "retail" for m in r["messages"][1:]
                     if m["role"] == "user" and not m["content"].startswith("OBSERVATION:"))
    steps = sum(r["steps"] for r in records) + user_turns
    return episodes / wall, 1000 * (wall - inside["s"]) / steps, steps


def throughput(n: int, sandbox_backend: str) -> tuple[float, float, int]:
    """(rollout tok/s, plain batched tok/s, tokens) with the bundled model on CPU."""
    import torch

    from sandbox.config import SandboxConfig
    from sca.inference import load_model
    from stages.rollout import RolloutConfig, rollout_file
    from sca.agent.executor import ExecutorConfig

    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    model = load_model()
    calls: list[tuple[list, object]] = []
    real = model.generate

    def recording(conversations, sampling, tools=None):
        calls.append(([[dict(m) for m in c] for c in conversations], sampling))
        return real(conversations, sampling, tools)

    model.generate = recording
    tasks = [{**CALC_TASK, "id": f"calc-{i}", "instruction": f"How long is the string {'ab' * (i + 1)}?"} for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "t.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
        cfg = RolloutConfig(trials=1, concurrency=n, sandbox=SandboxConfig(backend=sandbox_backend, workers=2),
                            episode=ExecutorConfig(max_steps=3), seed=1)
        cfg.executor.max_new_tokens = 48
        t0 = time.perf_counter()
        rollout_file(f"{tmp}/t.jsonl", f"{tmp}/out.jsonl", cfg, executor_model=model, show_progress=False)
        wall = time.perf_counter() - t0
        records = [json.loads(x) for x in Path(tmp, "out.jsonl").read_text().splitlines()]
    tokens = sum(r["tokens"]["executor"]["completion"] for r in records)
    model.generate = real
    t0 = time.perf_counter()
    plain = 0
    for conversations, sampling in calls:
        plain += sum(g.completion_tokens for g in real(conversations, sampling))
    base_wall = time.perf_counter() - t0
    model.close()
    return tokens / wall, plain / base_wall, tokens


def memory(episodes: int) -> float:
    """MiB this process grows by holding `episodes` retail episodes, each after 3 write calls."""
    from envs import make_env
    from sca.agent.executor import ExecutorConfig, ExecutorEpisode

    make_env("retail")  # the pristine database, shared by all
    gc.collect()
    before = _rss_mib()
    live = []
    users = ["fatima_anderson_2157", "mei_kovacs_8020", "yusuf_rossi_9620"]
    for i in range(episodes):
        env = make_env("retail")
        ep = ExecutorEpisode.start(task_id=f"t{i}", trial=0, instruction="x", env=env, sandbox=None,
                                   config=ExecutorConfig(), scorer=None)
        env.call("modify_user_address", {"user_id": users[i % 3], "address1": f"{i} Main St", "address2": "",
                                         "city": "Austin", "state": "TX", "country": "USA", "zip": "73301"})
        for order in ("#W2974929", "#W4514908"):
            try:
                env.call("cancel_pending_order", {"order_id": order, "reason": "no longer needed"})
            except Exception:  # noqa: BLE001 - not this user's or not pending: a refusal, state kept
                pass
        live.append(ep)
    gc.collect()
    return _rss_mib() - before


#: ACTIONs that each spend a run's budget on what decodes heaviest: many calls, big and dense arguments
HOSTILE_ACTIONS = [
    # 2,000 calls (the run's call budget), each refused, each with a long refusal message
    "THOUGHT: t END THOUGHT\nACTION:\nfor i in range(2000):\n    try:\n        get_order_details(order_id='#W' + "
    "'9' * 3000)\n    except Exception:\n        pass\n",
    # calls of 16 KiB of empty lists (the densest JSON there is), until the byte budget is spent
    "THOUGHT: t END THOUGHT\nACTION:\nx = [[]] * 5400\nfor i in range(600):\n    try:\n        "
    "calculate(expression=x)\n    except Exception:\n        pass\n",
    # one call of 8 MiB less a little: a single huge argument
    "THOUGHT: t END THOUGHT\nACTION:\ntry:\n    get_user_details(user_id='u' * (8 * 1024 * 1024 - 64))\n"
    "except Exception:\n    pass\n",
]


class HostileModel(InstantModel):
    """An executor whose every ACTION spends its run's budget (see HOSTILE_ACTIONS); the user asks once."""

    def generate(self, conversations, sampling, tools=None):
        out = []
        for conv in conversations:
            turn = sum(m["role"] == "assistant" for m in conv)
            if "# Your scenario" in conv[0]["content"]:
                text = "Please cancel my skateboard order." if turn == 0 else "###STOP###"
            else:
                text = HOSTILE_ACTIONS[turn % len(HOSTILE_ACTIONS)]
            out.append(Generation(text, 1, 1, "stop"))
        return out


def hostile_memory(episodes: int, sandbox_backend: str) -> tuple[float, float, float, int]:
    """(peak MiB per live hostile episode, hostile record KiB, honest record KiB, tool calls counted per
    hostile episode) with `episodes` hostile retail episodes live at once, 15 steps each."""
    import threading

    from sandbox.config import SandboxConfig
    from stages.rollout import RolloutConfig, rollout_file

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "t.jsonl").write_text(json.dumps(RETAIL_TASK) + "\n")
        sandbox = SandboxConfig(backend=sandbox_backend, workers=2)
        honest = InstantModel()
        rollout_file(f"{tmp}/t.jsonl", f"{tmp}/honest.jsonl", RolloutConfig(trials=1, sandbox=sandbox),
                     executor_model=honest, user_model=honest, show_progress=False)
        honest_kib = Path(tmp, "honest.jsonl").stat().st_size / 1024
        gc.collect()
        before = _rss_mib()
        peak = [before]
        stop = threading.Event()

        def watch():  # the process's resident size, sampled (ru_maxrss would include the warm-up above)
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_mib())
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        model = HostileModel()
        try:
            rollout_file(f"{tmp}/t.jsonl", f"{tmp}/hostile.jsonl", RolloutConfig(trials=episodes, concurrency=episodes,
                                                                                 sandbox=sandbox),
                         executor_model=model, user_model=model, show_progress=False)
        finally:
            stop.set()
            watcher.join()
        lines = Path(tmp, "hostile.jsonl").read_text().splitlines()
        records = [json.loads(x) for x in lines]
        assert len(records) == episodes and all(r["infra_error"] is None for r in records), records[0]["infra_error"]
        calls = sum(len(r["tool_calls"]) + r.get("tool_calls_omitted", 0) for r in records) / episodes
        hostile_kib = max(len(x) for x in lines) / 1024
    return (peak[0] - before) / episodes, hostile_kib, honest_kib, int(calls)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--model-episodes", type=int, default=16)
    ap.add_argument("--memory-episodes", type=int, default=1000)
    ap.add_argument("--hostile-episodes", type=int, default=8)
    ap.add_argument("--sandbox", default="bwrap")
    args = ap.parse_args()
    import warnings

    warnings.simplefilter("ignore")
    print(f"rollout engine, {os.cpu_count()} cores, sandbox {args.sandbox}\n")
    for name, task in (("calculation", CALC_TASK), ("retail", RETAIL_TASK)):
        eps, ms, steps = overhead(task, args.episodes, args.sandbox)
        print(f"{name:12s} instant model: {eps:7.1f} episodes/s, engine overhead {ms:5.2f} ms per step "
              f"({steps} steps; goal <= 5 ms)")
    mib = memory(args.memory_episodes)
    print(f"\n{args.memory_episodes} live retail episodes with their own states: +{mib:,.0f} MiB "
          f"({mib * 1024 / args.memory_episodes:.0f} KiB each; goal <= 2 GB)")
    if args.hostile_episodes:
        per, hostile_kib, honest_kib, calls = hostile_memory(args.hostile_episodes, args.sandbox)
        print(f"\n{args.hostile_episodes} hostile retail episodes live at once (15 steps, each spending its run's "
              f"budget; {calls:,} tool calls each):\n  peak growth {per:,.1f} MiB per live episode (goal <= 64 MiB); "
              f"record {hostile_kib:,.0f} KiB, {hostile_kib / honest_kib:,.0f}x an honest one ({honest_kib:,.1f} KiB)")
    if args.model_episodes:
        roll, plain, tokens = throughput(args.model_episodes, args.sandbox)
        print(f"\nbundled model, CPU, {args.model_episodes} calculation episodes ({tokens} generated tokens):")
        print(f"  rollout {roll:6.1f} tok/s   plain batched generation of the same prompts {plain:6.1f} tok/s   "
              f"ratio {roll / plain:.2f}x (goal >= 0.85x)")


if __name__ == "__main__":
    main()
