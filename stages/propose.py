"""`sca propose`: the challenger explores an environment and writes Code-as-Task tasks.

One episode, as in the paper: the challenger gets the environment (tools,
policy, and for TauBench domains a user id to write a task for), and on every
turn writes ``THOUGHT: ... END THOUGHT`` and then either

* ``ACTION: <python> END ACTION``: the code calls tools in the sandbox against
  the episode's own scratch state; the observation is what it printed, the
  value of ``answer``, or the error and traceback; or
* ``ANSWER: <instruction> <evaluation_function> <solution> <failure_case>x3
  END ANSWER``: the task is checked at once with exactly the checks of
  ``sca validate`` (:func:`stages.validate.validate_task`); if it fails, the
  reason and traceback go back to the challenger to revise.

The episode ends at a valid task or after ``max_steps`` turns. Episodes run
concurrently and step together: each step, every live episode's next turn is
generated in one batched call. Valid tasks are written as episodes finish;
the run stops when ``n`` tasks are valid or ``max_episodes`` have run.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import textwrap
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from sca.runs import StageRun, progress
from stages.validate import ValidateConfig, feedback, validate_task

# -- configuration ------------------------------------------------------------------------------


@dataclass
class ProposeConfig:
    """Options of `sca propose` (the CLI flags and their defaults)."""

    env: str = "retail"
    n: int = 800  # valid tasks wanted
    max_episodes: int | None = None  # default: 20 * n
    max_steps: int = 15  # the paper's cap per episode
    concurrency: int = 8  # episodes stepping together (one batched generate per step)
    seed: int = 0
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 1024
    observation_limit: int = 4000  # characters of an observation shown to the challenger
    remove_order_ids: bool = True  # retail: the executor must find the order itself (paper)
    validate: ValidateConfig = field(default_factory=ValidateConfig)

    @property
    def episode_budget(self) -> int:
        return self.max_episodes if self.max_episodes is not None else 20 * self.n


STOP = ["END ACTION", "END ANSWER"]

# -- the prompt -----------------------------------------------------------------------------------

FORMAT = """\
Every reply is a THOUGHT followed by exactly one ACTION or one ANSWER.

To explore or to try code:

THOUGHT: what you want to learn or check END THOUGHT
ACTION:
<Python code; the tools are functions; print what you want to see>
END ACTION

The code runs against a scratch copy of the environment that keeps your changes until your
answer is checked. You see what it printed, the value of `answer` if it set one, or the error.

When your task works, reply:

THOUGHT: why the task is sound END THOUGHT
ANSWER:
<instruction>the request, written as the user would say it</instruction>
<evaluation_function>
def evaluate():
    # read-only tool calls; return True only if the task was done exactly
    ...
</evaluation_function>
<solution>
Python code that does the task (set `answer = ...` if the task asks a question)
</solution>
<failure_case>
Python code of a plausible near miss that evaluate() must reject
</failure_case>
<failure_case>...</failure_case>
<failure_case>...</failure_case>
END ANSWER

If the task asks a question, define `evaluate(answer)` instead: it receives the value the
solution (or a failure case) left in `answer`.
"""

RULES = """\
Rules:
- Give at least three failure cases: realistic mistakes (a wrong item, a wrong value, a missing step).
- evaluate() may only read: calling a tool that changes the state makes the task invalid.
- evaluate() must return False before anything is done, True after the solution, False after
  every failure case. The environment is reset before each of these runs.
- A tool that refuses raises ToolError with its message; a failure case may end on a ToolError.
"""

TAU_RULES = """\
- Write the task for the user given below. First look up that user's details and orders
  (or reservations) with the tools.
- Invent nothing: every id, item, option, price or field in your task must come from what
  the tools showed you.
- Before answering, run your solution and your evaluation function yourself in an ACTION.
- The instruction is what the user tells the agent; the agent must follow the policy above.
"""


def tool_listing(env: Any) -> str:
    """Each tool as its signature, kind and description (the challenger's manual)."""
    blocks = []
    for t in env.tools():
        desc = textwrap.indent(t.description.strip(), "    ")
        blocks.append(f"{t.signature()}  [{t.kind}]\n{desc}")
    return "\n\n".join(blocks)


def context_lines(context: dict[str, Any], skip: str = "") -> str:
    """The episode's assignment (the sampled user, domain...) as text; `skip` drops a value said elsewhere."""
    lines = []
    if "user_id" in context:
        lines.append(f"Write a task for the user with user id {context['user_id']}.")
    for k, v in context.items():
        if k == "user_id" or (skip and v == skip):
            continue
        if isinstance(v, (list, tuple)):
            v = ", ".join(str(x) for x in v)
        lines.append(f"{k.replace('_', ' ')}: {v}")
    return "\n".join(lines)


def challenger_prompt(env: Any, context: dict[str, Any]) -> str:
    """The system prompt of one challenger episode."""
    parts = [
        "You are the challenger. Explore a tool environment by calling its tools, then invent one "
        "new, realistic, verifiable task for an agent that uses the same tools, written as code: "
        "an instruction, an evaluation function, a solution and failure cases.",
        f"# Environment: {env.name}\n{env.description}",
        "# Tools\nEach tool is a Python function (keyword or positional arguments). It returns "
        "plain JSON values (dicts, lists, strings, numbers).\n\n" + tool_listing(env),
    ]
    if env.policy.strip():
        parts.append(f"# Policy the agent must follow\n{env.policy.strip()}")
    guidance = getattr(env, "challenger_guidance", "")
    rules = RULES + (TAU_RULES if env.user_facing else "") + (f"- {guidance.strip()}\n" if guidance else "")
    parts.append("# How to reply\n" + FORMAT + "\n" + rules)
    ctx = context_lines(context, skip=guidance)
    if ctx:
        parts.append(f"# Your assignment\n{ctx}")
    return "\n\n".join(parts)


def first_user_message(max_steps: int) -> str:
    return f"Begin. You have {max_steps} replies in all; explore first, then answer."


# -- parsing a turn ---------------------------------------------------------------------------------

_TAG = {name: re.compile(rf"<{name}>(.*?)</{name}>", re.S) for name in
        ("instruction", "evaluation_function", "solution", "failure_case")}


@dataclass
class Turn:
    kind: str  # "action" | "answer" | "invalid"
    thought: str = ""
    code: str = ""  # action
    task: dict[str, Any] | None = None  # answer: instruction, evaluation_function, solution, failure_cases
    error: str = ""  # invalid: what is wrong with the format


def clean_code(src: str) -> str:
    """Strip Markdown fences and common indentation from a code block."""
    s = src.strip("\n")
    fence = re.match(r"^\s*```[a-zA-Z0-9_+-]*\s*\n(.*?)\n?\s*```\s*$", s, re.S)
    if fence:
        s = fence.group(1)
    return textwrap.dedent(s).strip("\n") + "\n"


def parse_turn(text: str) -> Turn:
    """Read a challenger reply: THOUGHT, then ACTION or ANSWER (tolerant of missing END markers)."""
    thought = ""
    m = re.search(r"THOUGHT:(.*?)(END THOUGHT|ACTION:|ANSWER:|$)", text, re.S)
    if m:
        thought = m.group(1).strip()
    a_pos, q_pos = text.find("ACTION:"), text.find("ANSWER:")
    if a_pos < 0 and q_pos < 0:
        return Turn("invalid", thought, error="the reply has neither an ACTION nor an ANSWER")
    if a_pos >= 0 and (q_pos < 0 or a_pos < q_pos):
        body = text[a_pos + len("ACTION:"):]
        body = body.split("END ACTION", 1)[0]
        code = clean_code(body)
        if not code.strip():
            return Turn("invalid", thought, error="the ACTION is empty")
        return Turn("action", thought, code=code)
    body = text[q_pos + len("ANSWER:"):].split("END ANSWER", 1)[0]
    found = {name: [x for x in rx.findall(body)] for name, rx in _TAG.items()}
    missing = [name for name in ("instruction", "evaluation_function", "solution") if not found[name]]
    if missing:
        return Turn("invalid", thought, error="the ANSWER lacks " + ", ".join(f"<{m}>" for m in missing))
    task = {
        "instruction": " ".join(found["instruction"][0].split()),
        "evaluation_function": clean_code(found["evaluation_function"][0]),
        "solution": clean_code(found["solution"][0]),
        "failure_cases": [clean_code(x) for x in found["failure_case"]],
    }
    return Turn("answer", thought, task=task)


def complete_reply(text: str) -> str:
    """Put back the END marker a stop string cut off, so the transcript reads whole."""
    a, q = text.rfind("ACTION:"), text.rfind("ANSWER:")
    if a < 0 and q < 0:
        return text
    marker = "END ACTION" if a > q else "END ANSWER"
    return text if text.rstrip().endswith(marker) else text.rstrip() + "\n" + marker


_ORDER_ID = re.compile(r"\s*#W\d{7}\b")


def remove_order_ids(instruction: str) -> str:
    """Drop retail order numbers (``#W1234567``) from an instruction, as the paper does."""
    out = _ORDER_ID.sub("", instruction)
    out = re.sub(r"\s+([,.;:!?])", r"\1", out)
    return re.sub(r"\s{2,}", " ", out).strip()


def normalise(instruction: str) -> str:
    """The form in which two instructions count as the same (case, spaces, punctuation)."""
    return " ".join(re.sub(r"[^\w\s]", " ", instruction.lower()).split())


# -- one episode ------------------------------------------------------------------------------------


def format_observation(res: Any, limit: int) -> str:
    parts = []
    if res.stdout:
        parts.append(res.stdout.rstrip())
    if res.status == "ok":
        if res.answer is not None:
            parts.append(f"answer = {json.dumps(res.answer, ensure_ascii=False)[:500]}")
        if not parts:
            parts.append("(the code ran and printed nothing)")
    elif res.status == "timeout":
        parts.append("The code ran past the time limit and was stopped.")
    else:
        parts.append((res.traceback or f"{res.error_type}: {res.error}").rstrip())
    text = "\n".join(parts)
    if len(text) > limit:
        text = text[:limit] + f"\n... ({len(text) - limit} more characters cut)"
    return "OBSERVATION:\n" + text


@dataclass
class Episode:
    index: int
    env: Any
    context: dict[str, Any]
    messages: list[dict[str, str]]
    steps: int = 0
    status: str = "running"  # running | valid | failed
    reason: str = ""
    task: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generate_s: float = 0.0
    sandbox_s: float = 0.0
    started: float = field(default_factory=time.monotonic)
    ended: float = 0.0

    @property
    def done(self) -> bool:
        return self.status != "running"


def step_episode(ep: Episode, reply: str, sandbox: Any, config: ProposeConfig) -> None:
    """Take one challenger reply: run its action or check its answer; extend the transcript."""
    ep.steps += 1
    ep.messages.append({"role": "assistant", "content": complete_reply(reply)})
    turn = parse_turn(reply)
    t0 = time.monotonic()
    left = config.max_steps - ep.steps
    if turn.kind == "invalid":
        obs = f"FORMAT ERROR: {turn.error}. Reply with THOUGHT ... END THOUGHT, then ACTION ... END ACTION or ANSWER ... END ANSWER."
        ep.attempts.append({"step": ep.steps, "kind": "invalid", "error": turn.error})
    elif turn.kind == "action":
        res = sandbox.run(ep.env, turn.code, mode="exec", timeout=config.validate.timeout, keep_payloads=False)
        obs = format_observation(res, config.observation_limit)
        ep.attempts.append({"step": ep.steps, "kind": "action", "status": res.status,
                            "tool_calls": len(res.tool_calls)})
    else:
        task = {"id": f"episode-{ep.index}", "env": ep.env.name, **(turn.task or {})}
        validation = validate_task(task, ep.env, sandbox, config.validate)
        ep.attempts.append({"step": ep.steps, "kind": "answer", "valid": validation["valid"],
                            "reason": validation["reason"]})
        ep.task, ep.validation = task, validation
        if validation["valid"]:
            ep.status = "valid"
            ep.sandbox_s += time.monotonic() - t0
            ep.ended = time.monotonic()
            return
        obs = "VALIDATION: " + feedback(validation) + "\nThe environment was reset. Revise the task and answer again."
    ep.sandbox_s += time.monotonic() - t0
    if left <= 0:
        ep.status, ep.reason = "failed", ("invalid_answer" if ep.task else "max_steps")
        ep.ended = time.monotonic()
        return
    ep.messages.append({"role": "user", "content": f"{obs}\n\n({left} replies left)"})


# -- the whole run -------------------------------------------------------------------------------------


@dataclass
class ProposeSummary:
    episodes: int = 0
    valid: int = 0
    failed: int = 0
    duplicates: int = 0
    resumed_valid: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    generate_s: float = 0.0
    sandbox_s: float = 0.0

    @property
    def yield_rate(self) -> float:
        return self.valid / self.episodes if self.episodes else 0.0


def _existing_instructions(path: str | None) -> set[str]:
    if not path or path == "-" or not Path(path).exists():
        return set()
    seen = set()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            seen.add(normalise(json.loads(line)["instruction"]))
        except (ValueError, KeyError, TypeError):
            continue  # a torn line; the writer cuts it
    return seen


def episode_id(env: str, seed: int, index: int) -> str:
    return f"{env}-s{seed}-e{index:05d}"


def task_record(ep: Episode, config: ProposeConfig, model_info: dict[str, Any], prompt_sha: str) -> dict[str, Any]:
    """The CaT record of a finished episode (valid tasks; failed ones carry what they had)."""
    task = ep.task or {}
    instruction = task.get("instruction", "")
    original = instruction
    if config.remove_order_ids and ep.env.name == "retail":
        instruction = remove_order_ids(instruction)
    record = {
        "id": episode_id(ep.env.name, config.seed, ep.index),
        "env": ep.env.name,
        "instruction": instruction,
        "evaluation_function": task.get("evaluation_function", ""),
        "solution": task.get("solution", ""),
        "failure_cases": task.get("failure_cases", []),
    }
    if ep.validation is not None:
        record["validation"] = ep.validation
    record["meta"] = {
        "source": "sca propose",
        "status": ep.status,
        **({"reason": ep.reason} if ep.reason else {}),
        "model": model_info.get("model") or model_info.get("name"),
        "episode": ep.index,
        "context": ep.context,
        **({"original_instruction": original} if original != instruction else {}),
        "steps": ep.steps,
        "attempts": ep.attempts,
        "tokens": {"prompt": ep.prompt_tokens, "completion": ep.completion_tokens},
        "timings": {"generate_s": round(ep.generate_s, 3), "sandbox_s": round(ep.sandbox_s, 3),
                    "total_s": round((ep.ended or time.monotonic()) - ep.started, 3)},
        "system_prompt_sha256": prompt_sha,
        "transcript": ep.messages[1:],  # the system prompt is the same for every episode but its assignment
    }
    return record


def run_propose(
    config: ProposeConfig,
    model: Any,
    sandbox: Any,
    *,
    on_finished: Callable[[str, dict[str, Any]], None],
    skip_indices: set[int] = frozenset(),  # type: ignore[assignment]
    already_valid: int = 0,
    seen_instructions: set[str] | None = None,
    advance: Callable[[int], None] = lambda n=1: None,
) -> ProposeSummary:
    """Run challenger episodes until `config.n` tasks are valid or the episode budget is spent.

    `on_finished(role, record)` receives each finished episode: role ``"accepted"``
    for a new valid task, ``"rejected"`` otherwise (failed or duplicate).
    """
    from envs import make_env
    from sca.inference import SamplingParams

    summary = ProposeSummary(resumed_valid=already_valid)
    reasons: Counter[str] = Counter()
    seen = set(seen_instructions or ())
    probe = make_env(config.env)
    seen |= {normalise(t.instruction) for t in probe.tasks(split="test")} if "test" in probe.splits() else set()
    model_info = model.info()
    valid = already_valid
    next_index = 0
    started_episodes = len(skip_indices)
    live: list[Episode] = []
    call = 0
    t_start = time.monotonic()
    prompt_shas: dict[int, str] = {}

    def start_episode() -> Episode:
        nonlocal next_index, started_episodes
        while next_index in skip_indices:
            next_index += 1
        idx = next_index
        next_index += 1
        started_episodes += 1
        env = make_env(config.env)
        context = env.challenger_context(random.Random(config.seed * 1_000_003 + idx))
        system = challenger_prompt(env, context)
        prompt_shas[idx] = hashlib.sha256(system.encode()).hexdigest()
        return Episode(idx, env, context, [{"role": "system", "content": system},
                                           {"role": "user", "content": first_user_message(config.max_steps)}])

    def finish(ep: Episode) -> None:
        nonlocal valid
        summary.episodes += 1
        summary.prompt_tokens += ep.prompt_tokens
        summary.completion_tokens += ep.completion_tokens
        summary.generate_s += ep.generate_s
        summary.sandbox_s += ep.sandbox_s
        record = task_record(ep, config, model_info, prompt_shas.pop(ep.index))
        if ep.status == "valid":
            key = normalise(record["instruction"])
            if key in seen:
                summary.duplicates += 1
                reasons["duplicate"] += 1
                record["meta"]["status"] = "duplicate"
                on_finished("rejected", record)
                return
            seen.add(key)
            valid += 1
            summary.valid += 1
            on_finished("accepted", record)
            advance(1)
        else:
            summary.failed += 1
            reason = ep.reason if ep.reason != "invalid_answer" else f"invalid_answer:{ep.validation['reason']}"
            reasons[reason] += 1
            on_finished("rejected", record)

    sampling_base = dict(temperature=config.temperature, top_p=config.top_p,
                         max_new_tokens=config.max_new_tokens, stop=STOP)
    workers = max(1, getattr(sandbox, "workers", 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="propose") as pool:
        while True:
            while (len(live) < config.concurrency and valid + len(live) < config.n
                   and started_episodes < config.episode_budget):
                live.append(start_episode())
            if not live:
                break
            t0 = time.monotonic()
            gens = model.generate([ep.messages for ep in live],
                                  SamplingParams(**sampling_base, seed=config.seed * 7919 + call))
            call += 1
            dt = (time.monotonic() - t0) / len(live)
            for ep, gen in zip(live, gens):
                ep.prompt_tokens += gen.prompt_tokens
                ep.completion_tokens += gen.completion_tokens
                ep.generate_s += dt
            list(pool.map(lambda pair: step_episode(pair[0], pair[1].text, sandbox, config), zip(live, gens)))
            still = []
            for ep in live:
                if ep.done:
                    finish(ep)
                else:
                    still.append(ep)
            live = still
    summary.reasons = dict(reasons.most_common())
    summary.seconds = time.monotonic() - t_start
    return summary


def propose_file(
    config: ProposeConfig,
    output: str,
    *,
    rejected: str | None = None,
    model: Any = None,
    model_name: str | None = None,
    backend: str = "hf",
    base_urls: list[str] | None = None,
    overwrite: bool = False,
    show_progress: bool | None = None,
) -> ProposeSummary:
    """`sca propose`: write valid tasks to `output`, failed episodes to `rejected`."""
    from envs import make_env

    make_env(config.env)  # an unknown environment fails here, before a model loads
    own_model = model is None
    if own_model:
        from sca.inference import load_model

        model = load_model(model_name, backend, base_urls=base_urls)
    settings = {**asdict(config), "model": model.info(), "stop": STOP}
    try:
        with StageRun("propose", {"accepted": output, "rejected": rejected}, settings=settings,
                      overwrite=overwrite) as run:
            skip = {int(i.rsplit("-e", 1)[1]) for i in run.done_ids
                    if i.startswith(f"{config.env}-s{config.seed}-e")}
            already = run.writers["accepted"].resumed if "accepted" in run.writers else 0
            seen = set() if overwrite else _existing_instructions(output)
            with config.validate.sandbox.build(workers=min(config.validate.sandbox.workers,
                                                           config.concurrency)) as sandbox:
                run.meta.data["settings"]["sandbox_backend"] = sandbox.backend_name
                with progress(config.n, f"propose {config.env}", show_progress) as advance:
                    advance(min(already, config.n))
                    summary = run_propose(config, model, sandbox, on_finished=run.write, skip_indices=skip,
                                          already_valid=already, seen_instructions=seen, advance=advance)
            run.counts.update({"episodes": summary.episodes, "duplicates": summary.duplicates,
                               "prompt_tokens": summary.prompt_tokens,
                               "completion_tokens": summary.completion_tokens})
            run.counts.update({f"reason:{k}": v for k, v in summary.reasons.items()})
    finally:
        if own_model:
            model.close()
    return summary
