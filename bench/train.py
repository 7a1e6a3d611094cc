"""Training throughput of `sca train --algo rft` against a plain TRL SFTTrainer, same data and settings.

Both sides train the same model (the default, SmolLM2-135M-Instruct, on CPU unless told
otherwise) on the same trajectories (the reward-1 ones of tests/fixtures/trajectories/retail.jsonl,
repeated to `--n` records), for the same steps, batch size, max length, learning rate, seed,
precision and gradient checkpointing, in the same process:

- sca: ``stages.train.train(..., algo="rft")``: our chat encoding, assistant-only labels, mask
  and token checks, then TRL's SFTTrainer on the pre-tokenized examples;
- baseline: TRL's SFTTrainer given the same conversations as a ``messages`` dataset, tokenized
  by TRL (loss on the whole sequence: the default template has no generation markers; the
  token streams are the same, so tokens/s compare like for like).

tokens/s = TRL's count of the non-padding tokens trained on / the training loop's time
(``train_runtime``). Also printed: the whole call's time (model load, tokenizing, our checks,
saving). Runs alternate between the two sides and the best of `--repeats` is kept, so a noisy
shared machine penalises neither. Goal: sca >= 0.95x the baseline.

    python bench/train.py [--model PATH] [--n 8] [--steps 4] [--batch-size 2] [--max-length 1024] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "trajectories" / "retail.jsonl"


def write_data(path: Path, n: int) -> list[dict]:
    """`n` reward-1 trajectories (the fixture's, repeated with fresh ids)."""
    good = [r for r in map(json.loads, FIXTURE.read_text().splitlines()) if r["reward"] == 1]
    records = []
    for i in range(n):
        r = dict(good[i % len(good)])
        r["id"] = f"{r['task_id']}#{i}"
        records.append(r)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def settings(args: argparse.Namespace) -> dict:
    return {
        "max_steps": args.steps, "per_device_train_batch_size": args.batch_size, "max_length": args.max_length,
        "learning_rate": 1e-5, "seed": 0, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
        "gradient_checkpointing": True,
    }


def run_sca(data: Path, out: Path, model: str, args: argparse.Namespace) -> tuple[float, float, int]:
    from stages.train import train

    start = time.perf_counter()
    summary = train(data, out, algo="rft", overwrite=True, options={**settings(args), "model_name_or_path": model})
    wall = time.perf_counter() - start
    tokens = round(summary.tokens_per_s * summary.train_seconds)
    return summary.tokens_per_s, wall, tokens


def run_baseline(records: list[dict], out: Path, model: str, args: argparse.Namespace) -> tuple[float, float, int]:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model)
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in records])
    config = SFTConfig(output_dir=str(out), bf16=False, **settings(args))
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    trainer.save_model(str(out))
    wall = time.perf_counter() - start
    runtime = result.metrics["train_runtime"]
    tokens = trainer._total_train_tokens
    return tokens / runtime, wall, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled default model)")
    parser.add_argument("--n", type=int, default=8, help="trajectories")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fastest on a shared CPU)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        from sca.inference.default_model import default_model_path

        args.model = str(default_model_path())

    tmp = Path(tempfile.mkdtemp(prefix="sca-bench-train-"))
    try:
        data = tmp / "trajectories.jsonl"
        records = write_data(data, args.n)
        best = {"sca": (0.0, 0.0, 0), "baseline": (0.0, 0.0, 0)}
        for rep in range(args.repeats):
            for side in ("baseline", "sca") if rep % 2 == 0 else ("sca", "baseline"):
                out = tmp / f"{side}-{rep}"
                res = run_sca(data, out, args.model, args) if side == "sca" else run_baseline(records, out, args.model, args)
                print(f"  run {rep + 1} {side:>8}: {res[0]:8.1f} tokens/s in training, {res[1]:6.1f} s in all, "
                      f"{res[2]} tokens", flush=True)
                if res[0] > best[side][0]:
                    best[side] = res
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    (s_rate, s_wall, s_tok), (b_rate, b_wall, b_tok) = best["sca"], best["baseline"]
    print(f"model {args.model}, {args.n} trajectories, {args.steps} steps of batch {args.batch_size}, "
          f"max_length {args.max_length}, {args.threads or 'default'} thread(s); best of {args.repeats}")
    print(f"sca train --algo rft : {s_rate:8.1f} tokens/s ({s_tok} tokens; {s_wall:.1f} s in all)")
    print(f"plain TRL SFTTrainer : {b_rate:8.1f} tokens/s ({b_tok} tokens; {b_wall:.1f} s in all)")
    print(f"ratio                : {s_rate / b_rate:.3f}x (goal >= 0.95x)")


if __name__ == "__main__":
    main()
