"""What every command shares beyond its own flags: one name per concept (the old names as deprecated
aliases), --config FILE.yaml, --log-level and -q, --task-ids, and --report-to's scalar stream.

A command's stage is replaced by a function that records what it was given and stops with a bad-input
error (`captured`), so these tests see exactly what the command line hands the library; the
--task-ids and --report-to tests run the real stages against a local model server.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import sys
import types
from pathlib import Path

import pytest
from _sandbox_util import backend_or_skip
from _servers import ReplayServer
from cat_sets import cat, write_jsonl
from typer.testing import CliRunner

from sca_cli.app import app

#: each command that runs a stage: its arguments, and the stage function it calls (module, name)
COMMANDS = {
    "propose": (["propose", "-o", "out.jsonl"], ("stages.propose", "propose_file")),
    "validate": (["validate", "in.jsonl", "-o", "out.jsonl"], ("stages.validate", "validate_file")),
    "audit": (["audit", "in.jsonl", "-o", "out.jsonl"], ("stages.audit", "audit_file")),
    "rollout": (["rollout", "in.jsonl", "-o", "out.jsonl"], ("stages.rollout", "rollout_file")),
    "eval": (["eval", "-o", "out.jsonl"], ("stages.eval", "eval_file")),
    "report": (["report", "-o", "rep"], ("stages.report", "report")),
    "train": (["train", "in.jsonl", "-o", "ckpt", "--algo", "grpo"], ("stages.train", "train")),
}


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """`captured(command)`: replace that command's stage; the dict it returns fills with the stage's arguments,
    and whether progress was on and sca's log level when it was called."""
    from sca.records.io import InputError
    from sca.records.progress import is_enabled

    monkeypatch.chdir(tmp_path)

    def capture(command: str) -> dict:
        module, name = COMMANDS[command][1]
        seen: dict = {}

        def stage(*args, **kwargs):
            seen.update(args=args, kwargs=kwargs, progress=is_enabled(), level=logging.getLogger("sca").level)
            raise InputError("captured")

        monkeypatch.setattr(importlib.import_module(module), name, stage)
        return seen

    return capture


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


# -- one name per concept: the new names, and the old ones for one release ---------------------------------
def config_of(command: str, seen: dict):
    """The stage config a command handed over (its position differs by stage)."""
    return {"rollout": lambda: seen["args"][2], "eval": lambda: seen["args"][0]}[command]()


def test_trials_and_pass_k_reach_the_configs_by_their_new_names(captured):
    seen = captured("rollout")
    r = invoke("rollout", "in.jsonl", "-o", "out.jsonl", "--trials", "3")
    assert lines(r.output) == ["error: captured"] and config_of("rollout", seen).trials == 3
    seen = captured("eval")
    invoke("eval", "-o", "out.jsonl", "--trials", "4", "--pass-k", "2")
    config = config_of("eval", seen)
    assert (config.trials, config.pass_k) == (4, 2)
    invoke("eval", "-o", "out.jsonl", "--trials", "4")
    assert config_of("eval", seen).pass_k == 4  # the default: every trial
    seen = captured("report")
    invoke("report", "-o", "rep", "--pass-k", "3")
    assert seen["kwargs"]["k"] == 3


@pytest.mark.parametrize("command, old, new, check", [
    ("rollout", "--k", "--trials", lambda seen: config_of("rollout", seen).trials == 5),
    ("eval", "--k", "--pass-k", lambda seen: config_of("eval", seen).pass_k == 5),
    ("report", "--k", "--pass-k", lambda seen: seen["kwargs"]["k"] == 5),
    ("train", "--k", "--group-size", lambda seen: seen["kwargs"]["options"]["num_generations"] == 5),
    ("train", "--episode-max-steps", "--max-steps", lambda seen: seen["kwargs"]["options"]["episode_max_steps"] == 5),
])
def test_an_old_name_still_works_with_one_warning_naming_the_new_one(captured, command, old, new, check):
    args = COMMANDS[command][0] + (["--trials", "8"] if command == "eval" else [])
    seen = captured(command)
    r = invoke(*args, old, "5")
    assert lines(r.output) == [f"warning: {old} is deprecated and goes in the next release: use {new}",
                               "error: captured"]
    assert check(seen)
    seen.clear()
    r = invoke(*args, f"{old}=5")  # --k=5 as well
    assert check(seen) and r.output.count("deprecated") == 1
    r = invoke(*args, old, "5", new, "6")  # both: which one was meant?
    assert r.exit_code == 2 and lines(r.output) == [f"error: {old} is the old name of {new}: give one"]
    r = invoke(command, "--help")
    assert f"Was {old} (deprecated)." in " ".join(r.output.split())


def test_the_new_names_replace_the_old_ones_in_help():
    for command, flags in {"rollout": ["--trials", "--task-ids", "--max-steps"],
                           "eval": ["--trials", "--pass-k", "--task-ids", "--max-steps"],
                           "report": ["--pass-k"], "train": ["--group-size", "--max-steps"],
                           "propose": ["--max-steps"]}.items():
        text = invoke(command, "--help").output
        assert all(f in text for f in flags), command
        assert not re.search(r"^  (--k|--episode-max-steps)\b", text, re.M), command  # no option of that name
    assert "Not TRL's max_steps" in " ".join(invoke("train", "--help").output.split())


def test_train_max_steps_is_the_episodes_and_goes_with_grpo_only(captured):
    """--max-steps is every command's step budget; in train it must not be taken for TRL's max_steps."""
    seen = captured("train")
    invoke("train", "in.jsonl", "-o", "ckpt", "--algo", "grpo", "--max-steps", "4", "--group-size", "2")
    assert {k: seen["kwargs"]["options"][k] for k in ("episode_max_steps", "num_generations")} == {
        "episode_max_steps": 4, "num_generations": 2}
    assert "max_steps" not in seen["kwargs"]["options"]
    r = invoke("train", "in.jsonl", "-o", "ckpt", "--algo", "rft", "--max-steps", "4")
    assert r.exit_code == 2 and "--set max_steps=N" in r.output and "Traceback" not in r.output


# -- --config FILE.yaml on every command ------------------------------------------------------------------
#: per command: a config file's keys (flag spellings vary on purpose), and what the stage must then get
CONFIGS = {
    "propose": ("n: 7\nmax-steps: 4\n", lambda s: (s["args"][0].n, s["args"][0].max_steps) == (7, 4)),
    "validate": ("min_failure_cases: 1\n", lambda s: s["kwargs"]["config"].min_failure_cases == 1),
    "audit": ("max-mutants: 3\n", lambda s: s["kwargs"]["config"].max_mutants == 3),
    "rollout": ("trials: 3\ntemperature: 0.25\ntask-ids: [a, b]\n",
                lambda s: (s["args"][2].trials, s["args"][2].executor.temperature, s["args"][2].task_ids)
                == (3, 0.25, ["a", "b"])),
    "eval": ("env: calculation\ntrials: 3\nlimit: 2\n",
             lambda s: (s["args"][0].envs, s["args"][0].trials, s["args"][0].limit) == (["calculation"], 3, 2)),
    "report": ("--n-boot: 50\nseed: 4\n", lambda s: (s["kwargs"]["n_boot"], s["kwargs"]["seed"]) == (50, 4)),
}


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_config_file_sets_flags_and_the_command_line_wins(captured, tmp_path, command):
    text, check = CONFIGS[command]
    (tmp_path / "c.yaml").write_text(text)
    seen = captured(command)
    r = invoke(*COMMANDS[command][0], "--config", "c.yaml")
    assert lines(r.output) == ["error: captured"], r.output
    assert check(seen)
    # a flag given on the command line wins over the file, wherever it stands
    first_key = text.split(":", 1)[0].lstrip("-").replace("_", "-")
    value = {"env": "retail", "temperature": "0.5"}.get(first_key, "9")
    invoke(*COMMANDS[command][0], f"--{first_key}", value, "--config", "c.yaml")
    assert not check(seen)


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_config_file_unknown_key_and_bad_value_are_one_line_naming_file_and_key(captured, tmp_path, command):
    captured(command)
    (tmp_path / "bad.yaml").write_text("max-tokenz: 5\n")
    r = invoke(*COMMANDS[command][0], "--config", "bad.yaml")
    assert r.exit_code == 2 and len(lines(r.output)) == 1, r.output
    assert lines(r.output)[0].startswith(f"error: bad.yaml: unknown key 'max-tokenz': sca {command} has no flag")
    key = CONFIGS[command][0].split(":", 1)[0]
    (tmp_path / "bad.yaml").write_text(f"{key}: [1, 2]\n" if command != "eval" else "trials: many\n")
    r = invoke(*COMMANDS[command][0], "--config", "bad.yaml")
    assert r.exit_code == 2 and len(lines(r.output)) == 1, r.output
    assert lines(r.output)[0].startswith(f"error: bad.yaml: {key if command != 'eval' else 'trials'}: ")


def test_config_file_errors_of_the_file_itself(captured, tmp_path):
    captured("rollout")
    args = COMMANDS["rollout"][0]
    r = invoke(*args, "--config", "none.yaml")
    assert r.exit_code == 2 and lines(r.output) == ["error: none.yaml: No such file or directory"]
    (tmp_path / "list.yaml").write_text("- trials\n")
    r = invoke(*args, "--config", "list.yaml")
    assert lines(r.output) == ["error: list.yaml: expected a mapping of flag: value, got list"]
    (tmp_path / "broken.yaml").write_text("trials: 3\n  seed: [\n")
    r = invoke(*args, "--config", "broken.yaml")
    assert r.exit_code == 2 and lines(r.output)[0].startswith("error: broken.yaml:2: not valid YAML")
    (tmp_path / "old.yaml").write_text("k: 6\n")  # an old name: taken, with its warning
    seen = captured("rollout")
    r = invoke(*args, "--config", "old.yaml")
    assert lines(r.output)[0] == "warning: old.yaml: k is the old name of --trials; it goes in the next release"
    assert config_of("rollout", seen).trials == 6


def test_train_keeps_its_own_config_of_trl_options():
    text = " ".join(invoke("train", "--help").output.split())
    assert "YAML file of TRL options" in text and text.count("--config") >= 1
    assert "this command's flag names" not in text


# -- --log-level and -q on every command, and on sca itself -----------------------------------------------
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_quiet_and_log_level_on_every_command(captured, command):
    seen = captured(command)
    r = invoke(*COMMANDS[command][0], "-q", "--log-level", "debug")
    assert lines(r.output) == ["error: captured"]  # -q keeps the errors
    assert seen["progress"] is False and seen["level"] == logging.DEBUG
    invoke(*COMMANDS[command][0])  # each invocation starts from the defaults again
    assert seen["progress"] is True and seen["level"] == logging.WARNING
    invoke("-q", "--log-level", "info", *COMMANDS[command][0])  # `sca -q rollout` too
    assert seen["progress"] is False and seen["level"] == logging.INFO
    r = invoke(*COMMANDS[command][0], "--log-level", "loud")
    assert r.exit_code == 2 and lines(r.output) == ["error: --log-level must be one of debug, info, warning, error, not 'loud'"]


def test_quiet_silences_the_summary_but_not_warnings_and_log_messages_follow_the_level(tmp_path, monkeypatch):
    backend_or_skip("bwrap")
    from cat_sets import RETAIL_TASKS

    src = tmp_path / "in.jsonl"
    src.write_text("{oops\n" + json.dumps(RETAIL_TASKS[2]) + "\n")
    args = ["validate", str(src), "-o", str(tmp_path / "o.jsonl"), "--skip-invalid", "--sandbox", "bwrap",
            "--workers", "1", "--overwrite"]
    loud = invoke(*args)
    assert loud.exit_code == 0 and "accepted" in loud.output and "in.jsonl:1: not valid JSON" in loud.output
    quiet = invoke(*args, "-q")
    assert quiet.exit_code == 0 and lines(quiet.output) == [line for line in lines(loud.output)
                                                            if line.startswith("warning:")]
    assert lines(quiet.output) and "accepted" not in quiet.output
    # sca's loggers follow --log-level: an info message of the stage shows at info, not at the default
    import stages.validate as stage

    real = stage.validate_file

    def chatty(*a, **kw):
        logging.getLogger("sca.records").info("reading the tasks")
        return real(*a, **kw)

    monkeypatch.setattr(stage, "validate_file", chatty)
    assert "reading the tasks" not in invoke(*args).output
    assert "info: sca.records: reading the tasks" in invoke(*args, "--log-level", "info").output


def test_a_library_that_prints_its_own_records_is_not_printed_twice(monkeypatch, capsys):
    """transformers prints through its own handler and, where CI is set, also hands its records to the root
    logger: the root handler leaves them alone. Other libraries' warnings still show, as sca's own do."""
    from sca_cli.common import set_output

    set_output(log_level="warning")
    monkeypatch.setattr(logging.getLogger("transformers"), "propagate", True)
    monkeypatch.setattr(logging.getLogger("transformers"), "handlers", [])  # only the root one remains
    logging.getLogger("transformers.trainer").warning("missing keys")
    logging.getLogger("urllib3.pool").warning("retrying")
    logging.getLogger("sandbox.pool").warning("worker restarted")
    err = capsys.readouterr().err
    assert "missing keys" not in err
    assert "warning: urllib3.pool: retrying" in err and "warning: sandbox.pool: worker restarted" in err


# -- --task-ids ---------------------------------------------------------------------------------------------
CALC = [cat(f"calc-{i}", "calculation", "valid", f"What is the length of the string {'x' * i}?",
            f"def evaluate(answer):\n    return answer == {i}\n", f"answer = {i}\n", "answer = -1\n", "answer = -2\n",
            "pass\n") for i in range(1, 5)]


def test_task_ids_comma_separated_or_repeated(captured):
    seen = captured("rollout")
    invoke("rollout", "in.jsonl", "-o", "o.jsonl", "--task-ids", "a,b", "--task-ids", " c ")
    assert config_of("rollout", seen).task_ids == ["a", "b", "c"]
    seen = captured("eval")
    invoke("eval", "-o", "o.jsonl", "--task-ids", "retail/1")
    assert config_of("eval", seen).task_ids == ["retail/1"]
    invoke("eval", "-o", "o.jsonl")
    assert config_of("eval", seen).task_ids is None


def _answer_by_length(messages):
    """The executor's reply to a CALC task: the length, read from its instruction."""
    instruction = messages[1]["content"]
    return f"THOUGHT: counted END THOUGHT\n{instruction.rsplit(' ', 1)[1].rstrip('?').count('x')}"


def test_rollout_task_ids_runs_only_those_and_an_unknown_id_is_one_line(tmp_path):
    backend_or_skip("bwrap")
    src = write_jsonl(tmp_path / "tasks.jsonl", CALC)
    out = tmp_path / "t.jsonl"
    server = ReplayServer(_answer_by_length)
    try:
        r = invoke("rollout", str(src), "-o", str(out), "--backend", "openai", "--model", "m", "--base-url",
                   server.url, "--sandbox", "bwrap", "--trials", "1", "--task-ids", "calc-3,calc-1")
        assert r.exit_code == 0, r.output
        records = [json.loads(x) for x in out.read_text().splitlines()]
        assert sorted(x["task_id"] for x in records) == ["calc-1", "calc-3"]
        assert all(x["reward"] == 1 for x in records) and len(server.requests) == 2
        r = invoke("rollout", str(src), "-o", str(tmp_path / "u.jsonl"), "--backend", "openai", "--model", "m",
                   "--base-url", server.url, "--sandbox", "bwrap", "--task-ids", "calc-2,nope,calc-9")
        assert r.exit_code == 2 and lines(r.output) == [f"error: {src}: no task with id calc-9, nope (--task-ids)"]
        assert len(server.requests) == 2  # refused before any episode
    finally:
        server.close()


def test_eval_task_ids_by_either_id_then_limit_and_unknown_ids():
    from sca.benchmarks import benchmark
    from sca.records.io import InputError
    from stages.config import EvalConfig
    from stages.eval import benchmark_tasks, paper_benchmark_envs

    ids = [t.id for t in benchmark("calculation").tasks("test")]
    chosen = [f"calculation/{ids[5]}", ids[2]]  # the results' task_id, or the benchmark's own id
    tasks, _ = benchmark_tasks(EvalConfig(envs=["calculation"], task_ids=chosen))
    assert [t.id for t in tasks] == [f"calculation/{ids[2]}", f"calculation/{ids[5]}"]  # the benchmark's order
    tasks, _ = benchmark_tasks(EvalConfig(envs=["calculation"], task_ids=chosen, limit=1))
    assert [t.id for t in tasks] == [f"calculation/{ids[2]}"]
    with pytest.raises(InputError, match=r"^no task calculation/nope, zz in calculation \(split test\)$"):
        benchmark_tasks(EvalConfig(envs=["calculation"], task_ids=[ids[0], "zz", "calculation/nope"]))
    assert paper_benchmark_envs(EvalConfig(envs=["calculation"], task_ids=[ids[0]], m3tooleval_dir="x")) == {
        "calculation": "--task-ids: a subset of the tasks"}


# -- --report-to: the scalar stream, through test doubles of the libraries -----------------------------------
class FakeWriter:
    """torch.utils.tensorboard.SummaryWriter's edge: what add_scalar got."""

    made: list = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


@pytest.fixture
def fake_tensorboard(monkeypatch):
    """tensorboard is not installed here: a stand-in module where sca imports SummaryWriter from."""
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter
    FakeWriter.made = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    return FakeWriter.made


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in `logdir`, read back by tensorboard's own reader: tag -> (step, value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_rollout_report_to_tensorboard_logs_trials_tasks_and_the_summary(tmp_path):
    """Real event files through torch's SummaryWriter (tensorboard is a test dependency), read back."""
    backend_or_skip("bwrap")
    src = write_jsonl(tmp_path / "tasks.jsonl", CALC[:2])
    out = tmp_path / "t.jsonl"
    asked: dict = {}

    def reply(messages):  # calc-1: right the first time, then wrong; calc-2: always right
        right = _answer_by_length(messages)
        asked[right] = asked.get(right, 0) + 1
        return right if right.endswith("2") or asked[right] == 1 else "THOUGHT: a END THOUGHT\n-1"

    server = ReplayServer(reply)
    try:
        r = invoke("rollout", str(src), "-o", str(out), "--backend", "openai", "--model", "m", "--base-url",
                   server.url, "--sandbox", "bwrap", "--trials", "2", "--concurrency", "1", "--report-to", "tensorboard")
    finally:
        server.close()
    assert r.exit_code == 0, r.output
    assert [p.parent for p in tmp_path.rglob("events.out.tfevents.*")] == [tmp_path / "t.jsonl.tensorboard"]
    by_tag = tensorboard_scalars(tmp_path / "t.jsonl.tensorboard")
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(v for _, v in by_tag["trial/reward"]) == sorted(float(x["reward"]) for x in records) == [0, 1, 1, 1]
    assert [s for s, _ in by_tag["trial/reward"]] == [1, 2, 3, 4]
    assert by_tag["trial/tokens_executor"] == [(i, 15.0) for i in (1, 2, 3, 4)]  # the server's 10 + 5 per reply
    assert by_tag["task/mean_reward"] == [(0, 0.5), (1, 1.0)]  # calc-1: one of two; calc-2: both
    assert by_tag["run/pass@1"] == [(4, 0.75)] and by_tag["run/pass@2"] == [(4, 1.0)]
    assert by_tag["run/tokens"] == [(4, 60.0)] and by_tag["run/mean_reward"] == [(4, 0.75)]


def test_eval_report_to_wandb_logs_each_environments_metrics(tmp_path, monkeypatch):
    backend_or_skip("bwrap")
    logged, runs = [], []

    class Run:
        def __init__(self, **kwargs):
            self.kwargs, self.finished, self.axes = kwargs, False, {}
            runs.append(self)

        def define_metric(self, name, step_metric=None):
            self.axes[name] = step_metric

        def log(self, data):
            logged.append(data)

        def finish(self):
            self.finished = True

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: Run(**kw)))
    monkeypatch.setenv("WANDB_PROJECT", "proj")
    from sca.benchmarks import benchmark

    right = benchmark("calculation").tasks("test")[0].data["answer"]
    server = ReplayServer(lambda messages: f"THOUGHT: a END THOUGHT\n{right}")
    try:
        r = invoke("eval", "--env", "calculation", "--limit", "1", "--trials", "2", "--backend", "openai",
                   "--base-url", server.url, "--model", "m", "--sandbox", "bwrap", "-o", str(tmp_path / "e.jsonl"),
                   "--report-to", "wandb")
    finally:
        server.close()
    assert r.exit_code == 0, r.output
    [run] = runs
    assert run.finished and run.kwargs["project"] == "proj" and run.kwargs["config"]["trials"] == 2
    assert run.axes["trial/*"] == "trial_step" and run.axes["run/*"] == "run_step"
    assert [d for d in logged if "trial/reward" in d] == [{"trial/reward": 1.0, "trial_step": 1},
                                                          {"trial/reward": 1.0, "trial_step": 2}]
    summary = {k: v for d in logged for k, v in d.items() if k.startswith("run/")}
    assert summary == {"run/calculation/pass@1": 1.0, "run/calculation/pass@2": 1.0, "run/calculation/pass^2": 1.0}


@pytest.mark.parametrize("command", ["rollout", "eval"])
def test_report_to_a_missing_library_or_an_unknown_sink_is_one_line_before_any_model(captured, monkeypatch, command):
    seen = captured(command)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails: as when not installed
    r = invoke(*COMMANDS[command][0], "--report-to", "tensorboard")
    assert r.exit_code == 2 and len(lines(r.output)) == 1 and not seen
    assert lines(r.output)[0].startswith("error: --report-to tensorboard needs the tensorboard package "
                                         "(pip install tensorboard)")
    r = invoke(*COMMANDS[command][0], "--report-to", "mlflow")
    assert r.exit_code == 2 and lines(r.output) == ["error: --report-to takes none, tensorboard, wandb, not mlflow"]
    r = invoke(*COMMANDS[command][0], "--report-to", "none")
    assert lines(r.output) == ["error: captured"] and seen["kwargs"]["metrics"] is None


def test_metrics_log_closes_its_sinks_when_the_stage_stops(tmp_path, fake_tensorboard, monkeypatch):
    import stages.rollout as stage
    from sca.records.io import InputError

    def stopping(*args, metrics, **kwargs):
        metrics.trial({"task_id": "a", "reward": 1, "tokens": {}})
        raise InputError("stopped")

    monkeypatch.setattr(stage, "rollout_file", stopping)
    r = invoke("rollout", "in.jsonl", "-o", str(tmp_path / "o.jsonl"), "--report-to", "tensorboard")
    assert r.exit_code == 2
    [writer] = fake_tensorboard
    assert writer.closed and writer.scalars == [("trial/reward", 1.0, 1)]  # no summary of a run that stopped
    assert Path(writer.log_dir).name == "o.jsonl.tensorboard"


def test_metrics_log_leaves_an_infrastructure_failure_out_of_the_rewards():
    """A trial without a reward (the sandbox failed, not the agent) is no 0: neither a trial's reward nor
    part of its task's mean; its tokens still count. A recording sink at the library's edge."""
    from sca.metrics_log import MetricsLog

    class Sink:
        def __init__(self):
            self.scalars, self.closed = [], False

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def close(self):
            self.closed = True

    sink = Sink()
    log = MetricsLog([sink])
    log.trial({"task_id": "a", "reward": 1, "tokens": {"executor": {"prompt": 3, "completion": 2}}})
    log.trial({"task_id": "a", "reward": None, "tokens": {"executor": {"prompt": 4, "completion": 0}}})
    log.trial({"task_id": "b", "reward": None, "tokens": {}})
    log.finish({"pass@1": 1.0})
    assert sink.scalars == [("trial/reward", 1.0, 1), ("trial/tokens_executor", 5.0, 1),
                            ("trial/tokens_executor", 4.0, 2), ("task/mean_reward", 1.0, 0), ("run/pass@1", 1.0, 3)]
    assert sink.closed and log.sinks == []


def test_envs_and_its_sub_commands_take_config_quiet_and_log_level(tmp_path, monkeypatch):
    """sca envs is a group: its listing and its sub-commands take the shared options too."""
    monkeypatch.chdir(tmp_path)
    Path("list.yaml").write_text("json: true\n")
    r = invoke("envs", "--config", "list.yaml")
    assert r.exit_code == 0 and {e["name"] for e in json.loads(r.output)} >= {"retail", "calculation"}
    Path("show.yaml").write_text("json: true\nno-policy: true\n")
    r = invoke("envs", "show", "calculation", "--config", "show.yaml")
    shown = json.loads(r.output)
    assert r.exit_code == 0 and shown["name"] == "calculation" and "policy" not in shown
    Path("bad.yaml").write_text("bogus: 1\n")
    r = invoke("envs", "tasks", "retail", "--config", "bad.yaml")
    assert r.exit_code == 2 and lines(r.output) == [
        "error: bad.yaml: unknown key 'bogus': sca envs tasks has no flag --bogus"]
    for args in (["envs", "-q"], ["envs", "show", "retail", "-q", "--log-level", "debug"]):
        assert invoke(*args).exit_code == 0, args
