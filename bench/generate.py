"""Generation speed of the transformers backend: batching, a busy CPU, and a reused prompt prefix.

Three measurements, each of the bundled SmolLM2-135M-Instruct on CPU unless told otherwise, greedy:

1. Batching (the default): ``ChatModel.generate`` with 16 conversations at once against a plain loop
   of ``model.generate`` on one conversation at a time, same prompts and token budget. Prints
   tokens/s of each and the ratio.
2. A busy CPU (``--contention``): tokens/s of one process generating alone, then beside a CPU-bound
   neighbour (one process busy-looping on each core, started and stopped by this bench), for each
   thread setting named by ``--settings``: by default torch's own defaults (a thread per core, OpenMP
   threads that spin while they wait) against the backend's (see ``SCA_HF_THREADS`` in
   :mod:`sca.inference.hf`). Each setting runs in a process of its own (OpenMP reads its settings
   once, when torch loads); idle and loaded runs alternate. Prints each run and, per setting, the
   ratio loaded/idle (the goal: at least 1/3 beside a neighbour on every core).
3. A reused prefix (``--prefix``): the retail challenger's system prompt (the one ``sca propose``
   sends, about 6.7k tokens), in episodes of a few turns, generated with the backend's prefix cache
   and without it, alternating. Prints the seconds per turn of each, the speed-up, and whether the
   greedy answers are the same.

Runs alternate between the sides compared and the best of `--repeats` is kept (the median for
--contention), so a noisy shared machine penalises no side; say how loaded the machine was (uptime).

    python bench/generate.py [--model PATH] [--n 16] [--max-new-tokens 64] [--threads 1]
    python bench/generate.py --contention [--repeats 3] [--settings 'SCA_HF_THREADS=torch' '']
    python bench/generate.py --prefix [--turns 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOPICS = [
    "the sea", "a mountain village", "the history of bread", "how bees make honey",
    "a robot learning to paint", "winter in a big city", "the first day of school", "volcanoes",
    "a lighthouse keeper", "the invention of the printing press", "a desert at night", "friendship",
    "how rain forms", "a chess tournament", "an old library", "the life of a river",
]


def conversations(n: int) -> list[list[dict]]:
    return [
        [{"role": "user", "content": f"Write a detailed, long story about {TOPICS[i % len(TOPICS)]}."}]
        for i in range(n)
    ]


# -- 1. batching ---------------------------------------------------------------------------------


def one_at_a_time(model, tokenizer, convs, max_new_tokens: int) -> tuple[int, float, list[str]]:
    """The baseline: plain transformers, one conversation per `generate` call."""
    import torch

    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    tokens, texts = 0, []
    start = time.perf_counter()
    for conv in convs:
        enc = tokenizer.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        n = next((k + 1 for k, t in enumerate(new) if t in eos_ids), len(new))
        tokens += n
        texts.append(tokenizer.decode(new[:n], skip_special_tokens=True))
    return tokens, time.perf_counter() - start, texts


def batched(chat_model, convs, max_new_tokens: int) -> tuple[int, float, list[str]]:
    from sca.inference import SamplingParams

    start = time.perf_counter()
    gens = chat_model.generate(convs, SamplingParams(temperature=0, max_new_tokens=max_new_tokens))
    elapsed = time.perf_counter() - start
    return sum(g.completion_tokens for g in gens), elapsed, [g.text for g in gens]


def bench_batching(args) -> None:
    import torch

    from sca.inference import load_model

    chat = load_model(args.model, backend="hf", device=args.device, batch_size=args.n, num_threads=args.threads)
    convs = conversations(args.n)
    print(f"model {chat.name} on {chat.info()['device']}, {torch.get_num_threads()} CPU threads, "
          f"{args.n} conversations, greedy, max_new_tokens={args.max_new_tokens}")

    batched(chat, convs[:2], 4)  # warm-up, both paths share the weights
    best = {"batched": None, "one-at-a-time": None}
    texts = {}
    for r in range(args.repeats):
        for side in ("one-at-a-time", "batched") if r % 2 == 0 else ("batched", "one-at-a-time"):
            if side == "batched":
                tokens, seconds, texts[side] = batched(chat, convs, args.max_new_tokens)
            else:
                tokens, seconds, texts[side] = one_at_a_time(chat.model, chat.tokenizer, convs, args.max_new_tokens)
            rate = tokens / seconds
            print(f"  run {r + 1} {side:>14}: {tokens:5d} tokens in {seconds:7.2f} s = {rate:7.1f} tokens/s")
            if best[side] is None or rate > best[side]:
                best[side] = rate

    same = sum(a == b for a, b in zip(texts["batched"], texts["one-at-a-time"]))
    print(f"one at a time (plain model.generate): {best['one-at-a-time']:.1f} tokens/s")
    print(f"batched (ChatModel.generate):         {best['batched']:.1f} tokens/s")
    print(f"speed-up: {best['batched'] / best['one-at-a-time']:.2f}x  "
          f"(identical greedy outputs: {same}/{args.n})")
    chat.close()


# -- 2. a busy CPU -------------------------------------------------------------------------------

#: the neighbour: one of these per core, each a process that only burns CPU
BUSY_LOOP = "while True:\n    pass\n"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker(args) -> None:
    """One setting's generating process: loads the model, then answers each "run" line on stdin with one
    JSON line (tokens, seconds, torch's thread count) on stdout, until stdin ends."""
    from sca.inference import SamplingParams, load_model

    chat = load_model(args.model, backend="hf", device="cpu")
    import torch

    filler = " ".join(f"Fact {i}: the {TOPICS[i % len(TOPICS)]} is worth a story." for i in range(args.prompt_facts))
    conv = [{"role": "user", "content": f"{filler}\nWrite a detailed, long story about the sea."}]
    sampling = SamplingParams(temperature=0, max_new_tokens=args.max_new_tokens)
    chat.generate([conv], SamplingParams(temperature=0, max_new_tokens=2))  # warm-up
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        [gen] = chat.generate([conv], sampling)
        seconds = time.perf_counter() - start
        print(json.dumps({"tokens": gen.completion_tokens, "prompt_tokens": gen.prompt_tokens, "seconds": seconds,
                          "threads": torch.get_num_threads()}), flush=True)
    chat.close()


class Neighbour:
    """A CPU-bound neighbour: a busy-looping process on each core, while the `with` block runs."""

    def __init__(self, n: int):
        self.n = n
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Neighbour:  # noqa: PYI034
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(self.n)]
        time.sleep(0.5)  # running before the measured generation starts
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def bench_contention(args) -> None:
    settings = args.settings
    procs = {}
    for setting in settings:
        env = {**os.environ, **dict(kv.split("=", 1) for kv in setting.split())}
        cmd = [sys.executable, __file__, "--worker", "--max-new-tokens", str(args.max_new_tokens),
               "--prompt-facts", str(args.prompt_facts)] + (["--model", args.model] if args.model else [])
        procs[setting] = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    for setting, p in procs.items():  # loaded one after the other: the first load may convert the model
        if json.loads(p.stdout.readline()).get("ready") is not True:
            raise SystemExit(f"the worker of {setting!r} did not start")

    def run(setting: str) -> dict:
        p = procs[setting]
        p.stdin.write("run\n")
        p.stdin.flush()
        return json.loads(p.stdout.readline())

    print(f"{cores()} cores; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"neighbour: {cores()} busy-looping processes; max_new_tokens={args.max_new_tokens}")
    rates: dict[tuple[str, str], list[float]] = {}
    for r in range(args.repeats):
        order = settings if r % 2 == 0 else settings[::-1]
        for setting in order:
            for cond in ("idle", "loaded") if r % 2 == 0 else ("loaded", "idle"):
                if cond == "loaded":
                    with Neighbour(cores()):
                        out = run(setting)
                else:
                    out = run(setting)
                rate = out["tokens"] / out["seconds"]
                rates.setdefault((setting, cond), []).append(rate)
                print(f"  run {r + 1} {setting or '(sca default)':>40} {cond:>6}: {out['prompt_tokens']} prompt + "
                      f"{out['tokens']} new tokens in {out['seconds']:7.2f} s = {rate:6.1f} tokens/s "
                      f"({out['threads']} threads)", flush=True)
    for p in procs.values():
        p.stdin.close()
        p.wait()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'setting':>40}  idle tok/s  loaded tok/s  loaded/idle (median of {args.repeats})")
    for setting in settings:
        idle = statistics.median(rates[(setting, "idle")])
        loaded = statistics.median(rates[(setting, "loaded")])
        print(f"{setting or '(sca default)':>40}  {idle:10.1f}  {loaded:12.1f}  {loaded / idle:11.2f}")


# -- 3. a reused prefix --------------------------------------------------------------------------


def challenger_episodes(n: int) -> list[str]:
    """`n` system prompts of retail challenger episodes, as ``sca propose`` builds them."""
    import random

    import envs
    from sca.agent.challenger import challenger_prompt

    env = envs.make_env("retail")
    # as sca/agent/challenger.py does per episode (seed 0, episode i)
    return [challenger_prompt(env, env.challenger_context(random.Random(i))) for i in range(n)]


def bench_prefix(args) -> None:
    from sca.inference import SamplingParams, load_model
    from sca.inference.hf import HFChatModel

    chat = load_model(args.model, backend="hf", device=args.device, num_threads=args.threads)
    plain = HFChatModel.from_objects(chat.model, chat.tokenizer, name=chat.name, prefix_cache_bytes=0)
    systems = challenger_episodes(args.episodes)
    sampling = SamplingParams(temperature=0, max_new_tokens=args.max_new_tokens)
    length = len(chat._encode([{"role": "system", "content": systems[0]}], None, 0, None))
    print(f"model {chat.name}, retail challenger prompt: {length} tokens; {args.episodes} episodes of "
          f"{args.turns} turns, max_new_tokens={args.max_new_tokens}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    def episodes(model) -> tuple[float, int, list[list[int]]]:
        """Each episode's turns, one generate call each (as propose does at concurrency 1)."""
        seconds, turns, answers = 0.0, 0, []
        for system in systems:
            conv = [{"role": "system", "content": system}, {"role": "user", "content": "Begin."}]
            for _ in range(args.turns):
                start = time.perf_counter()
                [gen] = model.generate([conv], sampling)
                seconds += time.perf_counter() - start
                turns += 1
                answers.append(gen.token_ids)
                conv = conv + [{"role": "assistant", "content": gen.text},
                               {"role": "user", "content": "Observation: ok. Go on."}]
        return seconds, turns, answers

    best: dict[str, float] = {}
    answers = {}
    for r in range(args.repeats):
        for side in ("no reuse", "prefix cache") if r % 2 == 0 else ("prefix cache", "no reuse"):
            if side == "prefix cache":
                chat._prefix_cache.clear()  # every repeat starts cold: its first turn pays the prefill
            seconds, turns, answers[side] = episodes(chat if side == "prefix cache" else plain)
            per_turn = seconds / turns
            print(f"  run {r + 1} {side:>12}: {turns} turns in {seconds:7.2f} s = {per_turn:6.2f} s per turn",
                  flush=True)
            best[side] = min(best.get(side, per_turn), per_turn)
    same = sum(a == b for a, b in zip(answers["prefix cache"], answers["no reuse"]))
    print(f"no reuse:     {best['no reuse']:.2f} s per turn")
    print(f"prefix cache: {best['prefix cache']:.2f} s per turn")
    print(f"speed-up: {best['no reuse'] / best['prefix cache']:.2f}x  "
          f"(identical greedy answers: {same}/{len(answers['no reuse'])})")
    chat.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="HF id or local path (default: the default model)")
    parser.add_argument("--n", type=int, default=16, help="number of conversations (batching)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: 64 (batching), 32 (the others)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="alternating runs per side (default: 2, 3 for --contention)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the backend's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--contention", action="store_true", help="tokens/s alone and beside a CPU-bound neighbour")
    parser.add_argument("--settings", nargs="+", default=["SCA_HF_THREADS=torch", ""],
                        help="--contention: environment settings to compare, each 'VAR=VALUE VAR=VALUE' "
                             "('' = as it is)")
    parser.add_argument("--prompt-facts", type=int, default=20, help="--contention: filler sentences in the prompt")
    parser.add_argument("--prefix", action="store_true",
                        help="the retail challenger prompt with and without prefix reuse")
    parser.add_argument("--episodes", type=int, default=2, help="--prefix: challenger episodes")
    parser.add_argument("--turns", type=int, default=2, help="--prefix: turns per episode")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.max_new_tokens is None:
        args.max_new_tokens = 32 if (args.contention or args.prefix or args.worker) else 64
    if args.repeats is None:
        args.repeats = 3 if args.contention else 2
    if args.worker:
        worker(args)
    elif args.contention:
        bench_contention(args)
    elif args.prefix:
        bench_prefix(args)
    else:
        bench_batching(args)


if __name__ == "__main__":
    main()
