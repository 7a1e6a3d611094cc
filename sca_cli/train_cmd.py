"""`sca train`: train a checkpoint on the trajectories of `sca rollout` (RFT, SFT, DPO), or online on
tasks (GRPO), with TRL."""

from __future__ import annotations

import os
from typing import Any, List, Optional

import typer

from sca.inference.config import ModelConfig, executor_defaults
from sca.training.algorithms import ALGORITHMS
from sca.training.options import TOKEN_ID_POLICIES, EpisodeOptions, ScaOptions
from sca_cli.common import (
    JUDGE_BACKEND,
    JUDGE_BASE_URL,
    JUDGE_MODEL,
    JUDGE_TEMPERATURE,
    OVERWRITE,
    SANDBOX,
    SKIP_INVALID,
    TIMEOUT,
    USER_BACKEND,
    USER_BASE_URL,
    USER_MODEL,
    WORKERS,
    err_console,
    examples,
    fail,
    field_help,
    flag,
    judge_flags_set,
    output_or_default,
    sandbox_config,
    stage_errors,
    user_config,
    warn,
)

#: the simulated user's settings where no --user-* flag says otherwise: sca rollout's and sca eval's
_USER = executor_defaults()
#: the defaults of the config fields that flags set (sca.training.options: no TRL import for --help)
_OURS, _EPISODE = ScaOptions(), EpisodeOptions()
#: old flag names, still taken (with a warning) for one release: the names every command now shares
RENAMED = {"--k": "--group-size", "--episode-max-steps": "--max-steps"}

EXAMPLES = examples(
    "sca train trajectories.jsonl -o ckpt --algo rft --preset paper",
    "sca train trajectories.jsonl -o ckpt --algo dpo --model meta-llama/Llama-3.1-8B-Instruct --lora --merge-lora",
    "sca train trajectories.jsonl -o ckpt --algo sft --epochs 2 --lr 2e-5 --batch-size 16 --max-length 8192",
    "sca train trajectories.jsonl -o ckpt --algo rft --config trl.yaml --set warmup_steps=10 --set lr_scheduler_type=cosine",
    "accelerate launch --config_file examples/accelerate/zero3.yaml -m sca_cli.app train t.jsonl -o ckpt --algo rft",
    "sca train tasks.jsonl -o ckpt --algo grpo --group-size 8 --preset paper   # online: episodes played in training",
    "sca train pae_tasks.jsonl -o ckpt --algo grpo --reward judge --judge-backend openai "
    "--judge-base-url http://gpu2:8000/v1   # rewarded by a judge's verdicts",
)

ALGOS = tuple(ALGORITHMS)
_ALGO_HELP = " | ".join(f"{a.name}: {a.help}" for a in ALGORITHMS.values()) + "."
#: what the first argument is, by algorithm: the trajectories an offline one selects from, an online one's tasks
_INPUT_HELP = (", ".join(a.name for a in ALGORITHMS.values() if not a.online)
               + ": trajectories (JSONL from sca rollout, docs/TRAJECTORY.md); "
               + ", ".join(a.name for a in ALGORITHMS.values() if a.online)
               + ": CaT tasks (JSONL, e.g. from sca validate). - for stdin.")
_TOKEN_IDS_HELP = " | ".join(
    name + (" (default)" if name == _OURS.token_ids else "") + (f": {what}" if what else "")
    for name, what in TOKEN_ID_POLICIES.items()) + "."


def train(
    trajectories_or_tasks: str = typer.Argument(..., help=_INPUT_HELP),
    output: Optional[str] = typer.Option(None, "-o", "--output", help=(
        "Checkpoint directory to write [default: runs/train-ALGO-INPUT-TIME; a distributed run must name one].")),
    algo: str = typer.Option(..., "--algo", help=_ALGO_HELP),
    group_size: Optional[int] = typer.Option(
        None, "--group-size", min=2, help="grpo: episodes per task and step, a group whose rewards are compared "
                                          f"(TRL's num_generations) [default {_EPISODE.num_generations}]."),
    max_steps_per_episode: Optional[int] = typer.Option(
        None, "--max-steps", min=1,
        help="grpo: executor replies per episode, the step budget as in sca rollout (episode_max_steps) "
             f"[default {_EPISODE.episode_max_steps}]. Not TRL's max_steps, the training steps: --set max_steps=N."),
    user_model: Optional[str] = USER_MODEL,
    user_backend: Optional[str] = USER_BACKEND,
    user_base_url: Optional[List[str]] = USER_BASE_URL,
    user_temperature: Optional[float] = flag(
        ModelConfig, "temperature", "--user-temperature", default=None,
        help=f"Simulated user's sampling temperature [default: {_USER.temperature:g}, as in sca rollout]."),
    reward: Optional[str] = flag(EpisodeOptions, "reward", "--reward", default=None, help=(
        f"grpo: {field_help(EpisodeOptions, 'reward')} [default: {_EPISODE.reward}]")),
    judge_model: Optional[str] = JUDGE_MODEL,
    judge_backend: Optional[str] = JUDGE_BACKEND,
    judge_base_url: Optional[List[str]] = JUDGE_BASE_URL,
    judge_temperature: Optional[float] = JUDGE_TEMPERATURE,
    sandbox: str = SANDBOX,
    workers: Optional[int] = WORKERS,
    timeout: float = TIMEOUT,
    model: Optional[str] = typer.Option(None, "--model", help="Base model: HF name or local path [default: the "
                                                              "bundled SmolLM2-135M-Instruct]."),
    lora: bool = typer.Option(False, "--lora", help="Train a LoRA adapter (needs peft)."),
    merge_lora: bool = typer.Option(False, "--merge-lora", help="Merge the adapter into the model at the end "
                                                                "(implies --lora): a plain checkpoint."),
    preset: Optional[str] = typer.Option(None, "--preset", help="paper: the paper's hyperparameters (RFT lr 1e-5, "
                                                                "batch 8, 6 epochs, 16k context; DPO lr 2e-7, "
                                                                "beta 0.1)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", min=0, help="Epochs (num_train_epochs)."),
    lr: Optional[float] = typer.Option(None, "--lr", min=0, help="Peak learning rate (learning_rate)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                             help="Examples per optimizer step over all GPUs (global_batch_size)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=1,
                                             help="Tokens per example; longer ones are cut (start kept)."),
    token_ids: Optional[str] = typer.Option(None, "--token-ids", help=_TOKEN_IDS_HELP),
    config: Optional[str] = typer.Option(None, "--config", help="YAML file of TRL options (SFTConfig/DPOConfig "
                                                                "fields, and ours)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="key=value: any config option; repeatable; "
                                                                 "applied last."),
    report_to: Optional[str] = typer.Option(None, "--report-to", help="none | tensorboard | wandb (comma-separated "
                                                                      "for several)."),
    skip_invalid: bool = SKIP_INVALID,
    overwrite: bool = OVERWRITE,
) -> None:
    """Train a model on trajectories with TRL; the loss covers the assistant's own tokens only."""
    if algo == "ppo":
        fail("--algo ppo is not offered: TRL 1.16 has no PPO trainer, and sca re-implements no trainer "
             "(docs/stages.md: 'Why there is no PPO'); GRPO is the online algorithm TRL runs on our episodes")
    if algo not in ALGOS:
        fail(f"--algo must be one of {', '.join(ALGOS)}, not {algo!r}")
    if algo != "grpo" and (group_size is not None or max_steps_per_episode is not None):
        fail("--group-size and --max-steps (an episode's step budget; TRL's training steps are --set max_steps=N) "
             "go with --algo grpo")
    if algo != "grpo" and (user_model or user_backend or user_base_url or user_temperature is not None):
        fail("--user-model, --user-backend, --user-base-url and --user-temperature go with --algo grpo")
    if algo != "grpo" and (reward is not None or judge_flags_set(judge_model, judge_backend, judge_base_url,
                                                                 judge_temperature)):
        fail("--reward, --judge-model, --judge-backend, --judge-base-url and --judge-temperature go with --algo grpo")
    # as in sca rollout: unset --user-* flags take the executor's defaults (its model: the one in training)
    user = user_config(_USER, user_model, user_backend, user_base_url, user_temperature)
    options: dict[str, Any] = {
        "model_name_or_path": model, "num_train_epochs": epochs, "learning_rate": lr,
        "global_batch_size": batch_size, "max_length": max_length, "token_ids": token_ids,
        "lora": True if lora or merge_lora else None, "merge_lora": True if merge_lora else None,
        "report_to": [r.strip() for r in report_to.split(",") if r.strip()] if report_to else None,
    }
    if algo == "grpo":
        # the judge's settings are GRPO's options (sca.training.options): unset ones follow the user's rule there
        options.update(num_generations=group_size, episode_max_steps=max_steps_per_episode, reward=reward,
                       judge_model=judge_model, judge_backend=judge_backend, judge_base_urls=judge_base_url,
                       judge_temperature=judge_temperature)
    # importing the hf backend sets OpenMP's passive waits before torch loads (sca.inference.hf): training on a
    # shared CPU then slows with its share of the machine, not many times more
    import sca.inference.hf  # noqa: F401
    from stages.train import train as run_train

    sandbox_settings = sandbox_config(sandbox, workers, timeout)  # grpo's; its other limits: SandboxConfig's
    if output is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would pick its own time
        fail("-o is needed in a distributed run: every process must write to the same directory")
    output = output_or_default(output, f"train-{algo}", trajectories_or_tasks, directory=True)
    with stage_errors():
        summary = run_train(
            trajectories_or_tasks, output, algo=algo, preset=preset, config_file=config, options=options,
            sets=set_ or [], overwrite=overwrite, skip_invalid=skip_invalid,
            on_skip=lambda msg: warn(f"skipped {msg}"),
            on_status=lambda msg: err_console.print(f"[dim]sca train: {msg}[/]"),
            sandbox=sandbox_settings, user=user,
        )
    if summary.main_process:  # one table for a distributed run
        _print_summary(summary)


def _print_summary(s: Any) -> None:
    from rich.table import Table

    table = Table(title=f"sca train --algo {s.algo}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()
    table.add_row("records", str(s.records), "")
    table.add_row("examples used", str(s.examples), "pairs" if s.algo == "dpo" else "trajectories")
    for reason, n in s.skipped.items():
        table.add_row("  skipped", str(n), reason)
    for note, n in s.notes.items():
        table.add_row(f"  {note}", str(n), "")
    if s.truncated:
        table.add_row("  truncated", str(s.truncated), f"cut at max_length {s.settings.get('max_length')}")
    table.add_row("tokens", str(s.tokens), f"{s.trained_tokens} trained (assistant), per epoch")
    p = s.parity
    if p.get("checked"):
        how = {"check": "all reproduced", "use": "trained on the generated ids"}.get(s.settings.get("token_ids"), "")
        table.add_row("token ids", f"{p['checked'] - p['mismatched']}/{p['checked']}",
                      f"assistant turns matching re-tokenization; {how}")
    table.add_row("steps", str(s.steps), f"{s.epochs:g} epochs, batch {_batch(s.settings)}")
    if s.final_loss is not None:
        first = f"from {s.first_loss:.4f}" if s.first_loss is not None else ""
        table.add_row("final loss", f"{s.final_loss:.4f}", first)
    rate = f"{s.tokens_per_s:.0f} tokens/s" if s.tokens_per_s else ""
    table.add_row("time", f"{s.train_seconds:.1f} s", f"training ({rate}); {s.wall_seconds:.1f} s in all")
    what = "merged LoRA" if s.merged else "LoRA adapter (needs the base model)" if s.lora else "full model"
    table.add_row("checkpoint", s.output_dir, what)
    err_console.print(table)


def _batch(settings: dict[str, Any]) -> str:
    per = settings.get("per_device_train_batch_size") or 1
    acc = settings.get("gradient_accumulation_steps") or 1
    world = settings.get("world_size") or 1
    return f"{per * acc * world} ({per} x {acc} accumulation x {world} processes)"
