"""Every setting of a model role in one place: :class:`ModelConfig`.

A stage holds one per role (the challenger; the executor and the simulated user) and loads
the model with :meth:`ModelConfig.load`; the command line takes its flags' defaults (each role's,
below), help and bounds from here.
Standard library only (``sca --help`` imports it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

#: the names ``--backend`` accepts
BACKEND_NAMES = ("hf", "vllm", "openai")


@dataclass
class ModelConfig:
    """Which model plays a role, served how, sampled how."""

    # `metadata`: the help and bounds of the command line's flag (``sca_cli.common.flag``)
    model: str | None = field(default=None, metadata={"help": (  # None: the bundled default
        "HF name or local path (hf, vllm) or served name (openai) [default: bundled SmolLM2-135M-Instruct].")})
    backend: str = field(default="hf", metadata={"help": " | ".join(BACKEND_NAMES) + "."})
    base_urls: list[str] = field(default_factory=list, metadata={  # used round-robin
        "help": "OpenAI-compatible server (with the openai backend); repeat to share load round-robin."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (0: greedy).", "min": 0.0})
    top_p: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    max_new_tokens: int = field(default=1024, metadata={"help": "Tokens per reply at most.", "min": 1})

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_NAMES:
            raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}, not {self.backend!r}")
        if self.base_urls and self.backend != "openai":
            raise ValueError("base URLs go with the openai backend")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {self.max_new_tokens}")
        self.base_urls = list(self.base_urls or [])

    def with_(self, **changes: Any) -> ModelConfig:
        """A copy with some settings changed (None values keep the current setting)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def same_model(self, other: ModelConfig) -> bool:
        """Whether `other` names the same model served the same way (one loaded copy can serve both)."""
        return (self.model, self.backend, self.base_urls) == (other.model, other.backend, other.base_urls)

    def sampling(self, stop: list[str] | None = None, seed: int | None = None):
        """The :class:`~sca.inference.SamplingParams` of this role."""
        from sca.inference.base import SamplingParams

        return SamplingParams(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                              stop=list(stop or []), seed=seed)

    def load(self, **kwargs: Any):
        """Open the model (see :func:`sca.inference.load_model`)."""
        from sca.inference import load_model

        if self.backend == "openai":
            kwargs.setdefault("base_urls", self.base_urls or None)
        return load_model(self.model, self.backend, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The defaults of each role, used by the stages and, through them, by the command line.
def challenger_defaults() -> ModelConfig:
    """The challenger of ``sca propose``: diverse tasks (more randomness than the executor)."""
    return ModelConfig(temperature=0.8, top_p=0.95)


def executor_defaults() -> ModelConfig:
    """The executor of ``sca rollout`` and ``sca eval`` (and the simulated user's, unless set): ModelConfig's
    own defaults."""
    return ModelConfig()
