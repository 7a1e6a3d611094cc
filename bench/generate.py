"""Throughput of the batched inference interface against one-at-a-time generation.

Both sides run the same model (the default, SmolLM2-135M-Instruct, on CPU
unless told otherwise), the same 16 chat prompts, greedy decoding and the same
token budget, in the same process:

- batched: ``ChatModel.generate`` with all conversations at once (hf backend);
- baseline: a plain loop of ``model.generate`` on one conversation at a time.

Runs alternate between the two sides and the best of `--repeats` is kept, so a
noisy shared machine penalises neither. Prints tokens/s of each and the ratio.

    python bench/generate.py [--model PATH] [--n 16] [--max-new-tokens 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="HF id or local path (default: the default model)")
    parser.add_argument("--n", type=int, default=16, help="number of conversations")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per side; the best counts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
