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
        self.samplings = []  # the SamplingParams of each call

    def generate(self, conversations, sampling, tools=None):
        self.calls.append(len(conversations))
        self.samplings.append(sampling)
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
        self.role_samplings = {"agent": [], "user": []}  # the SamplingParams of each call, by the role asked

    def generate(self, conversations, sampling, tools=None):
        if conversations:  # the engine asks one role per call
            self.role_samplings["user" if self._is_user(conversations[0]) else "agent"].append(sampling)
        return super().generate(conversations, sampling, tools)

    @staticmethod
    def _is_user(conv):
        return "# Your scenario" in conv[0]["content"]

    def _route(self, turn, conv):
        self.conversations.append([dict(m) for m in conv])  # as it was when asked
        return (self.user if self._is_user(conv) else self.agent)(turn, conv)
