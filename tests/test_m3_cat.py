"""The CaT filter and a whole challenger episode in the calculation and web_browsing environments."""

from __future__ import annotations

import json

import pytest

from _scripted import ScriptedModel
from cat_sets import cat
from stages.propose import ProposeConfig, propose_file
from sandbox.config import SandboxConfig
from sca.cat import ValidateConfig, validate_task

HEX_EVAL = "def evaluate(answer):\n    return isinstance(answer, str) and answer.strip().lower() == 'hi there'\n"
HEX_SOLUTION = "answer = convert_hex_to_ascii(hex_string='6869207468657265')\n"

TARIFF_EVAL = (
    "def evaluate(answer):\n"
    "    try:\n        value = float(answer)\n    except (TypeError, ValueError):\n        return False\n"
    "    return abs(value - 1155.0) < 0.01\n"
)

CALC_TASKS = [
    cat("calc-valid-hex", "calculation", "valid", "Decode the hex string '6869207468657265' to text.",
        HEX_EVAL, HEX_SOLUTION,
        "answer = '6869207468657265'\n",
        "answer = reverse_string(string=convert_hex_to_ascii(hex_string='6869207468657265'))\n",
        "answer = convert_hex_to_ascii(hex_string='zz')\n"),  # a ToolError ends this one
    cat("calc-valid-tariff", "calculation", "valid",
        "A product costs 1000 EUR; convert it at 1.1 USD per EUR, then add a 5% tariff. What is its final value in USD?",
        TARIFF_EVAL,
        "usd = convert_currency(base_price=1000, conversion_rate=1.1)\n"
        "tariff = calculate_tariff(price=usd, tariff_rate=5)\n"
        "answer = estimate_final_value(price=usd, tariff=tariff)\n",
        "answer = convert_currency(base_price=1000, conversion_rate=1.1)\n",
        "answer = estimate_final_value(price=1000, tariff=calculate_tariff(price=1000, tariff_rate=5))\n",
        "answer = calculator(expression='1000 * 1.1 * 1.5')\n"),
    cat("calc-bad-trivial", "calculation", "noop_passes", "Say anything.",
        "def evaluate(answer):\n    return True\n", "answer = 1\n", "pass\n", "pass\n", "pass\n"),
    cat("calc-bad-not-bool", "calculation", "evaluate_not_bool", "Decode it.",
        "def evaluate(answer):\n    return answer\n", HEX_SOLUTION, "pass\n", "pass\n", "pass\n"),
    cat("calc-bad-failure-passes", "calculation", "failure_case_passes", "Decode it.", HEX_EVAL, HEX_SOLUTION,
        "pass\n", "answer = 'HI THERE'\n", "pass\n"),
    cat("calc-bad-unsafe-calculator", "calculation", "solution_error", "Compute.",
        "def evaluate(answer):\n    return answer == 4\n",
        "answer = calculator(expression='__import__(\"os\").getpid()')\n", "pass\n", "pass\n", "pass\n"),
]


def web_tasks():
    from sca.benchmarks import benchmark

    bench = benchmark("web_browsing").tasks(split="test")[0]
    evaluate, solution = bench.data["evaluation_function"], bench.data["solution"]
    return [
        cat("web-valid-price", "web_browsing", "valid", "How much does the Ridgeline 2 Tent cost now?",
            evaluate, solution,
            "answer = None\n",
            "click_url(url='/shop')\nanswer = view()['lines'][0]\n",
            "answer = 0\n"),
        # navigation tools change the browsing state: evaluate may not call them
        cat("web-bad-evaluate-navigates", "web_browsing", "evaluate_writes", "Open the shop.",
            "def evaluate(answer):\n    return scroll_down()['position'] != 'lines 1-5 of 9'\n",
            "click_url(url='/shop')\n", "pass\n", "pass\n", "pass\n"),
        cat("web-bad-solution-fails", "web_browsing", "solution_fails", "How much does the tent cost?",
            evaluate, "answer = 199.0\n", "pass\n", "pass\n", "pass\n"),
    ]


@pytest.fixture(scope="module")
def sandbox():
    from sandbox import Sandbox

    with Sandbox(SandboxConfig(backend="bwrap", workers=1, timeout=5.0)) as sb:
        yield sb


@pytest.mark.parametrize("task", CALC_TASKS, ids=[t["id"] for t in CALC_TASKS])
def test_calculation_cat_filter(task, sandbox):
    from envs import make_env

    v = validate_task(task, make_env("calculation"), sandbox)
    assert ("valid" if v["valid"] else v["reason"]) == task["meta"]["expect"], json.dumps(v)[:2000]


def test_web_cat_filter(sandbox):
    from envs import make_env

    env = make_env("web_browsing")
    start = env.state_hash()
    for task in web_tasks():
        v = validate_task(task, env, sandbox)
        assert ("valid" if v["valid"] else v["reason"]) == task["meta"]["expect"], json.dumps(v)[:2000]
        assert env.state_hash() == start


def answer_block(task: dict) -> str:
    fails = "".join(f"<failure_case>\n{f}</failure_case>\n" for f in task["failure_cases"])
    return (f"THOUGHT: it works END THOUGHT\nANSWER:\n<instruction>{task['instruction']}</instruction>\n"
            f"<evaluation_function>\n{task['evaluation_function']}</evaluation_function>\n"
            f"<solution>\n{task['solution']}</solution>\n{fails}END ANSWER")


@pytest.mark.parametrize("env_name, explore, task", [
    ("calculation", "print(convert_hex_to_ascii(hex_string='6869207468657265'))", CALC_TASKS[0]),
    ("web_browsing", "print(view())\nprint(click_url(url='/shop'))", None),
])
def test_scripted_challenger_episode(tmp_path, env_name, explore, task):
    task = task or web_tasks()[0]
    broken = dict(task, solution="answer = 'wrong'\n")
    script = {
        0: f"THOUGHT: look around END THOUGHT\nACTION:\n{explore}\nEND ACTION",
        1: answer_block(broken),
        2: answer_block(task),
    }
    cfg = ProposeConfig(env=env_name, n=1, max_steps=4, concurrency=1,
                        validate=ValidateConfig(SandboxConfig(backend="bwrap", workers=1, timeout=5.0)))
    out = tmp_path / "t.jsonl"
    s = propose_file(cfg, str(out), model=ScriptedModel(lambda turn, conv: script[turn]), show_progress=False)
    assert s.valid == 1
    [rec] = [json.loads(x) for x in out.read_text().splitlines()]
    assert rec["env"] == env_name and rec["validation"]["valid"]
    assert [a.get("reason") for a in rec["meta"]["attempts"]] == [None, "solution_fails", None]
    observation = rec["meta"]["transcript"][2]["content"]
    assert "OBSERVATION" in observation and "Traceback" not in observation
    assert "context" in rec["meta"]
