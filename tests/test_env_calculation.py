"""The ``calculation`` environment, its safe calculator, its task set and the answer scorer."""

import random
import re
from collections import Counter

import pytest

from envs import make_env
from envs._m3.arith import MAX_INT_BITS, ExpressionError, evaluate_expression
from envs.base import ToolError, UnknownToolError
from envs.calculation import DOMAINS, CalculationEnv
from sca.benchmarks import benchmark
from sca.benchmarks.m3.scoring import answers_match, evaluation_source
from sca.benchmarks.m3.tasks import run_solution


@pytest.fixture(scope="module")
def env():
    return make_env("calculation")


# -- description ------------------------------------------------------------------------------


def test_tools_are_unique_read_only_and_documented(env):
    tools = env.tools()
    names = [t.name for t in tools]
    assert len(names) == len(set(names)) == 20
    assert all(t.kind == "read" for t in tools)
    for t in tools:
        assert t.description and t.returns, t.name
        for param, schema in t.parameters["properties"].items():
            assert schema.get("description"), f"{t.name}.{param} undocumented"
    assert env.user_facing is False
    assert env.policy and isinstance(env.challenger_guidance, str)
    assert "1 to 4" in env.challenger_guidance
    assert env.tool("find_max_nucleotide").parameters["properties"]["nucleotide_counts"]["anyOf"]


def test_every_domain_lists_existing_tools_and_all_tools_belong_to_a_domain(env):
    names = set(env.tool_names())
    used = set()
    for domain, info in DOMAINS.items():
        assert set(info["tools"]) <= names, domain
        used |= set(info["tools"])
    assert used == names


# -- tool behaviour ---------------------------------------------------------------------------

CASES = [
    ("convert_hex_to_ascii", {"hex_string": "48656c6c6f"}, "Hello"),
    ("convert_hex_to_ascii", {"hex_string": "48 65"}, "He"),
    ("reverse_string", {"string": "abc d"}, "d cba"),
    ("caesar_decode", {"message": "Khoor, Zruog!", "shift": 3}, "Hello, World!"),
    ("caesar_decode", {"message": "abc", "shift": 29}, "xyz"),
    ("caesar_decode", {"message": "abc", "shift": -1}, "bcd"),
    ("caesar_decode", {"message": "Zebra", "shift": 3.0}, "Wbyox"),
    ("string_length", {"string": "hello world"}, 11),
    ("minimum_value", {"values": [3, 1.5, 7]}, 1.5),
    ("maximum_value", {"values": [3, 1.5, 7]}, 7),
    ("maximum_value", {"values": ["pear", "apple"]}, "pear"),
    ("count_nucleotides", {"dna_sequence": "GATTACA"}, {"G": 1, "A": 3, "T": 2, "C": 1}),
    ("transcribe_dna_to_mrna", {"dna_sequence": "TACG"}, "AUGC"),
    ("translate_mrna_to_amino_acid", {"mrna_sequence": "AUGUUUUUCGGCA"},
     "Methionine-Phenylalanine-Phenylalanine-X-X"),
    ("translate_mrna_to_amino_acid", {"mrna_sequence": ""}, ""),
    ("find_max_nucleotide", {"nucleotide_counts": {"A": 2, "C": 5, "G": 5}}, ["C", 5]),
    ("find_max_nucleotide", {"nucleotide_counts": ["T", 1, "A", 4]}, ["A", 4]),
    ("is_valid_dna_sequence", {"dna_sequence": "ACGT"}, True),
    ("is_valid_dna_sequence", {"dna_sequence": "ACGU"}, False),
    ("is_valid_dna_sequence", {"dna_sequence": "acgt"}, False),
    ("reverse_transcribe_mrna_to_dna", {"mrna_sequence": "AUGC"}, "TACG"),
    ("convert_currency", {"base_price": 200, "conversion_rate": 1.5}, 300.0),
    ("calculate_tariff", {"price": 300, "tariff_rate": 7.5}, 22.5),
    ("estimate_final_value", {"price": 300, "tariff": 22.5}, 322.5),
    ("calculator", {"expression": "2 + (3 * 4)"}, 14),
    ("calculator", {"expression": "7 / 2 - 2 ** 3 % 5"}, 0.5),
    ("budget_calculator", {"flight_price": 95, "hotel_price_per_night": 140, "num_nights": 4}, 655),
    ("sum_values", {"values": [120, 85.5]}, 205.5),
    ("sum_values", {"values": []}, 0),
]


@pytest.mark.parametrize("name,args,expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_tool_results(env, name, args, expected):
    assert env.call(name, args) == expected


def test_transcription_round_trip(env):
    mrna = "AUGGCUUACGAU"
    dna = env.call("reverse_transcribe_mrna_to_dna", {"mrna_sequence": mrna})
    assert env.call("transcribe_dna_to_mrna", {"dna_sequence": dna}) == mrna


def test_find_flights_and_book_hotel(env):
    flights = env.call("find_flights", {"from_location": "Oslo", "to_location": "Prague", "date": "2024-05-03"})
    assert sorted(f["price"] for f in flights) == [95, 130]
    assert {f["flight_id"] for f in flights} == {"F104", "F105"}
    # M3ToolEval quoted its locations ('"A"'); quotes and case are forgiven
    same = env.call("find_flights", {"from_location": '"oslo"', "to_location": " PRAGUE ", "date": "2024-05-03"})
    assert same == flights
    assert env.call("find_flights", {"from_location": "Oslo", "to_location": "Prague", "date": "2030-01-01"}) == []
    hotels = env.call("book_hotel", {"location": "Prague", "preferences": ["wifi", "POOL"]})
    assert [h["name"] for h in hotels] == ["Vltava Riverside"]
    assert len(env.call("book_hotel", {"location": "Prague"})) == 4
    # results are copies: changing one does not change the environment
    hotels[0]["price_per_night"] = 1
    assert env.call("book_hotel", {"location": "Prague", "preferences": ["pool"]})[0]["price_per_night"] == 140


BAD_ARGS = [
    ("convert_hex_to_ascii", {"hex_string": "zz"}, "hexadecimal"),
    ("convert_hex_to_ascii", {"hex_string": "abc"}, "even number"),
    ("convert_hex_to_ascii", {"hex_string": "ff"}, "UTF-8"),
    ("convert_hex_to_ascii", {"hex_string": 1234}, "must be a string"),
    ("reverse_string", {"string": ["a"]}, "must be a string"),
    ("caesar_decode", {"message": "abc", "shift": "three"}, "integer"),
    ("caesar_decode", {"message": "abc", "shift": 1.5}, "integer"),
    ("caesar_decode", {"message": "abc", "shift": True}, "integer"),
    ("string_length", {"string": None}, "must be a string"),
    ("minimum_value", {"values": []}, "non-empty"),
    ("minimum_value", {"values": 5}, "non-empty list"),
    ("maximum_value", {"values": [1, "a"]}, "must be a number"),
    ("maximum_value", {"values": [1, True]}, "must be a number"),
    ("count_nucleotides", {"dna_sequence": 7}, "must be a string"),
    ("find_max_nucleotide", {"nucleotide_counts": ["A", 1, "C"]}, "alternate"),
    ("find_max_nucleotide", {"nucleotide_counts": {}}, "empty"),
    ("find_max_nucleotide", {"nucleotide_counts": {"A": "x"}}, "must be a number"),
    ("find_max_nucleotide", {"nucleotide_counts": "AAC"}, "dict or a flat list"),
    ("convert_currency", {"base_price": "100", "conversion_rate": 1.2}, "must be a number"),
    ("calculate_tariff", {"price": 100, "tariff_rate": float("nan")}, "finite"),
    ("estimate_final_value", {"price": None, "tariff": 1}, "must be a number"),
    ("calculator", {"expression": "__import__('os').system('true')"}, "unsupported character"),
    ("calculator", {"expression": "2 ^ 3"}, "use **"),
    ("calculator", {"expression": "1 / 0"}, "division by zero"),
    ("calculator", {"expression": 12}, "must be a string"),
    ("find_flights", {"from_location": "Atlantis", "to_location": "Oslo", "date": "2024-05-03"}, "unknown location"),
    ("find_flights", {"from_location": "Oslo", "to_location": "Prague", "date": "03/05/2024"}, "YYYY-MM-DD"),
    ("find_flights", {"from_location": "Oslo", "to_location": "Prague", "date": "2024-02-30"}, "YYYY-MM-DD"),
    ("book_hotel", {"location": "Prague", "preferences": "wifi"}, "list of strings"),
    ("book_hotel", {"location": "Nowhere"}, "unknown location"),
    ("budget_calculator", {"flight_price": 100, "hotel_price_per_night": 50, "num_nights": -1}, "negative"),
    ("budget_calculator", {"flight_price": 100, "hotel_price_per_night": 50, "num_nights": 2.5}, "integer"),
    ("sum_values", {"values": [1, "2"]}, "must be a number"),
    ("string_length", {"text": "abc"}, "unexpected keyword argument"),
    ("caesar_decode", {"message": "abc"}, "missing required argument"),
]


@pytest.mark.parametrize("name,args,message", BAD_ARGS, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_ARGS)])
def test_bad_arguments_raise_a_clear_tool_error_and_the_env_keeps_working(env, name, args, message):
    with pytest.raises(ToolError, match=re.escape(message)):
        env.call(name, args)
    assert env.call("string_length", {"string": "ok"}) == 2


def test_unknown_tool(env):
    with pytest.raises(UnknownToolError):
        env.call("eval", {"expression": "1"})


def test_hostile_numbers_are_refused_before_any_large_work(env):
    """A power tower, 600 factors of 4000 digits (2.4 MB, a minute of eval), integers past the bound in
    any tool's arguments, results past it or past any float: each is a quick ToolError."""
    factors = " * ".join(["9" * 4000] * 600)
    for name, args, message in [
        ("calculator", {"expression": "9**9**8"}, "too large"),
        ("calculator", {"expression": factors}, "longer than"),
        ("convert_currency", {"base_price": 1 << MAX_INT_BITS, "conversion_rate": 2}, f"at most {MAX_INT_BITS}"),
        ("sum_values", {"values": [1, 2, -(1 << 5000)]}, "5,001 bits"),
        ("find_max_nucleotide", {"nucleotide_counts": {"A": 1 << 5000}}, "an argument"),
        ("budget_calculator", {"flight_price": 1, "hotel_price_per_night": 1 << 4000, "num_nights": 1 << 4000},
         "the result"),
        ("convert_currency", {"base_price": 1e308, "conversion_rate": 10}, "not a finite number"),
        ("calculate_tariff", {"price": 1 << 4000, "tariff_rate": 1 << 4000}, "too large for a float"),
    ]:
        with pytest.raises(ToolError, match=message):
            env.call(name, args)
    top = (1 << MAX_INT_BITS) - 1  # the largest integer taken, and a product of two that stays within
    assert env.call("convert_currency", {"base_price": top, "conversion_rate": 1}) == top
    assert env.call("budget_calculator", {"flight_price": 1, "hotel_price_per_night": 1 << 2000,
                                          "num_nights": 1 << 2000}) == (1 << 4000) + 1


# -- the safe arithmetic parser ---------------------------------------------------------------


@pytest.mark.parametrize("text,value", [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("-2 ** 2", -4), ("2 ** -1", 0.5), ("2 ** 3 ** 2", 512),
    ("--3", 3), ("+4", 4), ("7 // 2", 3), ("7 % 3", 1), ("10 - 4 - 3", 3), ("100 / 10 / 5", 2.0),
    (".5 + 1.", 1.5), ("1e3 * 2", 2000.0), ("  3  ", 3), ("1.1 * 3", 1.1 * 3),
])
def test_arithmetic_values(text, value):
    result = evaluate_expression(text)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize("text", [
    "", "   ", "1 +", "(1 + 2", "1 + 2)", "1 2", "abs(-1)", "x", "2 ^ 3", "1,000", "[1]", "lambda: 1",
    "().__class__", "9 ** 9 ** 9", "10 ** 5000", "2.0 ** 99999", "1e999", "(-8) ** 0.5", "0 ** -1", "5 % 0",
    "(" * 200 + "1" + ")" * 200, "-" * 500 + "1", "1+" * 1500 + "1",
])
def test_arithmetic_refusals(text):
    with pytest.raises(ExpressionError):
        evaluate_expression(text)


def test_arithmetic_rejects_non_strings():
    with pytest.raises(ExpressionError):
        evaluate_expression(3)  # type: ignore[arg-type]


# -- state, context ---------------------------------------------------------------------------


def test_reset_and_state_hash_are_stable_and_follow_the_data(env):
    before = env.state_hash()
    env.call("book_hotel", {"location": "Lisbon"})
    env.reset()
    assert env.state_hash() == before == CalculationEnv().state_hash()
    other = CalculationEnv(travel={"flights": [], "hotels": [
        {"location": "X", "preferences": [], "price_per_night": 1, "rating": 1}]})
    assert other.state_hash() != before
    assert other.call("book_hotel", {"location": "X"})[0]["price_per_night"] == 1
    with pytest.raises(ToolError, match="unknown location"):
        other.call("book_hotel", {"location": "Oslo"})


def test_challenger_context_picks_a_domain_with_its_tools(env):
    seen = set()
    for seed in range(40):
        ctx = env.challenger_context(random.Random(seed))
        assert ctx["domain"] in DOMAINS and ctx["hint"] == env.challenger_guidance
        assert ctx["domain_tools"] == DOMAINS[ctx["domain"]]["tools"]
        seen.add(ctx["domain"])
        if ctx["domain"] == "travel_itinerary_planning":
            assert "Oslo" in ctx["locations"]
            for route in ctx["example_routes"]:
                assert env.call("find_flights", route), route
    assert seen == set(DOMAINS)
    assert env.challenger_context(random.Random(7)) == env.challenger_context(random.Random(7))


def test_challenger_context_accepts_a_numpy_generator(env):
    np = pytest.importorskip("numpy")
    assert env.challenger_context(np.random.default_rng(0))["domain"] in DOMAINS


# -- the benchmark task set -------------------------------------------------------------------


def test_task_set_size_and_fields():
    bench = benchmark("calculation")
    tasks = bench.tasks()
    test = bench.tasks("test")
    assert len(test) >= 40
    per_domain = Counter(t.data["domain"] for t in test)
    assert set(per_domain) == set(DOMAINS) and min(per_domain.values()) >= 10
    assert set(bench.splits()) == {"test", "train"}
    assert len({t.id for t in tasks}) == len(tasks)
    for t in tasks:
        assert t.instruction and "answer" in t.data and t.data["solution"] and t.data["env"] == "calculation"
    with pytest.raises(ValueError):
        bench.tasks("dev")


_TASKS = benchmark("calculation").tasks()


@pytest.mark.parametrize("task", _TASKS, ids=[t.id for t in _TASKS])
def test_reference_solution_reaches_the_gold_answer(env, task):
    env.reset()
    answer = run_solution(env, task.data["solution"])
    assert answers_match(answer, task.data["answer"]), (answer, task.data["answer"])
    tools_called = {name for name in DOMAINS[task.data["domain"]]["tools"] if name + "(" in task.data["solution"]}
    assert tools_called, "the solution must use the domain's tools"


def test_evaluation_function_checks_the_answer():
    task = benchmark("calculation").tasks("test")[0]
    namespace: dict = {}
    exec(task.data["evaluation_function"], namespace)
    evaluate = namespace["evaluate"]
    assert evaluate(task.data["answer"]) is True
    assert evaluate(None) is False
    assert evaluate("something else entirely") is False


# -- scoring ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pred,gold", [
    ("2173.50", 2173.5), (2173.5, 2173.5), ("$2,173.50", 2173.5), (" 2173.5 ", 2173.5), ("2173.5.", 2173.5),
    (264.38, 264.38000000000005), ("264.38", 264.38000000000005), (68.7, 68.71), ("68.71", "68.71"),
    (12.5, "12.50"), ("12.5", "12.50"), (3, 3.0), ("3", 3), (3.0, 3), ("1e3", 1000),
    ("Hello World", "hello   world"), ("'Prague'", "Prague"), ("Prague.", "prague"),
    ("True", True), ("yes", True), (False, False), ("false", False),
    ([5670, 8316.0, 14742], [5670.0, 8316.000000000002, 14742.0]), ("[1000, 2000.004]", [1000, 2000]),
    ("('A', 3)", ("A", 3)), (["A", 3], ("A", 3)), ("A, 3", ["A", 3]),
    ({"A": 2, "C": 1}, {"A": 2, "C": 1}), ("{'A': 2, 'C': 1}", {"A": 2, "C": 1}),
    (None, None),
])
def test_answers_match(pred, gold):
    assert answers_match(pred, gold)


@pytest.mark.parametrize("pred,gold", [
    (None, 3), ("", 3), ("abc", 3), (2200, 2173.5), ("2.5", 2), (101, 100), (True, 1), (1, True),
    ("2955701544", "2955701543"), ("Prague", "Lisbon"), (3, "three"), ([1, 2], [1, 2, 3]), ("[1, 3]", [1, 2]),
    ({"A": 2}, {"A": 2, "C": 1}), ("not a dict", {"A": 1}), ("maybe", True), (0, None), ("inf", 1e308),
])
def test_answers_do_not_match(pred, gold):
    assert not answers_match(pred, gold)


def test_tolerance_is_adjustable():
    assert answers_match(100.5, 100.0)
    assert not answers_match(100.5, 100.0, rel_tol=1e-3)
    assert answers_match(100.05, 100.0, rel_tol=1e-3)


def test_evaluation_source_is_self_contained():
    source = evaluation_source([1.5, "x"])
    namespace: dict = {"__builtins__": __builtins__}
    exec(compile(source, "<evaluate>", "exec"), namespace)
    assert namespace["evaluate"]("[1.50, 'X']") is True
    assert namespace["evaluate"]([2, "x"]) is False
