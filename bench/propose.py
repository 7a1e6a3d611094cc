"""The challenger's cost per step outside generation: prompt, parsing, sandbox runs, validation.

A model that answers instantly with canned replies (explore, explore, answer)
drives `sca propose`'s loop on retail, so all the time measured is the
toolkit's own. Printed: ms per step for an ACTION step and for an ANSWER step
(which runs the full CaT validation), and episodes/s, beside the bare cost of
one sandbox run measured in the same process.

    python bench/propose.py [--episodes 40] [--concurrency 8] [--sandbox bwrap]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sca.inference.base import ChatModel, Generation  # noqa: E402

ORDER = "#W2974929"
REPLIES = [
    "THOUGHT: look END THOUGHT\nACTION:\nu = get_user_details(user_id='fatima_anderson_2157')\nprint(u['orders'])\n",
    f"THOUGHT: check END THOUGHT\nACTION:\nprint(get_order_details(order_id='{ORDER}')['status'])\n",
    f"""THOUGHT: done END THOUGHT
ANSWER:
<instruction>Cancel my skateboard order (ref {{i}}); I no longer need it.</instruction>
<evaluation_function>
def evaluate():
    o = get_order_details(order_id="{ORDER}")
    return o["status"] == "cancelled" and o["cancel_reason"] == "no longer needed"
</evaluation_function>
<solution>cancel_pending_order(order_id="{ORDER}", reason="no longer needed")</solution>
<failure_case>pass</failure_case>
<failure_case>cancel_pending_order(order_id="{ORDER}", reason="ordered by mistake")</failure_case>
<failure_case>get_user_details(user_id="fatima_anderson_2157")</failure_case>
""",
]


class InstantModel(ChatModel):
    name = backend = "instant"

    def __init__(self) -> None:
        self.count = 0

    def generate(self, conversations, sampling, tools=None):
        out = []
        for conv in conversations:
            turn = sum(m["role"] == "assistant" for m in conv)
            self.count += 1
            out.append(Generation(REPLIES[turn].replace("{i}", str(self.count)), 1, 1, "stop"))
        return out

    def info(self):
        return {"model": self.name, "backend": self.backend}


def main() -> None:
    import tempfile
    import warnings

    from envs import make_env
    from sandbox import Sandbox
    from stages.propose import ProposeConfig, propose_file
    from sandbox.config import SandboxConfig
    from sca.cat import ValidateConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--sandbox", default="bwrap")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    workers = os.cpu_count() or 1

    env = make_env("retail")
    with Sandbox(SandboxConfig(backend=args.sandbox, workers=1)) as sb:
        for _ in range(20):
            sb.run(env, "x = 1")
        t0 = time.perf_counter()
        for _ in range(200):
            sb.run(env, f"get_order_details(order_id='{ORDER}')")
        bare = (time.perf_counter() - t0) / 200

    cfg = ProposeConfig(env="retail", n=args.episodes, max_steps=5, concurrency=args.concurrency,
                        validate=ValidateConfig(SandboxConfig(backend=args.sandbox, workers=workers)))
    with tempfile.TemporaryDirectory() as tmp:
        s = propose_file(cfg, f"{tmp}/t.jsonl", model=InstantModel(), show_progress=False)
    steps = s.episodes * len(REPLIES)
    overhead = s.seconds - s.generate_s
    print(f"sandbox {args.sandbox}, {workers} workers, {args.concurrency} episodes stepping together")
    print(f"one bare sandbox run with a tool call       {bare * 1000:8.2f} ms")
    print(f"episodes                                    {s.episodes:8d}  ({s.valid} valid)")
    print(f"per step, outside generation (mean)         {overhead / steps * 1000:8.2f} ms")
    print(f"  of which in the sandbox/validation        {s.sandbox_s / steps * 1000:8.2f} ms (summed over episodes)")
    print(f"episodes/s with an instant model            {s.episodes / s.seconds:8.2f}")


if __name__ == "__main__":
    main()
