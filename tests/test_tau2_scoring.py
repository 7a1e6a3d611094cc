"""tau2's scorer on our episodes: only the calls our environment ran are replayed, with the arguments
they ran with; every tool of the trusted process is bounded whatever its input (``calculate`` gives
tau2's exact answer without ``eval``); the text beside native tool calls reaches tau2's COMMUNICATE
check; each of our endings reaches tau2 as its termination reason."""

from __future__ import annotations

import json
import random
import re
import warnings
from pathlib import Path

import pytest

from envs import make_env
from envs._tau import MAX_ARGUMENT_BYTES, MAX_ARGUMENT_DEPTH, MAX_LIST_ITEMS
from envs._tau_calculate import MAX_EXPRESSION_CHARS, MAX_NESTING, MAX_PRODUCT_BITS, CostlyExpression, calculate
from envs.base import ToolError, UnknownToolError
from sca.agent.executor import ExecutorConfig
from sca.benchmarks import benchmark
from sca.benchmarks.tau2 import TERMINATIONS, tau2_messages, tau2_scorer, tau2_termination

STUB = {"_truncated": {"bytes": 1 << 20, "sha256": "0" * 64, "prefix": '{"user_id": "'}}


def _tau2_calculate(domain: str):
    """tau2's own calculate of `domain` (it uses nothing of its toolkit but the text)."""
    module = __import__(f"tau2.domains.{domain}.tools", fromlist=["x"])
    tools = getattr(module, "RetailTools" if domain == "retail" else "AirlineTools")
    return lambda expression: tools.calculate(None, expression)


def _outcome(fn, expression):
    """("ok", answer), ("costly", None) for our refusal of what tau2 would run, or ("refused", None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eval's SyntaxWarning on "(1)(2)"
        try:
            return "ok", fn(expression)
        except CostlyExpression:
            return "costly", None
        except Exception:  # noqa: BLE001 - any refusal counts as one
            return "refused", None


def _agree(expression: str, domain: str = "retail") -> None:
    ours, theirs = _outcome(calculate, expression), _outcome(_tau2_calculate(domain), expression)
    assert ours == theirs, (expression, ours, theirs)


# -- calculate: tau2's answer, bounded ---------------------------------------------------------------
LISTED = [
    # tau2's own examples and gold expressions
    "2 + 2", "(2 + 3) * 4 / 8", "100 - 2.5", "3131.1 + 4777.75 + 367.38", "155.33 - 147.05 + 268.77 - 235.13",
    "2 * ((350 - 122) + (499 - 127))", "164.28", "135.24 - 153.23",
    # division, floor division, negatives, unary signs, parentheses
    "1 / 3", "2 / 3", "-7 / 2", "10 // 3", "-7 // 2", "7 // -2", "7.5 // 2", "-7.5 // 2", "1 / -8",
    "--1", "+-+1", "1--1", "2*-3", "-(2 + 3) * 4", "-(-(-(1)))", "((1))", "- 2 * 3", "-2 - -3", "+5",
    "1 - 2 - 3", "8 / 4 / 2", "2 * 3 + 4 * 5 - 6 / 3", "(1 + 2) * (3 - 4) / (5 + 6)",
    # decimals and rounding edge cases (round half to even on the binary value)
    "2.675", "1.005", "0.125", "0.375", "2.5", "-2.5", "0.5", "-0.005", "0.015", "1.115", "8.345",
    "-0", "-0.0", "0 * -1.0", "1. + .5", "00", "000.5", "01.5", "0012.", ".5 * 2",
    "0.1 + 0.2", "1.23456789 * 100", "999999999999999999 * 3", "99999999999999999999999 / 7",
    # large but taken: exact integer arithmetic before the one float conversion
    "1" * 300 + " / " + "1" * 299, "123456789 * 987654321 * 123456789 // 987654321",
    "(" * MAX_NESTING + "1 + 1" + ")" * MAX_NESTING, "-" * 500 + "1", "+".join(["1"] * 400),
    # what both refuse: syntax, types, zero division, overflow
    "", "   ", "  1 + 2", "1 +", "(1 + 2", "1 + 2)", "1 2", "1.5.5", "1..5", "1 .5", "01", "0012", "...", "()",
    "() * 2", "(1)(2)", "2 (3)", "(1) (*2)", "1 / 0", "1 // 0", "1.0 / 0", "5.5 // 0.0", "1 . 5", ".", "-",
    "9" * 400, "9" * 400 + " - 1", "9" * 200 + " * 1.0 * " + "9" * 200, "2 ^ 3", "1e5", "abs(-1)", "1,000",
    "1_000", "\t1", "1\n+2", "١ + ١",
    # floats past the largest: inf, nan (tau2 answers them)
    "1" * 400 + ".", "-" + "1" * 400 + ".", "1" * 400 + ". - " + "1" * 400 + ".",
]


@pytest.mark.parametrize("domain", ["retail", "airline"])
def test_calculate_gives_tau2s_answer_or_refuses_as_tau2_does(domain):
    for expression in LISTED:
        _agree(expression, domain)
    assert calculate("2.675") == "2.67" and calculate("-7 // 2") == "-4.0" and calculate("1" * 400 + ".") == "inf"


def test_calculate_agrees_with_tau2_on_random_texts():
    """Every short text over tau2's alphabet: the same answer, or a refusal on both sides (a power,
    which is ours alone, aside)."""
    rng = random.Random(7)
    alphabet = "0123456789+-*/(). "
    taken = 0
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
        if "**" in text:
            with pytest.raises(ToolError, match=r"\*\*"):
                calculate(text)
            continue  # never evaluated: tau2's eval of 9**9**9 would not end
        _agree(text)
        taken += _outcome(calculate, text)[0] == "ok"
    assert taken > 3000  # the sample is not all syntax errors


def _arithmetic(rng: random.Random, depth: int) -> str:
    """A random expression as a model might write one, with odd spellings and spacing."""

    def sp():
        return rng.choice(["", "", " ", "  "])

    if depth == 0 or rng.random() < 0.3:
        zeros = "0" * rng.randint(1, 3)
        number = rng.choice([str(rng.randint(0, 10 ** rng.randint(1, 12))), f"{rng.randint(0, 9999)}.{rng.randint(0, 99)}",
                             f".{rng.randint(0, 999)}", f"{rng.randint(0, 99)}.", zeros + str(rng.randint(0, 99)),
                             zeros + f"{rng.randint(0, 99)}.5", "0"])
        return rng.choice(["", "", "-", "+", "--", "-+"]) + sp() + number
    kind = rng.random()
    if kind < 0.2:
        return rng.choice(["-", "+"]) + sp() + _arithmetic(rng, depth - 1)
    if kind < 0.4:
        return "(" + sp() + _arithmetic(rng, depth - 1) + sp() + ")"
    op = rng.choice(["+", "-", "*", "/", "//", "*", "/"])
    return _arithmetic(rng, depth - 1) + sp() + op + sp() + _arithmetic(rng, depth - 1)


def test_calculate_agrees_with_tau2_on_random_arithmetic():
    """Random arithmetic (and slips of the pen in it): the same answer, or a refusal on both sides,
    except where ours is a costly refusal (a product past the bound), which tau2 never sees."""
    rng = random.Random(11)
    answered = costly = 0
    for i in range(3000):
        text = _arithmetic(rng, rng.randint(1, 8))
        if i % 3 == 0 and text:  # a slip of the pen: one character dropped, doubled or swapped in
            k = rng.randrange(len(text))
            text = rng.choice([text[:k] + text[k + 1:], text[:k] + text[k] + text[k:],
                               text[:k] + rng.choice("0123456789+-*/(). ") + text[k + 1:]])
        outcome = _outcome(calculate, text)
        if outcome[0] == "costly":
            assert "**" in text or len(text) > MAX_EXPRESSION_CHARS or text.count("*") > 5, text
            costly += 1
            continue
        _agree(text)
        answered += outcome[0] == "ok"
    assert answered > 1000 and costly < 30


def test_costly_expressions_are_refused_before_anything_runs():
    env = make_env("retail")
    tau2 = _tau2_calculate("retail")
    factors = " * ".join(["9" * 4000] * 600)  # 2.4 MB; tau2's eval spends about a minute on it
    for expression, why in [
        ("9**9**8", r"\*\*"),  # tau2's eval would not end
        ("2**10", r"\*\*"),  # tau2 answers, but no power is ever evaluated
        ("(1)(**2)", r"\*\*"),
        (factors, "bytes of JSON"),  # the arguments' size cap comes first
        ("1 + " * 300 + "1", f"longer than {MAX_EXPRESSION_CHARS}"),
        ("(" * (MAX_NESTING + 1) + "1" + ")" * (MAX_NESTING + 1), "nested"),
        (" * ".join(["9" * 100] * 4) + " / " + "9" * 390, f"at most {MAX_PRODUCT_BITS}"),
    ]:
        with pytest.raises(ToolError, match=why):
            env.call("calculate", {"expression": expression})
        with pytest.raises(ToolError, match=why):
            env.precheck("calculate", {"expression": expression})
    with pytest.raises(ToolError, match=f"longer than {MAX_EXPRESSION_CHARS}"):
        calculate(factors)  # the evaluator alone refuses it too
    # what is refused here as costly, tau2 would have answered: the refusal is ours, before tau2's tool
    assert tau2("2**10") == "1024.0"
    assert tau2("(" * (MAX_NESTING + 1) + "1" + ")" * (MAX_NESTING + 1)) == "1.0"
    assert float(tau2(" * ".join(["9" * 100] * 4) + " / " + "9" * 390)) > 1e9
    # what tau2 refuses itself runs (and fails) here too: it passes the precheck, and is replayed
    for expression in ["1 / 0", "(1)(2)", "1 2", "x + 1", "9" * 400]:
        assert env.precheck("calculate", {"expression": expression}) == {"expression": expression}
        with pytest.raises(ToolError):
            env.call("calculate", {"expression": expression})


# -- the precheck: every refusal before a tool runs ----------------------------------------------------
def _airline_reservation(env):
    db = env.db

    def card(uid):
        return next((pm for pm, m in db.users[uid].payment_methods.items() if m.source == "credit_card"), None)

    r = next(r for r in db.reservations.values() if r.status is None and card(r.user_id) and r.cabin == "economy")
    flights = [(f.flight_number, d) for f in db.flights.values() for d, s in f.dates.items()
               if s.status == "available" and s.available_seats["economy"] >= len(r.passengers)]
    return r, card(r.user_id), flights


def test_precheck_refuses_before_the_tool_runs_and_reads_the_call_alone():
    env = make_env("airline")
    reservation, card, flights = _airline_reservation(env)
    rid = reservation.reservation_id
    many = [{"flight_number": flights[0][0], "date": flights[0][1]}] * (MAX_LIST_ITEMS + 1)
    deep: dict = {}
    for _ in range(MAX_ARGUMENT_DEPTH):  # within the size cap, but past what pydantic can dump back
        deep = {"first_name": deep}
    refused = [
        ("no_such_tool", {}, UnknownToolError),
        (["get_user_details"], {"user_id": "x"}, UnknownToolError),
        ("get_user_details", '{"user_id": "x"', "JSON object"),  # native arguments that were no JSON
        ("get_user_details", ["x"], "JSON object"),
        ("update_reservation_baggages", STUB, "cut from the record"),
        ("get_user_details", {"user_id": "x" * MAX_ARGUMENT_BYTES}, "bytes of JSON"),
        ("update_reservation_flights", {"reservation_id": rid, "cabin": "economy", "flights": many,
                                        "payment_id": card}, f"at most {MAX_LIST_ITEMS}"),
        ("update_reservation_passengers", {"reservation_id": rid, "passengers": [deep]}, "levels deep"),
        ("get_user_details", {"user_id": "x", "admin": True}, "unexpected keyword"),
        ("get_user_details", {}, "missing required"),
        ("update_reservation_baggages", {"reservation_id": rid, "total_baggages": "lots", "nonfree_baggages": 0,
                                         "payment_id": card}, "total_baggages"),
        ("calculate", {"expression": "2 ** 3"}, r"\*\*"),
    ]
    initial = env.state_hash()
    for name, args, why in refused:
        with pytest.raises(UnknownToolError if why is UnknownToolError else ToolError,
                           match=None if why is UnknownToolError else why):
            env.precheck(name, args)
        if isinstance(args, dict):  # what a live call can send (the base class finds the first two first)
            with pytest.raises(ToolError):
                env.call(name, args)
    assert env.state_hash() == initial
    # the same answers whatever the state: the precheck reads the call, never the database
    env.call("update_reservation_flights", {"reservation_id": rid, "cabin": "economy", "flights": many[:2],
                                            "payment_id": card})
    assert env.state_hash() != initial
    for name, args, why in refused:
        with pytest.raises(ToolError):
            env.precheck(name, args)
    # what passes it comes back as the plain values the tool runs with (lossless conversions made)
    assert env.precheck("update_reservation_baggages", {"reservation_id": rid, "total_baggages": "3",
                                                        "nonfree_baggages": 1.0, "payment_id": card}) == {
        "reservation_id": rid, "total_baggages": 3, "nonfree_baggages": 1, "payment_id": card}


def test_a_huge_list_argument_is_refused():
    """update_reservation_flights compares every new flight with every flight of the reservation: with
    a thousand of each that is a million comparisons per call; a list past the cap never reaches it."""
    env = make_env("airline")
    reservation, card, flights = _airline_reservation(env)
    for count, why in [(MAX_LIST_ITEMS + 1, "a list of 65 items"), (300, "a list of 300 items"),
                       (1600, "75,292 bytes of JSON")]:
        args = {"reservation_id": reservation.reservation_id, "cabin": "economy", "payment_id": card,
                "flights": [{"flight_number": flights[count % 2][0], "date": flights[count % 2][1]}] * count}
        with pytest.raises(ToolError, match=why):
            env.call("update_reservation_flights", args)
    assert env.call("get_reservation_details", {"reservation_id": reservation.reservation_id})["flights"] == [
        f.model_dump() for f in reservation.flights]


@pytest.mark.parametrize("domain", ["retail", "airline"])
def test_every_gold_action_of_every_task_passes_the_precheck(domain):
    """The caps never refuse what the benchmark itself asks for (gold calls, as tau2's tasks give them)."""
    env = make_env(domain)
    for task in benchmark(domain).tasks():
        for action in task.data["evaluation_criteria"].get("actions") or []:
            env.precheck(action["name"], action["arguments"])


# -- the conversion: only what ran is replayed ---------------------------------------------------------
def _gold_task(domain="retail"):
    """A test task whose gold actions write and which must be told something."""
    env = make_env(domain)
    return next(t for t in benchmark(domain).tasks("test") if t.data["evaluation_criteria"].get("communicate_info")
                and any(env.tool(a["name"]).kind == "write" for a in t.data["evaluation_criteria"]["actions"]))


def _run_calls(env, calls):
    """Each (name, arguments) called on `env` and recorded as the executor records it (message 2)."""
    out = []
    for name, args in calls:
        result = error = None
        try:
            result = env.call(name, args) if isinstance(args, dict) else env.precheck(name, args)
        except ToolError as e:
            error = str(e)
        out.append({"message": 2, "name": name, "arguments": args, "result": result, "error": error})
    return out


def _code_episode(task, tool_calls, termination="user_stop"):
    from types import SimpleNamespace

    info = "; ".join(task.data["evaluation_criteria"].get("communicate_info") or []) or "All done."
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "THOUGHT: do it END THOUGHT\nACTION:\nx\nEND ACTION"},
                {"role": "user", "content": "OBSERVATION:\n..."},
                {"role": "assistant", "content": f"THOUGHT: tell END THOUGHT\n{info}"},
                {"role": "user", "content": "Thanks ###STOP###"}]
    return SimpleNamespace(task_id=task.id, trial=0, final_answer=info, answer=None, messages=messages,
                           tool_calls=tool_calls, config=ExecutorConfig(), termination=termination)


def _tau_calls(messages):
    return [(c.name, c.arguments) for m in messages if getattr(m, "tool_calls", None) for c in m.tool_calls]


def test_only_the_calls_our_environment_ran_are_replayed_with_the_arguments_they_ran_with():
    task = _gold_task()
    env = make_env("retail")
    user_id = next(iter(env.db.users))
    gold = [(a["name"], a["arguments"]) for a in task.data["evaluation_criteria"]["actions"]]
    address = {"user_id": user_id, "address1": "1 Test Way", "address2": "", "city": "Austin", "state": "TX",
               "country": "USA"}
    refused_before = [  # each would run in tau2, on unchecked arguments, if replayed
        ("modify_user_address", {**address, "zip": 73301}),  # an int zip: tau2 would store it, and fail the DB check
        ("calculate", {"expression": "2**10"}),  # tau2 would answer 1024.0 (and 9**9**8 would never end)
        ("no_such_tool", {}),
        ("modify_user_address", STUB),
        ("modify_user_address", '{"user_id": "' + user_id + '", "zip": '),
        ("transfer_to_human_agents", {"summary": "x" * MAX_ARGUMENT_BYTES}),
        ("modify_pending_order_items", {"order_id": "#W0", "item_ids": ["1"] * 65, "new_item_ids": ["2"] * 65,
                                        "payment_method_id": "x"}),
    ]
    refused_by_the_tool = [("get_order_details", {"order_id": "#W0000000"}), ("calculate", {"expression": "1 / 0"})]
    calls = _run_calls(env, refused_before[:3] + gold + refused_before[3:] + refused_by_the_tool)
    assert all(c["error"] for c in calls if (c["name"], c["arguments"]) not in gold)
    done = next(c for c in calls if c["error"] is None)
    done["result"] = {"_truncated": {"bytes": 5000, "sha256": "0" * 64, "prefix": "{"}}  # too large to keep: it ran
    ran = [(c["name"], env.precheck(c["name"], c["arguments"])) for c in calls
           if (c["name"], c["arguments"]) in gold + refused_by_the_tool]
    mismatches = []
    messages = tau2_messages("retail", _code_episode(task, calls).messages, calls, "code", mismatches)
    assert _tau_calls(messages) == ran
    assert mismatches == []
    reward, detail = tau2_scorer("retail", task.data)(_code_episode(task, calls))
    assert (reward, detail["status"], detail["replay_mismatches"]) == (1, "ok", [])


def test_the_text_beside_native_tool_calls_reaches_tau2_and_observations_do_not():
    task = _gold_task()
    criteria = task.data["evaluation_criteria"]
    info = "; ".join(criteria["communicate_info"])
    env = make_env("retail")
    calls = _run_calls(env, [(a["name"], a["arguments"]) for a in criteria["actions"]])
    native = [{"id": f"c{i}", "type": "function", "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
              for i, c in enumerate(calls)]
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi, I need help."},
                {"role": "assistant", "content": f"THOUGHT: do it, then tell END THOUGHT\n{info}", "tool_calls": native},
                *[{"role": "tool", "tool_call_id": f"c{i}", "content": "..."} for i in range(len(calls))],
                {"role": "assistant", "content": "THOUGHT: done END THOUGHT\nAnything else?"},
                {"role": "user", "content": "No. ###STOP###"}]
    converted = tau2_messages("retail", messages, calls, "json")
    with_calls = [m for m in converted if getattr(m, "tool_calls", None)]
    assert len(with_calls) == 1 and with_calls[0].content == info  # said beside the calls, THOUGHT left out
    assert [m.content for m in converted if m.role == "user"] == ["Hi, I need help.", "No. ###STOP###"]
    from types import SimpleNamespace

    episode = SimpleNamespace(task_id=task.id, trial=0, final_answer="Anything else?", answer=None, messages=messages,
                              tool_calls=calls, config=ExecutorConfig(action_format="json"), termination="user_stop")
    reward, detail = tau2_scorer("retail", task.data)(episode)
    assert reward == 1 and detail["tau2"]["reward_breakdown"]["COMMUNICATE"] == 1.0
    # a THOUGHT alone beside the calls says nothing; so does the code format's ACTION
    messages[2]["content"] = "THOUGHT: only thinking END THOUGHT"
    assert [m.content for m in tau2_messages("retail", messages, calls, "json") if getattr(m, "tool_calls", None)] == [None]
    code = _code_episode(task, calls)
    converted = tau2_messages("retail", code.messages, calls, "code")
    assert [m.content for m in converted if getattr(m, "tool_calls", None)] == [None]
    # the code format's observations are tool output, not the user: left out, the user's own kept in order
    assert [m.content for m in converted if m.role == "user"] == ["Hi", "Thanks ###STOP###"]
    # a reply whose calls were all refused before running keeps its text, without calls
    refused = _run_calls(env, [("calculate", {"expression": "2**2"})])
    converted = tau2_messages("retail", [*messages[:2], dict(messages[2], content=f"THOUGHT: x END THOUGHT\n{info}")],
                              refused, "json")
    assert [(m.role, m.content, m.tool_calls) for m in converted[1:]] == [("assistant", info, None)]


# -- how an episode ended ---------------------------------------------------------------------------
def test_every_ending_of_ours_reaches_tau2_as_its_reason():
    """Only the user's stop is scored; the others reach tau2 as the reason its orchestrator would give."""
    expected = {"user_stop": "user_stop", "max_steps": "max_steps", "context_limit": "agent_error",
                "error": "agent_error", "final_answer": "agent_error", "": "agent_error"}
    source = (Path(__file__).parent.parent / "sca" / "agent" / "executor.py").read_text()
    produced = set(re.findall(r'_end\("(\w+)"\)', source)) | set(re.findall(r'termination or "(\w+)"', source))
    assert produced and produced <= set(expected), produced - set(expected)  # a new ending needs a mapping
    assert set(TERMINATIONS) <= set(expected)
    task = _gold_task()
    calls = _run_calls(make_env("retail"), [(a["name"], a["arguments"])
                                            for a in task.data["evaluation_criteria"]["actions"]])
    score = tau2_scorer("retail", task.data)
    for ours, theirs in expected.items():
        assert tau2_termination(ours).value == theirs
        reward, detail = score(_code_episode(task, calls, termination=ours))
        assert reward == (ours == "user_stop"), ours
        if ours != "user_stop":
            assert detail["tau2"]["info"]["note"].endswith(f"Termination reason: {theirs}")


# -- sca eval with native function calling: the gold actions, said beside the calls ------------------------
class NativeGold:
    """A chat model for both roles: as the executor it calls each task's gold actions natively in its
    first reply, saying the required information beside them (and nowhere else), then asks whether
    there is anything else; as the user it names its task, then stops."""

    name = backend = "scripted-native"
    context_length = None

    def __init__(self, domain):
        self.tasks = {t.id: t.data for t in benchmark(domain).tasks()}

    def generate(self, conversations, sampling, tools=None):
        from sca.inference.base import Generation

        out = []
        for conv in conversations:
            turn = sum(m["role"] == "assistant" for m in conv)
            if "# Your scenario" in conv[0]["content"]:
                task_id = conv[0]["content"].split("TASK-ID ", 1)[1].split()[0]
                text = f"I need help with task {task_id}." if turn == 0 else "Thank you. ###STOP###"
                out.append(Generation(text, 100, 10, "stop"))
                continue
            criteria = self.tasks[conv[1]["content"].split("task ", 1)[1].rstrip(".")]["evaluation_criteria"]
            info = "; ".join(criteria.get("communicate_info") or [])
            actions = criteria.get("actions") or []
            if turn == 0 and actions:
                calls = [{"id": f"call_{i}", "type": "function",
                          "function": {"name": a["name"], "arguments": json.dumps(a["arguments"])}}
                         for i, a in enumerate(actions)]
                out.append(Generation(f"THOUGHT: do it END THOUGHT\n{info}", 100, 10, "stop", tool_calls=calls))
            else:
                text = info if turn == 0 and info else "Is there anything else I can help with?"
                out.append(Generation(f"THOUGHT: reply END THOUGHT\n{text}", 100, 10, "stop"))
        return out

    def info(self):
        return {"model": self.name, "backend": self.backend}

    def close(self):
        pass


def _json_gold_eval(tmp_path, monkeypatch, domain, only=None):
    from _sandbox_util import backend_or_skip

    from sandbox.config import SandboxConfig
    from sca.agent import user_sim
    from sca.benchmarks.tau2 import Tau2Benchmark
    from stages.eval import EvalConfig, eval_file

    backend_or_skip("bwrap")
    if only is not None:
        real_tasks = Tau2Benchmark._tasks
        monkeypatch.setattr(Tau2Benchmark, "_tasks", lambda self: [t for t in real_tasks(self) if t.id in only])
    tasks = benchmark(domain).tasks("test")
    by_instruction = {t.instruction.strip(): t.id for t in tasks}
    real = user_sim.system_prompt
    monkeypatch.setattr(user_sim, "system_prompt",
                        lambda instruction: real(instruction) + f"\nTASK-ID {by_instruction[instruction.strip()]} ")
    config = EvalConfig(envs=[domain], trials=1, concurrency=8, episode=ExecutorConfig(action_format="json"),
                        sandbox=SandboxConfig(backend="bwrap", workers=1))
    out = tmp_path / f"{domain}.jsonl"
    summary = eval_file(config, str(out), executor_model=NativeGold(domain), show_progress=False)
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == len(tasks) and all(r["action_format"] == "json" for r in records)
    failures = [(r["benchmark_task_id"], r["scorer_detail"]) for r in records if r["reward"] != 1]
    assert not failures, failures[:2]
    assert all(r["scorer_detail"]["replay_mismatches"] == [] for r in records)
    assert summary["envs"][domain]["pass1"] == 1.0
    return records


#: a few test tasks of each domain: some that must be told something (only said beside the calls), one
#: that need not, and (airline) one without any action
FEW = {"retail": {"5", "36", "38", "70"}, "airline": {"2", "18", "26"}}


@pytest.mark.parametrize("domain", ["retail", "airline"])
def test_json_gold_replay_scores_one_on_a_few_tasks(tmp_path, monkeypatch, domain):
    records = _json_gold_eval(tmp_path, monkeypatch, domain, only=FEW[domain])
    assert {r["benchmark_task_id"] for r in records} == FEW[domain]
    criteria = {t.id: t.data["evaluation_criteria"] for t in benchmark(domain).tasks("test")}
    assert any(criteria[i].get("communicate_info") and criteria[i].get("actions") for i in FEW[domain])


@pytest.mark.slow
@pytest.mark.parametrize("domain", ["retail", "airline"])
def test_json_gold_replay_scores_one_on_every_test_task(tmp_path, monkeypatch, domain):
    _json_gold_eval(tmp_path, monkeypatch, domain)


def test_an_episode_whose_record_cannot_show_what_ran_scores_zero():
    """A trajectory keeps tool calls within bounds: a call past them that may have run (its arguments a
    small stub, or not recorded at all) cannot be replayed, and the trial scores 0, never a guess."""
    task = _gold_task()
    env = make_env("retail")
    gold = [(a["name"], a["arguments"]) for a in task.data["evaluation_criteria"]["actions"]]
    calls = _run_calls(env, gold)
    reward, detail = tau2_scorer("retail", task.data)(_code_episode(task, calls))
    assert (reward, detail["status"]) == (1, "ok")
    small = {"_truncated": {"bytes": 300, "sha256": "0" * 64, "prefix": '{"order_id": "'}}
    for episode in (_code_episode(task, calls + [{**calls[0], "arguments": small}]),
                    _code_episode(task, calls)):
        if not episode.tool_calls[-1]["arguments"] is small:
            episode.tool_calls_omitted = 3
        reward, detail = tau2_scorer("retail", task.data)(episode)
        assert (reward, detail["status"]) == (0, "unscorable"), detail
    large = {"_truncated": {"bytes": MAX_ARGUMENT_BYTES + 1, "sha256": "0" * 64, "prefix": "{"}}
    reward, detail = tau2_scorer("retail", task.data)(_code_episode(task, calls + [{**calls[0], "arguments": large}]))
    assert (reward, detail["status"]) == (1, "ok")  # refused before it ran: rightly not replayed


def test_an_episode_whose_record_cannot_show_a_call_at_the_size_cap_scores_zero():
    """A call of exactly MAX_ARGUMENT_BYTES passes the precheck (at most that many are taken): when the
    episode's budget for kept payloads is spent, its record holds a stub of that size, and it may have run."""
    task = _gold_task()
    calls = _run_calls(make_env("retail"), [(a["name"], a["arguments"]) for a in task.data["evaluation_criteria"]["actions"]])
    at_cap = {"_truncated": {"bytes": MAX_ARGUMENT_BYTES, "sha256": "0" * 64, "prefix": "{"}}
    reward, detail = tau2_scorer("retail", task.data)(_code_episode(task, calls + [{**calls[0], "arguments": at_cap}]))
    assert (reward, detail["status"]) == (0, "unscorable"), detail


def test_the_precheck_takes_what_is_at_each_cap():
    """Each cap refuses what is past it and takes what is at it: MAX_ARGUMENT_BYTES bytes of arguments,
    lists of MAX_LIST_ITEMS items, parentheses MAX_NESTING deep in calculate."""
    env = make_env("retail")
    pad = MAX_ARGUMENT_BYTES - len(json.dumps({"user_id": ""}, separators=(",", ":")))
    assert env.precheck("get_user_details", {"user_id": "x" * pad}) == {"user_id": "x" * pad}
    with pytest.raises(ToolError, match="bytes of JSON"):
        env.precheck("get_user_details", {"user_id": "x" * (pad + 1)})
    items = {"order_id": "#W0", "item_ids": ["1"] * MAX_LIST_ITEMS, "new_item_ids": ["2"] * MAX_LIST_ITEMS,
             "payment_method_id": "x"}
    assert env.precheck("modify_pending_order_items", items) == items
    with pytest.raises(ToolError, match=f"at most {MAX_LIST_ITEMS}"):
        env.precheck("modify_pending_order_items", {**items, "item_ids": ["1"] * (MAX_LIST_ITEMS + 1)})
    nested = "(" * MAX_NESTING + "1" + ")" * MAX_NESTING
    assert env.precheck("calculate", {"expression": nested}) == {"expression": nested}
    assert env.call("calculate", {"expression": nested}) == calculate(nested) == "1.0"


def test_only_the_calls_that_ran_are_replayed_with_their_converted_arguments():
    """tau2 runs its tools on arguments as given: a call our environment ran after converting them
    losslessly ("3" to 3) is replayed with the values it ran with, so both databases hold the same."""
    env = make_env("airline")
    reservation, card, _ = _airline_reservation(env)
    sent = {"reservation_id": reservation.reservation_id, "total_baggages": "3", "nonfree_baggages": 1.0,
            "payment_id": card}
    calls = _run_calls(env, [("update_reservation_baggages", sent)])
    assert calls[0]["error"] is None and calls[0]["result"]["total_baggages"] == 3
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "THOUGHT: do it END THOUGHT\nACTION:\nx\nEND ACTION"}]
    mismatches = []
    converted = tau2_messages("airline", messages, calls, "code", mismatches)
    assert _tau_calls(converted) == [("update_reservation_baggages", {**sent, "total_baggages": 3,
                                                                      "nonfree_baggages": 1})]
    assert mismatches == []


def test_calculate_bounds_products_of_floor_quotients_as_products():
    """A floor quotient of integers is an integer as large as its dividend: a product of them is bounded
    like any product of integers (refused before it runs), never taken for a float."""
    env = make_env("retail")
    quotients = " * ".join(["9" * 100 + " // 1"] * 4)  # 4 x 333 bits: past MAX_PRODUCT_BITS
    with pytest.raises(ToolError, match=f"at most {MAX_PRODUCT_BITS}"):
        env.precheck("calculate", {"expression": quotients})
    assert env.call("calculate", {"expression": " * ".join(["9" * 100 + " // 1"] * 3)}) == calculate(
        " * ".join(["9" * 100] * 3))
