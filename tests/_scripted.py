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


class ScriptedRoles(ScriptedModel):
    """One scripted model playing both the executor and the simulated user: a conversation whose
    system prompt is the simulated user's goes to `user`, any other to `agent`."""

    def __init__(self, agent, user=None):
        super().__init__(self._route)
        self.agent, self.user = agent, user or (lambda turn, conv: "###STOP###")
        self.conversations = []

    def _route(self, turn, conv):
        self.conversations.append([dict(m) for m in conv])  # as it was when asked
        is_user = "# Your scenario" in conv[0]["content"]
        return (self.user if is_user else self.agent)(turn, conv)
