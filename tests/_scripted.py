"""A scripted chat model: the test double at the model edge of the system."""

from __future__ import annotations

from sca.inference.base import ChatModel, Generation


class ScriptedModel(ChatModel):
    """A test double at the model edge: replies by the number of turns so far."""

    name = "scripted"
    backend = "scripted"

    def __init__(self, script):
        self.script = script
        self.calls = []

    def generate(self, conversations, sampling, tools=None):
        self.calls.append(len(conversations))
        out = []
        for conv in conversations:
            turn = sum(m["role"] == "assistant" for m in conv)
            text = self.script(turn, conv)
            for s in sampling.stop:  # behave like a backend: cut at the first stop string
                if s in text:
                    text = text[: text.index(s)]
            out.append(Generation(text, prompt_tokens=100, completion_tokens=len(text) // 4, finish_reason="stop"))
        return out

    def info(self):
        return {"model": self.name, "backend": self.backend}
