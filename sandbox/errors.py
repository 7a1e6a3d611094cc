"""How a tool refuses a call, in the trusted process: the exceptions an environment raises and the
sandbox turns into the code's ``ToolError`` (standard library only, importing nothing).

A leaf module: environments (``envs``) raise these and the sandbox catches them, and neither needs
the other for it. (The code's own ``ToolError`` and ``WriteForbiddenError``, raised inside the
sandbox, are the runner's classes of the same names: another process, the same meaning.)
"""


class ToolError(Exception):
    """A tool refused the call; the message is the environment's own."""


class UnknownToolError(ToolError):
    """A call named a tool the environment does not have."""


class WriteForbiddenError(ToolError):
    """A write tool was called where only read tools are allowed (in `evaluate`)."""
