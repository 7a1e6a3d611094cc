"""The ``calculation`` environment: M3ToolEval's four computation domains in one room.

The paper's "Calculation" environment is the non-browsing part of M3ToolEval
(from the CodeAct work): message decoder, DNA sequencer, trade calculator and
travel itinerary planning. The tools here behave like M3ToolEval's (same
names where one name is unambiguous, same semantics), written anew, with
three deliberate differences:

- one environment holds every domain, so tool names are unique: the several
  min/max/sum helpers of the original domains are ``minimum_value``,
  ``maximum_value`` and ``sum_values``, each taking a list;
- ``calculator`` parses arithmetic instead of calling ``eval``
  (see :mod:`envs._m3.arith`);
- bad arguments raise a :class:`ToolError` that says what was wrong;
- numbers are bounded, as the calculator's are: an integer argument or result of more than
  ``MAX_INT_BITS`` bits, or a result that is no finite number, is refused. Every tool's work is
  then linear in its input (a product of two bounded integers is cheap; Python's JSON alone
  would let through integers of 4300 digits, and only while its digit limit is left on).

Nothing here changes state: every tool is "read" (``book_hotel`` searches
hotels, as in M3ToolEval; it books nothing). A task's answer is checked by
its ``evaluate(answer)`` (see :func:`sca.benchmarks.m3.scoring.answers_match`).
"""

import hashlib
import json
import math
import re
from datetime import date as _date
from typing import Any

from envs._m3 import DATA_DIR
from envs._m3.arith import MAX_INT_BITS
from envs._m3.toolkit import (
    CalculatorTool,
    ToolkitEnvironment,
    as_integer,
    as_number,
    as_number_list,
    as_text,
    as_text_list,
    tool,
)
from envs.base import EnvSpec, ToolError

__all__ = ["CalculationEnv", "DOMAINS", "SPEC", "make"]

TRAVEL_FILE = "travel.json"

#: each domain: what it is about, and the tools its tasks need
DOMAINS: dict[str, dict[str, Any]] = {
    "message_decoder": {
        "description": "decode secret messages: hexadecimal to text, reversal, Caesar shifts, lengths",
        "tools": ["convert_hex_to_ascii", "reverse_string", "caesar_decode", "string_length",
                  "minimum_value", "maximum_value"],
    },
    "dna_sequencer": {
        "description": "work with DNA and mRNA sequences: counts, transcription, translation, validity",
        "tools": ["count_nucleotides", "transcribe_dna_to_mrna", "translate_mrna_to_amino_acid",
                  "find_max_nucleotide", "is_valid_dna_sequence", "reverse_transcribe_mrna_to_dna"],
    },
    "trade_calculator": {
        "description": "price an intergalactic trade: currency conversion, tariffs, final values, comparisons",
        "tools": ["convert_currency", "calculate_tariff", "estimate_final_value", "calculator",
                  "minimum_value", "maximum_value"],
    },
    "travel_itinerary_planning": {
        "description": "plan trips over a fixed table of flights and hotels and compute their budgets",
        "tools": ["find_flights", "book_hotel", "budget_calculator", "minimum_value", "maximum_value",
                  "sum_values"],
    },
}

CHALLENGER_GUIDANCE = (
    "Pick a task in the given domain that needs 1 to 4 of the tools. Before answering, try to solve it "
    "yourself with the tools; if a call fails or the task turns out infeasible or ambiguous, revise it "
    "until it is feasible and has exactly one correct answer. Then answer in CaT form: the instruction "
    "(giving every input the solver needs), evaluate(answer) comparing the answer with the value your "
    "solution computed, the solution, and at least three failure cases that reach wrong answers."
)

POLICY = (
    "Solve the task by calling the tools; you may combine their results with ordinary Python. "
    "When you are done, give only the final answer (a number, a text, a list or a dict, as the task asks), "
    "without units or explanation. Numbers are checked with a small relative tolerance."
)

_HEX_DIGITS = re.compile(r"[0-9a-fA-F\s]*")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# M3ToolEval's simplified genetic code: three codons are known, every other triplet reads as "X".
_CODONS = {"AUG": "Methionine", "UUU": "Phenylalanine", "UUC": "Phenylalanine"}
_TRANSCRIBE = str.maketrans("ACGT", "UGCA")
_REVERSE_TRANSCRIBE = str.maketrans("UCAG", "AGTC")


class CalculationEnv(ToolkitEnvironment, CalculatorTool):
    """M3ToolEval's message decoder, DNA sequencer, trade calculator and travel planning tools."""

    name = "calculation"
    description = ("Computation puzzles from M3ToolEval: decode messages, process DNA, price trades "
                   "and plan trips with a fixed flight and hotel table.")
    user_facing = False
    challenger_guidance = CHALLENGER_GUIDANCE

    def __init__(self, travel: dict[str, Any] | None = None):
        """`travel`: ``{"flights": [...], "hotels": [...]}`` to plan over (default: our own table)."""
        if travel is None:
            with open(DATA_DIR / TRAVEL_FILE, encoding="utf-8") as f:
                travel = json.load(f)
        self._flights = [dict(f) for f in travel["flights"]]
        self._hotels = [dict(h) for h in travel["hotels"]]
        names = {f[k] for f in self._flights for k in ("from_location", "to_location")}
        names |= {h["location"] for h in self._hotels}
        self._locations = {n.casefold(): n for n in sorted(names)}
        self._hash = hashlib.sha256(json.dumps(travel, sort_keys=True).encode()).hexdigest()

    # -- Environment ----------------------------------------------------------
    @property
    def policy(self) -> str:
        return POLICY

    def reset(self) -> None:
        """Nothing to restore: no tool changes state."""

    def state_hash(self) -> str:
        return self._hash

    def _call(self, name: str, args: dict[str, Any]) -> Any:
        _check_numbers(args, f"{name}: an argument")
        try:
            result = super()._call(name, args)
        except ArithmeticError as e:  # e.g. an integer quotient past any float
            raise ToolError(f"{name}: {e}") from None
        _check_numbers(result, f"{name}: the result")
        return result

    def challenger_context(self, rng: Any) -> dict[str, Any]:
        """A domain to write a task in: its name, what it is about, its tools, and the recipe."""
        domain = _choice(rng, sorted(DOMAINS))
        context = {
            "domain": domain,
            "domain_description": DOMAINS[domain]["description"],
            "domain_tools": list(DOMAINS[domain]["tools"]),
            "hint": CHALLENGER_GUIDANCE,
        }
        if domain == "travel_itinerary_planning":
            context["locations"] = sorted(self._locations.values())
            routes = sorted({(f["from_location"], f["to_location"], f["date"]) for f in self._flights})
            context["example_routes"] = [
                {"from_location": a, "to_location": b, "date": d}
                for a, b, d in (_choice(rng, routes) for _ in range(3))
            ]
        return context

    # -- message decoder ------------------------------------------------------
    @tool("read")
    def convert_hex_to_ascii(self, hex_string: str) -> str:
        """Converts a hexadecimal string to text (its bytes read as UTF-8).

        Args:
            hex_string: hexadecimal digits, two per byte, e.g. "48656c6c6f"
        Returns: the decoded text, e.g. "Hello"
        """
        text = as_text(hex_string, "hex_string")
        if not _HEX_DIGITS.fullmatch(text):
            raise ToolError(f"hex_string must contain only hexadecimal digits, got {text[:40]!r}")
        try:
            return bytes.fromhex(text).decode("utf-8")
        except ValueError:
            raise ToolError(f"{text[:40]!r} is not an even number of hex digits encoding UTF-8 text") from None

    @tool("read")
    def reverse_string(self, string: str) -> str:
        """Reverses a string.

        Args:
            string: the text to reverse
        Returns: the text backwards
        """
        return as_text(string, "string")[::-1]

    @tool("read")
    def caesar_decode(self, message: str, shift: int) -> str:
        """Decodes a Caesar cipher: moves every letter `shift` places back in the alphabet.

        Case is kept; characters other than the letters A-Z and a-z are unchanged.

        Args:
            message: the encoded text
            shift: how many places the letters were moved forward when encoding
        Returns: the decoded text
        """
        text = as_text(message, "message")
        k = as_integer(shift, "shift") % 26
        out = []
        for ch in text:
            if "A" <= ch <= "Z":
                out.append(chr((ord(ch) - 65 - k) % 26 + 65))
            elif "a" <= ch <= "z":
                out.append(chr((ord(ch) - 97 - k) % 26 + 97))
            else:
                out.append(ch)
        return "".join(out)

    @tool("read")
    def string_length(self, string: str) -> int:
        """Finds the length of a string.

        Args:
            string: the text to measure
        Returns: the number of characters
        """
        return len(as_text(string, "string"))

    @tool("read")
    def minimum_value(self, values: list) -> Any:
        """Finds the minimum of a list of numbers (or of texts, compared alphabetically).

        Args:
            values: the numbers, e.g. [3, 1.5, 7]
        Returns: the smallest value
        """
        return min(_comparable(values))

    @tool("read")
    def maximum_value(self, values: list) -> Any:
        """Finds the maximum of a list of numbers (or of texts, compared alphabetically).

        Args:
            values: the numbers, e.g. [3, 1.5, 7]
        Returns: the largest value
        """
        return max(_comparable(values))

    # -- DNA sequencer ----------------------------------------------------------
    @tool("read")
    def count_nucleotides(self, dna_sequence: str) -> dict:
        """Counts the occurrences of each character of a DNA sequence.

        Args:
            dna_sequence: the sequence, e.g. "AGCTTA"
        Returns: a dict from nucleotide to count, in order of first appearance, e.g. {"A": 2, "G": 1, "C": 1, "T": 2}
        """
        counts: dict[str, int] = {}
        for ch in as_text(dna_sequence, "dna_sequence"):
            counts[ch] = counts.get(ch, 0) + 1
        return counts

    @tool("read")
    def transcribe_dna_to_mrna(self, dna_sequence: str) -> str:
        """Transcribes a DNA sequence to mRNA by base pairing: A->U, C->G, G->C, T->A.

        Other characters are copied unchanged.

        Args:
            dna_sequence: the DNA sequence
        Returns: the mRNA sequence
        """
        return as_text(dna_sequence, "dna_sequence").translate(_TRANSCRIBE)

    @tool("read")
    def translate_mrna_to_amino_acid(self, mrna_sequence: str) -> str:
        """Translates an mRNA sequence, codon by codon, to a chain of amino acids.

        A simplified genetic code: AUG is Methionine, UUU and UUC are
        Phenylalanine; any other codon, and an incomplete last codon, is "X".

        Args:
            mrna_sequence: the mRNA sequence
        Returns: the amino acids joined by "-", e.g. "Methionine-X-Phenylalanine"
        """
        seq = as_text(mrna_sequence, "mrna_sequence")
        return "-".join(_CODONS.get(seq[i:i + 3], "X") for i in range(0, len(seq), 3))

    @tool("read", schema={"nucleotide_counts": {
        "anyOf": [{"type": "object", "additionalProperties": {"type": "integer"}},
                  {"type": "array"}]}})
    def find_max_nucleotide(self, nucleotide_counts: dict) -> list:
        """Finds the nucleotide with the largest count (the first one listed, on a tie).

        Args:
            nucleotide_counts: counts as a dict {"A": 3, "C": 1}, or as a flat list ["A", 3, "C", 1]
        Returns: [nucleotide, count], e.g. ["A", 3]
        """
        counts = _nucleotide_counts(nucleotide_counts)
        best = max(counts, key=counts.__getitem__)
        return [best, counts[best]]

    @tool("read")
    def is_valid_dna_sequence(self, dna_sequence: str) -> bool:
        """Checks whether a DNA sequence contains only the letters A, C, G and T.

        Args:
            dna_sequence: the sequence to check
        Returns: true if every character is A, C, G or T (an empty sequence is valid)
        """
        return set(as_text(dna_sequence, "dna_sequence")) <= set("ACGT")

    @tool("read")
    def reverse_transcribe_mrna_to_dna(self, mrna_sequence: str) -> str:
        """Reverse transcribes an mRNA sequence to DNA by base pairing: U->A, C->G, A->T, G->C.

        Other characters are copied unchanged.

        Args:
            mrna_sequence: the mRNA sequence
        Returns: the DNA sequence
        """
        return as_text(mrna_sequence, "mrna_sequence").translate(_REVERSE_TRANSCRIBE)

    # -- trade calculator -------------------------------------------------------
    @tool("read")
    def convert_currency(self, base_price: float, conversion_rate: float) -> float:
        """Converts a price to the local currency: base_price * conversion_rate.

        Args:
            base_price: the price in galactic credits
            conversion_rate: local currency units per credit
        Returns: the price in local currency
        """
        return as_number(base_price, "base_price") * as_number(conversion_rate, "conversion_rate")

    @tool("read")
    def calculate_tariff(self, price: float, tariff_rate: float) -> float:
        """Calculates the trade tariff on a price: price * tariff_rate / 100.

        Args:
            price: the (converted) price
            tariff_rate: the tariff in percent, e.g. 7.5 for 7.5%
        Returns: the tariff amount
        """
        return as_number(price, "price") * as_number(tariff_rate, "tariff_rate") / 100

    @tool("read")
    def estimate_final_value(self, price: float, tariff: float) -> float:
        """Estimates the final trade value including the tariff: price + tariff.

        Args:
            price: the (converted) price
            tariff: the tariff amount
        Returns: the final value
        """
        return as_number(price, "price") + as_number(tariff, "tariff")

    # -- travel itinerary planning ---------------------------------------------
    @tool("read")
    def find_flights(self, from_location: str, to_location: str, date: str) -> list:
        """Finds the flights from one location to another on a date.

        Args:
            from_location: where the flight leaves from, e.g. "Oslo"
            to_location: the destination
            date: the day of the flight, YYYY-MM-DD
        Returns: a list of flights (empty if none), each
            {"flight_id", "from_location", "to_location", "date", "price", "stops"}
        """
        origin = self._location(from_location, "from_location")
        destination = self._location(to_location, "to_location")
        day = as_text(date, "date").strip()
        if not _DATE.fullmatch(day) or not _is_date(day):
            raise ToolError(f"date must be a calendar date written YYYY-MM-DD, got {date!r}")
        return [dict(f) for f in self._flights
                if f["from_location"] == origin and f["to_location"] == destination and f["date"] == day]

    @tool("read")
    def book_hotel(self, location: str, preferences: list[str] = []) -> list:  # noqa: B006 - never mutated
        """Finds the hotels in a location that offer every requested amenity.

        Despite its name (kept from M3ToolEval) it only searches: nothing is booked.

        Args:
            location: the city, e.g. "Lisbon"
            preferences: amenities the hotel must have, e.g. ["wifi", "pool"]; empty for any hotel
        Returns: a list of hotels, each {"name", "location", "preferences" (its amenities), "price_per_night", "rating"}
        """
        city = self._location(location, "location")
        wanted = {p.strip().casefold() for p in as_text_list(preferences, "preferences")}
        return [dict(h) for h in self._hotels
                if h["location"] == city and wanted <= {p.casefold() for p in h["preferences"]}]

    @tool("read")
    def budget_calculator(self, flight_price: float, hotel_price_per_night: float, num_nights: int) -> float:
        """Calculates the budget of a stay: flight_price + hotel_price_per_night * num_nights.

        Args:
            flight_price: the price of the flight
            hotel_price_per_night: the hotel's price per night
            num_nights: how many nights
        Returns: the total budget
        """
        nights = as_integer(num_nights, "num_nights")
        if nights < 0:
            raise ToolError(f"num_nights must not be negative, got {nights}")
        per_night = as_number(hotel_price_per_night, "hotel_price_per_night")
        return as_number(flight_price, "flight_price") + per_night * nights

    @tool("read")
    def sum_values(self, values: list[float]) -> float:
        """Sums a list of numbers.

        Args:
            values: the numbers, e.g. [120, 85.5]
        Returns: their sum (0 for an empty list)
        """
        return sum(as_number_list(values, "values", allow_empty=True))

    # -- helpers ----------------------------------------------------------------
    def _location(self, value: Any, name: str) -> str:
        text = as_text(value, name).strip().strip("'\"").strip()
        found = self._locations.get(text.casefold())
        if found is None:
            known = ", ".join(self._locations.values())
            raise ToolError(f"{name}: unknown location {text!r}; known locations: {known}")
        return found


def _check_numbers(value: Any, what: str) -> None:
    """Refuse an integer of more than MAX_INT_BITS bits, or a float that is not finite, anywhere in `value`."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > MAX_INT_BITS:
            raise ToolError(f"{what} is an integer of {item.bit_length():,} bits; at most {MAX_INT_BITS} are taken")
        elif isinstance(item, float) and not math.isfinite(item):
            raise ToolError(f"{what} is not a finite number ({item!r})")


def _comparable(values: Any) -> list:
    if not isinstance(values, list) or not values:
        raise ToolError(f"values must be a non-empty list of numbers, got {values!r:.60}")
    if all(isinstance(v, str) for v in values):
        return values
    return as_number_list(values, "values")


def _nucleotide_counts(value: Any) -> dict[str, int]:
    if isinstance(value, list):
        if len(value) % 2:
            raise ToolError("nucleotide_counts as a list must alternate nucleotide and count: [k1, v1, k2, v2, ...]")
        pairs = list(zip(value[::2], value[1::2]))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise ToolError(f"nucleotide_counts must be a dict or a flat list, got {type(value).__name__}")
    if not pairs:
        raise ToolError("nucleotide_counts is empty")
    counts: dict[str, int] = {}
    for key, count in pairs:
        counts[as_text(key, "nucleotide")] = as_number(count, f"count of {key!r}")
    return counts


def _is_date(text: str) -> bool:
    try:
        _date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _choice(rng: Any, items: list) -> Any:
    """One of `items`, drawn by a ``random.Random`` or a NumPy ``Generator``."""
    if hasattr(rng, "randrange"):
        return items[rng.randrange(len(items))]
    return items[int(rng.integers(len(items)))]


def make() -> CalculationEnv:
    return CalculationEnv()


SPEC = EnvSpec.of_class(CalculationEnv, make, tools=CalculationEnv.class_tools)
