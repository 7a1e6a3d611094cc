"""The reply format (one parser for the challenger and the executor) and the answer conversion."""

from __future__ import annotations

import math
import re

import pytest

from sca.agent import reply as protocol
from sca.agent.reply import (
    answer_from_text,
    answer_to_text,
    clean_code,
    complete_reply,
    format_observation,
    parse_reply,
    parse_task,
)


def test_an_action_with_or_without_markers():
    r = parse_reply("THOUGHT: look END THOUGHT\nACTION:\n```python\n  x = 1\n  print(x)\n```\nEND ACTION")
    assert (r.kind, r.thought, r.code) == ("action", "look", "x = 1\nprint(x)\n")
    r = parse_reply("THOUGHT: look END THOUGHT\nACTION:\nprint(1)\n")  # cut by the stop string
    assert (r.kind, r.code) == ("action", "print(1)\n")
    r = parse_reply("ACTION:\nprint(2)")  # no THOUGHT: not an error
    assert (r.kind, r.thought, r.code) == ("action", "", "print(2)\n")
    r = parse_reply("THOUGHT: x END THOUGHT\nACTION:\n\nEND ACTION")
    assert r.kind == "action" and r.error == "the ACTION is empty"


def test_plain_text_is_a_message_or_a_final_answer():
    assert parse_reply("THOUGHT: done END THOUGHT\n  Your order is cancelled.  ").text == "Your order is cancelled."
    assert parse_reply("Just the answer").text == "Just the answer"
    r = parse_reply("THOUGHT: I will say hello\nHello there")  # a THOUGHT never closed: all of it is the text
    assert r.kind == "text" and r.text == "I will say hello\nHello there"


def test_an_answer_and_its_task_parts():
    body = ("<instruction>Do   it\nnow</instruction><evaluation_function>def evaluate():\n    return True"
            "</evaluation_function><solution>pass</solution><failure_case>x = 1</failure_case>")
    r = parse_reply(f"THOUGHT: t END THOUGHT\nANSWER:\n{body}\nEND ANSWER")
    assert r.kind == "answer" and r.body.startswith("<instruction>")
    parts = parse_task(r.body)
    assert parts.error == "" and parts.task["instruction"] == "Do it now"
    assert parts.task["failure_cases"] == ["x = 1\n"] and parts.task["solution"] == "pass\n"
    assert parse_task("<instruction>x</instruction>").error == "the ANSWER lacks <evaluation_function>, <solution>"


def test_an_action_before_an_answer_wins():
    assert parse_reply("ACTION:\nprint(1)\nEND ACTION\nANSWER: 3").kind == "action"
    assert parse_reply("ANSWER: 3 END ANSWER ACTION: x").kind == "answer"


def test_complete_reply_puts_back_the_cut_marker():
    assert complete_reply("THOUGHT: t END THOUGHT\nACTION:\nprint(1)\n") == "THOUGHT: t END THOUGHT\nACTION:\nprint(1)\nEND ACTION"
    assert complete_reply("ANSWER: <x>") == "ANSWER: <x>\nEND ANSWER"
    assert complete_reply("ACTION:\nx\nEND ACTION") == "ACTION:\nx\nEND ACTION"
    assert complete_reply("plain words") == "plain words"


def test_clean_code():
    assert clean_code("\n    a = 1\n    b = 2\n") == "a = 1\nb = 2\n"
    assert clean_code("```\nprint(1)\n```") == "print(1)\n"


class _Res:
    def __init__(self, status, stdout="", answer=None, traceback=None, error_type=None, error=None):
        self.status, self.stdout, self.answer = status, stdout, answer
        self.traceback, self.error_type, self.error = traceback, error_type, error


def test_observations():
    assert format_observation(_Res("ok", "hi\n", answer=[1]), 100) == "OBSERVATION:\nhi\nanswer = [1]"
    assert format_observation(_Res("ok"), 100) == "OBSERVATION:\n(the code ran and printed nothing)"
    assert format_observation(_Res("timeout"), 100).endswith("ran past the time limit and was stopped.")
    assert format_observation(_Res("error", traceback="Traceback...\nKeyError: 'x'\n"), 100).endswith("KeyError: 'x'")
    assert format_observation(_Res("error", error_type="E", error="m"), 100) == "OBSERVATION:\nE: m"
    assert format_observation(_Res("ok", "x" * 50), 10) == "OBSERVATION:\n" + "x" * 10 + "\n... (40 more characters cut)"


@pytest.mark.parametrize("text, value", [
    ("3", 3), (" 2.5 ", 2.5), ("-4", -4), ("[1, 2]", [1, 2]), ('{"a": 1}', {"a": 1}), ('"x"', "x"),
    ("true", True), ("null", None), ("True", True), ("None", None), ("'x'", "x"), ("(1, 2)", [1, 2]),
    ("{'a': (1, 2)}", {"a": [1, 2]}), ("olleh", "olleh"), ("42 USD", "42 USD"), ("", ""),
    ("```json\n[9, 1]\n```", [9, 1]), ("```\n7\n```", 7), ("NaN", "NaN"), ("Infinity", "Infinity"),
    ("1e999", "1e999"), ("{1, 2}", "{1, 2}"), ("b'x'", "b'x'"), ("{1: 2}", "{1: 2}"), ("3j", "3j"),
    ("[1, float('nan')]", "[1, float('nan')]"), ("The answer is 4", "The answer is 4"),
])
def test_answer_from_text_outside_user_facing_environments(text, value):
    got = answer_from_text(text)
    assert got == value and type(got) is type(value)


def test_in_user_facing_environments_the_answer_is_the_text():
    assert answer_from_text("  3  ", user_facing=True) == "3"
    assert answer_from_text("[1, 2]", user_facing=True) == "[1, 2]"
    assert answer_from_text(None) is None


@pytest.mark.parametrize("value", [3, 2.5, [1, "a", None], {"k": [True, False]}, "olleh", None, -0.0])
def test_answers_round_trip_outside_user_facing_environments(value):
    back = answer_from_text(answer_to_text(value))
    assert back == value and type(back) is type(value)
    assert not (isinstance(back, float) and math.isnan(back))


def test_strings_that_look_like_values_do_not_round_trip():
    # an executor types 3 for the string "3": the contract's check 5 (answer_round_trip) catches such tasks
    assert answer_from_text(answer_to_text("3")) == 3
    assert answer_from_text(answer_to_text("true")) is True


def test_markers_inside_a_closed_thought_are_part_of_the_thought():
    r = parse_reply("THOUGHT: I could run an ACTION: or give the ANSWER: now END THOUGHT\nYour order is cancelled.")
    assert (r.kind, r.text) == ("text", "Your order is cancelled.")
    assert r.thought == "I could run an ACTION: or give the ANSWER: now"
    r = parse_reply("THOUGHT: no ACTION: yet END THOUGHT\nACTION:\nprint(1)\nEND ACTION")
    assert (r.kind, r.code) == ("action", "print(1)\n")
    r = parse_reply("THOUGHT: check first\nACTION:\nprint(2)\n")  # a THOUGHT never closed: ACTION ends it
    assert (r.kind, r.thought, r.code) == ("action", "check first", "print(2)\n")


def test_an_int_too_long_to_write_in_decimal_stays_text():
    huge = "0x" + "f" * 5000  # a Python literal whose value json cannot write (Python's 4300-digit limit)
    assert answer_from_text(huge) == huge
    assert answer_from_text("0xff") == 255


# -- edge cases of the parsers (each found while checking them against the regular expressions
# they replaced, on millions of generated inputs: the results are the same as before) ----------

def test_the_first_thought_counts():
    r = parse_reply("END THOUGHT: x")  # END THOUGHT: holds a THOUGHT: (never closed)
    assert (r.kind, r.thought, r.text) == ("text", "x", ": x")
    r = parse_reply("THOUGHT: a THOUGHT: b END THOUGHT c")
    assert (r.kind, r.thought, r.text) == ("text", "a THOUGHT: b", "c")
    r = parse_reply("THOUGHT: t\nANSWER: 3")  # a THOUGHT never closed: ANSWER ends it too
    assert (r.kind, r.thought, r.body) == ("answer", "t", "3")


@pytest.mark.parametrize("src, code", [
    ("```python\n\n  x = 1\n  ```  ", "x = 1\n"),  # blank lines, indentation, spaces after the fence
    ("  ```py\n    a\n      b\n    ```\n\n", "a\n  b\n"),
    ("```\nx```", "x\n"),  # the closing fence may end the last line
    ("```\n```", "\n"),  # an empty block
    ("```python print(1)\n```", "```python print(1)\n```\n"),  # the opening fence must end its line
    ("````\nx\n```", "````\nx\n```\n"),  # four backticks open no block
    ("```\nx\n``` y", "```\nx\n``` y\n"),  # text after the closing fence: not one block
    ("```\n", "```\n"),  # one fence cannot both open and close
])
def test_clean_code_fences(src, code):
    assert clean_code(src) == code


@pytest.mark.parametrize("text, value", [
    ("``````", ""), ("`````", "`````"), ("```42```", ""),  # 42 is the fence's language tag
    ("```json [1]```", [1]), ("```[1]\n```", [1]), ('```\n"x"\n```', "x"), ("```\u00a0\n3\n```", 3),
])
def test_answer_fences(text, value):
    got = answer_from_text(text)
    assert got == value and type(got) is type(value)


def test_a_task_part_ends_at_its_first_close_tag():
    rest = "<evaluation_function>e</evaluation_function><solution>s</solution>"
    assert parse_task("<instruction>a<instruction>b</instruction>" + rest).task["instruction"] == "a<instruction>b"
    parts = parse_task("<instruction>i</instruction>" + rest + "<failure_case>1</failure_case><failure_case>2")
    assert parts.task["failure_cases"] == ["1\n"]  # a failure case never closed is none
    assert parse_task("<solution>s</solution><instruction>i<evaluation_function>e</evaluation_function>").error \
        == "the ANSWER lacks <instruction>"


# -- hostile replies ------------------------------------------------------------------------------

N = 200_000  # characters: a model's reply at its token limit, or more


def test_hostile_replies_parse():
    """Inputs on which the regular expressions these parsers replaced took minutes (quadratic time).

    Only the results are asserted: a test asserts no time. What keeps the parsers linear is
    pinned by the next test.
    """
    r = parse_reply("THOUGHT: " * (N // 9))  # a THOUGHT: at every place, never closed
    rest = ("THOUGHT: " * (N // 9 - 1)).strip()  # all of it after the first THOUGHT:
    assert (r.kind, r.thought, r.text) == ("text", rest, rest)
    assert clean_code("```\n" + " " * N + "x") == "```\n" + " " * N + "x\n"  # a fence never closed
    r = parse_reply("ACTION:```\n" + " " * N + "x")
    assert (r.kind, r.code) == ("action", "```\n" + " " * N + "x\n")
    assert answer_from_text("```" + " " * N + "x") == "```" + " " * N + "x"
    assert answer_from_text("```" + "\n" * N + "x") == "```" + "\n" * N + "x"
    assert answer_from_text("```" + " \n" * N + "1```") == 1
    assert parse_task("<instruction>" * (N // 13)).error == \
        "the ANSWER lacks <instruction>, <evaluation_function>, <solution>"
    task = "<instruction>i</instruction><evaluation_function>e</evaluation_function><solution>s</solution>"
    assert parse_task("<failure_case>" * (N // 14) + task).task["failure_cases"] == []


def test_the_parsers_use_no_regular_expression_that_can_backtrack(monkeypatch):
    """What made the parsers quadratic were regular expressions with lazy bodies; time cannot be
    asserted, the patterns can. The one left matches one character class (it cannot backtrack), and
    no function calls `re` while it parses. A new pattern must first be shown linear on hostile input.
    """
    patterns = {name: v.pattern for name, v in vars(protocol).items() if isinstance(v, re.Pattern)}
    assert patterns == {"_LANG": "[a-zA-Z0-9_+-]*"}

    class NoRegex:
        def __getattr__(self, name):
            raise AssertionError(f"sca.agent.reply used re.{name} while parsing")

    monkeypatch.setattr(protocol, "re", NoRegex())
    r = parse_reply("THOUGHT: t END THOUGHT\nACTION:\n```python\n  x = 1\n```\nEND ACTION")
    assert (r.kind, r.thought, r.code) == ("action", "t", "x = 1\n")
    assert parse_reply("THOUGHT: t\nANSWER: <x>").body == "<x>"
    assert parse_reply("THOUGHT: t\nHello").text == "t\nHello"
    parts = parse_task("<instruction>i</instruction><evaluation_function>```\ne\n```</evaluation_function>"
                       "<solution>s</solution><failure_case>f</failure_case>")
    assert parts.task == {"instruction": "i", "evaluation_function": "e\n", "solution": "s\n",
                          "failure_cases": ["f\n"]}
    assert answer_from_text("```json\n[9, 1]\n```") == [9, 1]
    assert complete_reply("ANSWER: 3") == "ANSWER: 3\nEND ANSWER"
