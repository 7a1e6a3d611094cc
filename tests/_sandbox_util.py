"""Helpers of the sandbox tests: a tiny key-value environment and backend fixtures' plumbing."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from typing import Any, NoReturn

from envs.base import Environment, Tool, ToolError, schema_from_signature

#: a value kept in the environment's state that no tool ever returns
HIDDEN_SECRET = "hidden-7f3a9c-never-returned-by-a-tool"
INITIAL = {"apples": 3, "pears": 0, "note": "hello"}
DOCKER_SOCKET = "/tmp/sca-docker/docker.sock"  # where .ci/docker.sh starts its engine


class StoreEnv(Environment):
    """A dict of named values: read tools, write tools, and a hidden field."""

    name = "store"
    description = "A key-value store."

    def __init__(self) -> None:
        self.reset()

    @property
    def policy(self) -> str:
        return "Keys are lowercase words."

    def tools(self) -> list[Tool]:
        methods = [(self.get_value, "read"), (self.list_keys, "read"), (self.search, "read"),
                   (self.set_value, "write"), (self.increment, "write"), (self.delete_key, "write")]
        out = [Tool(m.__name__, m.__doc__, schema_from_signature(m), kind) for m, kind in methods]
        # a parameter named like a Python keyword: reachable as a keyword argument only
        out.append(Tool("lookup", "Look a key up, from a given store.",
                        {"type": "object", "properties": {"key": {"type": "string"}, "from": {"type": "string"}},
                         "required": ["key"]}, "read"))
        return out

    def reset(self) -> None:
        self.db: dict[str, Any] = copy.deepcopy(INITIAL)
        self._hidden = {"secret": HIDDEN_SECRET}

    def state_hash(self) -> str:
        return hashlib.sha256(json.dumps([self.db, self._hidden], sort_keys=True).encode()).hexdigest()

    def _call(self, name: str, args: dict[str, Any]) -> Any:
        if name == "lookup":
            return self.get_value(args["key"])
        return getattr(self, name)(**args)

    # -- tools ---------------------------------------------------------------
    def get_value(self, key: str) -> Any:
        """The value stored under key."""
        if key not in self.db:
            raise ToolError(f"no such key: {key}")
        return self.db[key]

    def list_keys(self, prefix: str = "") -> list:
        """Keys starting with prefix, sorted."""
        return sorted(k for k in self.db if k.startswith(prefix))

    def search(self, text: str, limit: int = 10, exact: bool = False) -> list:
        """Keys whose value contains text (or equals it when exact)."""
        hits = [k for k, v in sorted(self.db.items())
                if (str(v) == text if exact else text in str(v))]
        return hits[:limit]

    def set_value(self, key: str, value: Any) -> dict:
        """Store value under key."""
        self.db[key] = value
        return {"key": key, "value": value}

    def increment(self, key: str, by: int = 1) -> int:
        """Add by to the number under key."""
        if not isinstance(self.db.get(key), int):
            raise ToolError(f"{key} is not a number")
        self.db[key] += by
        return self.db[key]

    def delete_key(self, key: str) -> None:
        """Remove key."""
        if key not in self.db:
            raise ToolError(f"no such key: {key}")
        del self.db[key]


def docker_ready(image: str = "sca-sandbox:latest") -> str | None:
    """None if docker tests can run, else the reason they skip. Points DOCKER_HOST at the CI engine."""
    if not os.environ.get("DOCKER_HOST") and os.path.exists(DOCKER_SOCKET):
        os.environ["DOCKER_HOST"] = f"unix://{DOCKER_SOCKET}"
    from sandbox import SandboxUnavailable, resolve_backend

    try:
        resolve_backend("docker")
    except SandboxUnavailable as e:
        return f"{e} (start one with `bash .ci/docker.sh`)"
    import docker

    client = docker.from_env()
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return f"Docker image {image} is not built (run `bash .ci/docker.sh`)"
    finally:
        client.close()
    return None


def unavailable(name: str, reason: Any) -> NoReturn:
    """Backend `name` cannot run here (`reason` says why): skip the calling test, or fail it when
    ``$SCA_TEST_REQUIRE`` (comma-separated backends; CI sets it) names the backend, so that a broken
    sandbox can never pass CI as a row of skips. Every test that gives up on a backend comes here."""
    import pytest

    required = name in os.environ.get("SCA_TEST_REQUIRE", "").split(",")
    (pytest.fail if required else pytest.skip)(f"{name} sandbox unavailable: {reason}")


def backend_or_skip(name: str) -> None:
    """Skip the calling test (with the reason) when backend `name` cannot run here; fail it instead
    when ``$SCA_TEST_REQUIRE`` names the backend (see :func:`unavailable`)."""
    from sandbox import SandboxUnavailable, resolve_backend

    if name == "docker":
        reason = docker_ready()
        if reason:
            unavailable(name, reason)
        return
    try:
        resolve_backend(name)
    except SandboxUnavailable as e:
        unavailable(name, e)


def open_sandbox(name: str, **settings: Any) -> Any:
    """A started ``Sandbox`` of backend `name` (one worker unless `settings` say otherwise), for a ``with``
    block; skips the calling test, or fails it where CI requires the backend (:func:`unavailable`)."""
    from sandbox import Sandbox, SandboxUnavailable
    from sandbox.config import SandboxConfig

    backend_or_skip(name)
    try:
        return Sandbox(SandboxConfig(backend=name, **{"workers": 1, **settings}))
    except SandboxUnavailable as e:
        unavailable(name, e)


def refuse_the_first_worker_start(monkeypatch) -> list:
    """From now on, every sandbox a stage builds (`SandboxConfig.build`) starts with no idle worker, and its
    backend refuses the first worker start it is asked for (an engine that went away), then starts them as
    usual: the first run nothing could start. Returns the list of refusals made (one entry each)."""
    from sandbox import SandboxUnavailable
    from sandbox.config import SandboxConfig

    real_build, refusals = SandboxConfig.build, []

    def build(self, workers=None):
        sb = real_build(self, workers)
        for w in sb._idle:
            w.close()
        sb._idle.clear()
        real_start = sb._backend.start_worker

        def start():
            if not refusals:
                refusals.append(1)
                raise SandboxUnavailable("no Docker engine answers at unix:///gone.sock")
            return real_start()

        monkeypatch.setattr(sb._backend, "start_worker", start)
        return sb

    monkeypatch.setattr(SandboxConfig, "build", build)
    return refusals
