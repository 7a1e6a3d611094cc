"""Loading official M3ToolEval tasks from a CodeAct checkout, without running its code.

The fixture under tests/fixtures/m3tooleval/ mirrors the benchmark's layout
with our own small task files. Set M3TOOLEVAL_DIR to a real checkout to also
check the full official set (82 tasks).
"""

import importlib
import importlib.util
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

from envs._m3.benchmark import tool_namespace
from envs._m3.official import OfficialTaskError, find_impl_dir, load_official_tasks, make_env
from envs._m3.restricted import Interpreter, RestrictedError
from envs._m3.scoring import answers_match
from envs.base import ToolError
from envs.calculation import CalculationEnv
from envs.web_browsing import WebBrowsingEnv

FIXTURE = Path(__file__).parent / "fixtures" / "m3tooleval"


@pytest.fixture(scope="module")
def tasks():
    return load_official_tasks(FIXTURE)


@pytest.fixture(scope="module")
def imported_expected_outputs():
    """The fixture is our own code: import it for real, to compare with the interpreter's results."""
    name = "m3tooleval_fixture_tasks"
    root = FIXTURE / "tasks"
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    try:
        spec.loader.exec_module(package)
        base = importlib.import_module(f"{name}.base")
        for module in ("message_decoder", "dna_sequencer", "trade_calculator", "travel_itinerary_planning",
                       "web_browsing"):
            importlib.import_module(f"{name}.impl.{module}")
        return {t.name: t.expected_output for t in base.REGISTERED}
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def test_loads_every_fixture_task_with_its_domain_and_environment(tasks):
    assert Counter(t.data["domain"] for t in tasks) == {
        "message_decoder": 2, "dna_sequencer": 3, "trade_calculator": 3, "travel_itinerary_planning": 2,
        "web_browsing": 4,
    }
    for t in tasks:
        assert t.id == "m3/" + t.data["official_name"] and t.split == "test" and t.instruction
        assert t.data["env"] == ("web_browsing" if t.data["domain"] == "web_browsing" else "calculation")
        assert t.data["source"] == "m3tooleval"
        json.dumps(t.data)  # plain JSON data throughout
    by_id = {t.id: t for t in tasks}
    assert by_id["m3/plant_dna_lab/check_then_translate_tacq"].data["answer"] == "Invalid DNA sequence"
    assert by_id["m3/trade_calculator/two_shipments"].data["answer"] == [1100.0, 1650.0]
    assert by_id["m3/web_browsing/people_in_kitchen"].data["answer"] == 2


def test_expected_outputs_equal_those_of_importing_the_files(tasks, imported_expected_outputs):
    ours = {t.data["official_name"]: t.data["answer"] for t in tasks}
    assert set(ours) == set(imported_expected_outputs)
    for name, expected in imported_expected_outputs.items():
        assert ours[name] == json.loads(json.dumps(expected)), name


@pytest.mark.parametrize("where", ["checkout", "m3tooleval", "tasks", "impl"])
def test_accepts_the_checkout_or_any_level_below(tmp_path, where):
    checkout = tmp_path / "code-act"
    shutil.copytree(FIXTURE, checkout / "scripts" / "eval" / "m3tooleval")
    m3 = checkout / "scripts" / "eval" / "m3tooleval"
    root = {"checkout": checkout, "m3tooleval": m3, "tasks": m3 / "tasks", "impl": m3 / "tasks" / "impl"}[where]
    assert find_impl_dir(root) == (m3 / "tasks" / "impl").resolve()
    assert len(load_official_tasks(root)) == 14


def test_domain_filter_and_missing_files(tmp_path, tasks):
    only = load_official_tasks(FIXTURE, domains=["trade_calculator"])
    assert [t.data["domain"] for t in only] == ["trade_calculator"] * 3
    partial = tmp_path / "tasks" / "impl"
    partial.mkdir(parents=True)
    shutil.copy(FIXTURE / "tasks" / "impl" / "message_decoder.py", partial)
    assert len(load_official_tasks(tmp_path)) == 2
    with pytest.raises(OfficialTaskError, match="no M3ToolEval task files"):
        load_official_tasks(tmp_path / "empty")


def test_calculation_tasks_are_solvable_in_our_environment(tasks):
    for task in tasks:
        if task.data["env"] != "calculation":
            continue
        env = make_env(task)
        assert isinstance(env, CalculationEnv)
        assert answers_match(task.data["answer"], task.data["answer"])
    travel = next(t for t in tasks if t.id == "m3/travel_itinerary_planning/cheapest_stay_south")
    env = make_env(travel)
    ns = tool_namespace(env)
    flight = min(ns["find_flights"]('"North"', "South", "2024-02-01"), key=lambda f: f["price"])
    hotel = min(ns["book_hotel"]("South"), key=lambda h: h["price_per_night"])
    assert answers_match(ns["budget_calculator"](flight["price"], hotel["price_per_night"], 3), travel.data["answer"])
    with pytest.raises(ToolError, match="unknown location"):
        ns["find_flights"]("Oslo", "South", "2024-02-01")  # the official table, not ours


def test_web_tasks_are_solvable_on_the_official_pages(tasks):
    kettle = next(t for t in tasks if t.id == "m3/web_browsing/price_of_copper_kettle")
    env = make_env(kettle)
    assert isinstance(env, WebBrowsingEnv)
    env.call("click_url", {"url": "/products"})
    page = env.call("click_url", {"url": "/products/copper_kettle"})
    price = [line for line in page["lines"] if line.startswith("Price:")][0].split("$")[1]
    assert answers_match(price, kettle.data["answer"])
    kitchen = next(t for t in tasks if t.id == "m3/web_browsing/people_in_kitchen")
    env = make_env(kitchen)
    env.call("click_url", {"url": "/team"})
    members = env.call("click_url", {"url": "/team/kitchen"})["links"]
    assert answers_match(len(members), kitchen.data["answer"])


# -- nothing of the checkout runs -------------------------------------------------------------

HOSTILE = {
    "os.system": "import os\nos.system('touch {marker}')\n",
    "__import__": "__import__('os').system('touch {marker}')\n",
    "dunder walk": "x = ().__class__.__base__.__subclasses__()\n",
    "getattr": "f = getattr(str, 'join')\n",
    "eval": "eval(\"open('{marker}', 'w')\")\n",
    "exec": "exec('x = 1')\n",
    "open outside": "text = open('/etc/hostname').read()\n",
    "open for writing": "f = open('{marker}', 'w')\n",
    "format attribute": "s = '{{0.__class__}}'.format(1)\n",
    "huge string": "s = 'a' * 10 ** 9\n",
    "huge replace": "s = ('a' * 100000).replace('a', 'a' * 100)\n",
    "huge format": "s = f\"{{1:>999999999}}\"\n",
    "huge power": "n = 10 ** 10 ** 10\n",
    "huge text": "a = [[0] * 10 ** 5] * 10 ** 5\nb = str(a)\n",
    "attribute store": "import json\njson.loads = print\n",
    "global": "def f():\n    global x\n    x = 1\nf()\n",
    "try": "try:\n    x = 1\nexcept Exception:\n    pass\n",
    "decorator": "def d(f):\n    return f\n@d\ndef g():\n    pass\n",
    "recursion": "def f(n):\n    return f(n + 1)\nf(0)\n",
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_task_files_are_refused_without_side_effects(tmp_path, kind):
    impl = tmp_path / "tasks" / "impl"
    impl.mkdir(parents=True)
    marker = tmp_path / "pwned"
    (impl / "message_decoder.py").write_text(HOSTILE[kind].format(marker=marker))
    with pytest.raises(OfficialTaskError):
        load_official_tasks(tmp_path)
    assert not marker.exists()


def test_class_bodies_never_run(tmp_path):
    impl = tmp_path / "tasks" / "impl"
    impl.mkdir(parents=True)
    marker = tmp_path / "pwned"
    (impl / "message_decoder.py").write_text(
        "from ..base import Task\n"
        f"class Evil:\n    open({str(marker)!r}, 'w')\n"
        "e = Evil(1)\n"
        "def reverse_string(s):\n    raise RuntimeError('never runs: the tool is ours')\n"
        "Task(name='t', tools={}, instruction='i', expected_output=reverse_string('ab'))\n"
    )
    [task] = load_official_tasks(tmp_path)
    assert task.data["answer"] == "ba" and not marker.exists()


def test_the_interpreter_bounds_its_work():
    with pytest.raises(RestrictedError, match="steps"):
        Interpreter({}, max_steps=10_000).run("while True:\n    pass\n")
    values = Interpreter({}).run(
        "xs = [n * n for n in range(10) if n % 2]\n"
        "d = {k: v for k, v in zip('abc', [1, 2, 3])}\n"
        "first, *rest = xs\n"
        "label = f\"{first:>4}|{len(rest)}\"\n"
        "total = sum(map(len, ['ab', 'c']), 10)\n"
        "best = max([{'p': 3}, {'p': 9}], key=lambda h: h['p'])['p']\n"
    )
    assert values["xs"] == [1, 9, 25, 49, 81] and values["d"] == {"a": 1, "b": 2, "c": 3}
    assert values["rest"] == [9, 25, 49, 81] and values["label"] == "   1|4"
    assert values["total"] == 13 and values["best"] == 9


@pytest.mark.skipif(not os.environ.get("M3TOOLEVAL_DIR"), reason="set M3TOOLEVAL_DIR to a CodeAct checkout")
def test_the_real_benchmark():
    official = load_official_tasks(os.environ["M3TOOLEVAL_DIR"])
    assert Counter(t.data["domain"] for t in official) == {
        "message_decoder": 8, "dna_sequencer": 8, "trade_calculator": 17, "travel_itinerary_planning": 15,
        "web_browsing": 34,
    }
    by_id = {t.id: t for t in official}
    wand = by_id["m3/web_browsing/price_of_legendary_wand"]
    env = make_env(wand)
    for url in ("/products", "/products/wand", "/products/wand/legendary_wand"):
        page = env.call("click_url", {"url": url})
    price = next(line for line in page["lines"] if line.startswith("Price:")).split("$")[1]
    assert answers_match(price, wand.data["answer"])
    trip = by_id["m3/travel_itinerary_planning/plan_trip_to_0"]
    ns = tool_namespace(make_env(trip))
    flight = ns["find_flights"]("E", "A", "2023-12-25")[0]["price"]
    hotel = ns["book_hotel"]("A", ["wifi", "pool"])[0]["price_per_night"]
    assert answers_match(ns["budget_calculator"](flight, hotel, 5), trip.data["answer"])
