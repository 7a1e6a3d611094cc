"""The OpenAI-compatible backend: any server with ``/v1/chat/completions``.

vLLM (``vllm serve``), SGLang, llama.cpp's server, TGI and OpenAI itself all
speak this protocol. A batch becomes concurrent HTTP requests (at most
`concurrency` in flight), spread round-robin over one or more servers. Failed
requests are retried with exponential backoff and jitter when retrying can
help (timeouts, lost connections, HTTP 429 and 5xx) and never otherwise (other
4xx). :meth:`OpenAIChatModel.generate` is synchronous: it runs its own event
loop, so it works from any thread.

A 200 whose body is not JSON (a proxy hiccup) and HTTP 408 are retried too.

A 400 or 422 saying the prompt exceeds the model's context (in the words of
vLLM, OpenAI, SGLang, TGI or llama.cpp) is no error: when the server says the
prompt fits but prompt plus ``max_tokens`` does not, the request is sent again
with ``max_tokens`` cut to the room left; when it gives no numbers,
``max_tokens`` is halved (a few times, never below a small floor); when
nothing fits, that conversation gets finish_reason "context". Native tool
calls in the answer become `Generation.tool_calls` (finish_reason
"tool_calls"). Finish reasons outside our vocabulary are mapped to it
(``content_filter`` and unknown ones become "stop", with a warning).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
import os
import random
import re
import threading
from typing import Any
from urllib.parse import urlsplit

import httpx

from sca.inference.base import (
    BadRequest,
    ChatModel,
    Generation,
    InferenceError,
    RequestTimeout,
    SamplingParams,
    ServerError,
    check_conversations,
    context_generation,
    cut_at_stop,
    request_seed,
)
from sca.inference.toolcalls import openai_messages

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
API_KEY_VARIABLES = ("SCA_API_KEY", "OPENAI_API_KEY")
_SNIPPET = 500  # characters of a response body kept in an error


class OpenAIChatModel(ChatModel):
    """Chat completions from OpenAI-compatible servers.

    `model`: the name the server knows the model by; None asks the first
    server for its first model (``GET /models``). `base_urls`: servers, each
    like ``http://host:8000/v1`` (a bare ``http://host:8000`` gets ``/v1``);
    default ``$OPENAI_BASE_URL`` or ``http://127.0.0.1:8000/v1``. `api_key`:
    default ``$SCA_API_KEY``, else ``$OPENAI_API_KEY``, else none.
    `timeout`: seconds per request attempt. `max_retries`: extra attempts after
    a retryable failure; the wait before retry k is about
    ``backoff * 2**k`` seconds (at most `max_backoff`), randomised by half.
    `on_error`: "raise" (the default) raises the typed error of the first
    request that fails for good; "return" gives that conversation a
    Generation with finish_reason "error" and logs why. `extra_body`: more
    JSON fields for every request (e.g. ``{"top_k": 20}`` for vLLM).
    `context_length`: the model's context in tokens, if known (learnt from
    ``GET /models`` (vLLM's ``max_model_len``) or from the server's
    context-length errors otherwise); informational, the server enforces it.
    """

    backend = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_urls: list[str] | None = None,
        api_key: str | None = None,
        name: str | None = None,
        concurrency: int = 16,
        timeout: float = 300.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        on_error: str = "raise",
        extra_body: dict[str, Any] | None = None,
        context_length: int | None = None,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if on_error not in ("raise", "return"):
            raise ValueError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        if isinstance(base_urls, str):
            base_urls = [base_urls]
        urls = base_urls or [os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL]
        self.base_urls = [normalize_base_url(u) for u in urls]
        self.model = model
        self._name = name
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.on_error = on_error
        self.extra_body = dict(extra_body or {})
        self.context_length = context_length
        key = api_key or next((os.environ[v] for v in API_KEY_VARIABLES if os.environ.get(v)), None)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._random = random.Random()

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._name or self.model or "(server default)"

    # -- public interface ---------------------------------------------------------------------

    def generate(
        self,
        conversations: list[list[dict]],
        sampling: SamplingParams,
        tools: list[dict] | None = None,
    ) -> list[Generation]:
        check_conversations(conversations)
        if not conversations:
            return []
        return _run_sync(self._generate_all(conversations, sampling, tools))

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.name,
            "base_urls": list(self.base_urls),
            "concurrency": self.concurrency,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "context_length": self.context_length,
        }

    def request_body(
        self, conversation: list[dict], sampling: SamplingParams, tools: list[dict] | None, index: int = 0
    ) -> dict[str, Any]:
        """The JSON body sent for conversation `index` of a call."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": openai_messages(conversation),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        seed = request_seed(sampling, index)
        if seed is not None:
            body["seed"] = seed
        if tools:
            body["tools"] = tools
        body.update(self.extra_body)
        return body

    # -- the asynchronous core ----------------------------------------------------------------

    async def _generate_all(
        self, conversations: list[list[dict]], sampling: SamplingParams, tools: list[dict] | None
    ) -> list[Generation]:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(headers=self._headers, timeout=self.timeout, limits=limits) as client:
            if self.model is None:
                self.model = await self._server_model(client)
            gate = asyncio.Semaphore(self.concurrency)
            tasks = [
                asyncio.ensure_future(self._one(client, gate, self.request_body(conv, sampling, tools, i), sampling))
                for i, conv in enumerate(conversations)
            ]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for task in tasks:  # one request failed for good: stop the others now
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    async def _one(
        self, client: httpx.AsyncClient, gate: asyncio.Semaphore, body: dict[str, Any], sampling: SamplingParams
    ) -> Generation:
        async with gate:
            try:
                data = await self._complete(client, body)
                return data if isinstance(data, Generation) else parse_completion(data, sampling.stop)
            except InferenceError as e:
                if self.on_error == "raise":
                    raise
                log.warning("request failed, returning an empty generation: %s", e)
                return Generation(text="", prompt_tokens=0, completion_tokens=0, finish_reason="error")

    async def _complete(self, client: httpx.AsyncClient, body: dict[str, Any]) -> Any:
        """The completion's JSON, or a "context" Generation when the prompt does not fit.

        On a context error the request is sent again with a smaller ``max_tokens``: the room
        the server says is left, else (no numbers in its message) half as many, at most
        `_CONTEXT_RETRIES` times and never below `_MIN_CUT_TOKENS`.
        """
        max_tokens = int(body.get("max_tokens") or 0)
        prompt: int | None = None
        for attempt in range(_CONTEXT_RETRIES + 1):
            request = body if attempt == 0 else {**body, "max_tokens": max_tokens}
            try:
                return await self._request(client, "POST", "/chat/completions", request)
            except BadRequest as e:
                limits = context_limits(e)
                if limits is None:
                    raise
                context, said_prompt = limits
                prompt = said_prompt if said_prompt is not None else prompt
                if context and self.context_length is None:
                    self.context_length = context
                if context and said_prompt is not None:
                    # Known room; a server that wants prompt + max_tokens strictly below the
                    # context (SGLang) refuses the room itself, then gets one token less.
                    cut, floor = min(context - said_prompt, max_tokens - 1), 1
                else:
                    cut, floor = max_tokens // 2, _MIN_CUT_TOKENS
                if cut < floor:
                    break
                log.info("context exceeded at max_tokens=%d; retrying with max_tokens=%d", max_tokens, cut)
                max_tokens = cut
        return context_generation(prompt or 0)

    async def _server_model(self, client: httpx.AsyncClient) -> str:
        data = await self._request(client, "GET", "/models", None)
        try:
            first = data["data"][0]
            name = str(first["id"])
        except (KeyError, IndexError, TypeError) as e:
            raise InferenceError(
                "no model given and the server lists none; pass --model", body=json.dumps(data)[:_SNIPPET]
            ) from e
        limit = first.get("max_model_len") if isinstance(first, dict) else None
        if self.context_length is None and isinstance(limit, int) and limit > 0:
            self.context_length = limit
        return name

    async def _request(self, client: httpx.AsyncClient, method: str, path: str, body: dict | None) -> Any:
        """One call with retries; each attempt goes to the next server in turn."""
        error: InferenceError | None = None
        wait_hint: float | None = None  # the server's Retry-After, if it sent one
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._delay(attempt - 1, wait_hint))
            wait_hint = None
            url = self._next_base_url() + path
            try:
                response = await client.request(method, url, json=body)
            except httpx.TimeoutException as e:
                error = RequestTimeout(f"{method} {url} timed out after {self.timeout:g}s ({type(e).__name__})")
                continue
            except httpx.TransportError as e:
                error = ServerError(f"{method} {url} failed: {type(e).__name__}: {e}")
                continue
            status, text = response.status_code, response.text
            if status == 200:
                try:
                    return response.json()
                except ValueError:  # a cut or garbled body (a proxy hiccup): worth another try
                    error = ServerError(
                        f"{method} {url} answered HTTP 200 with a body that is not JSON: {text[:_SNIPPET]!r}",
                        status=status,
                        body=text[:_SNIPPET],
                    )
                    continue
            message = f"{method} {url} answered HTTP {status}: {text[:_SNIPPET]}"
            if status == 408:  # the server (or a proxy) timed the request out
                error = RequestTimeout(message, status=status, body=text[:_SNIPPET])
                wait_hint = _retry_after(response)
                continue
            if status == 429 or status >= 500:
                error = ServerError(message, status=status, body=text[:_SNIPPET])
                wait_hint = _retry_after(response)
                continue
            raise BadRequest(message, status=status, body=text[:_SNIPPET])
        assert error is not None
        attempts = self.max_retries + 1
        raise type(error)(f"{error} (gave up after {attempts} attempt{'s' * (attempts > 1)})", status=error.status, body=error.body)

    def _next_base_url(self) -> str:
        with self._lock:
            turn = next(self._turn)
        return self.base_urls[turn % len(self.base_urls)]

    def _delay(self, retry: int, hint: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (0-based): exponential, jittered, capped.

        A server's Retry-After `hint` (429/503) lengthens the wait, up to `max_backoff`.
        """
        ceiling = min(self.max_backoff, self.backoff * 2**retry)
        delay = ceiling / 2 + self._random.uniform(0, ceiling / 2)
        if hint is not None:
            delay = max(delay, min(hint, self.max_backoff))
        return delay


def parse_completion(data: Any, stop: list[str]) -> Generation:
    """A ``chat.completion`` response body as a :class:`Generation`.

    Native tool calls become `tool_calls` (arguments as JSON text; ids kept,
    or ``call_<n>`` where the server gave none), and the finish reason
    "tool_calls" unless the answer ran out of tokens.
    """
    try:
        choice = data["choices"][0]
        message = choice["message"]
        text = message.get("content") or ""
        raw_calls = message.get("tool_calls") or []
        reason = choice.get("finish_reason")
        tool_calls = [_tool_call(call, k) for k, call in enumerate(raw_calls)]
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        raise InferenceError("malformed chat completion", body=json.dumps(data)[:_SNIPPET]) from e
    if not isinstance(text, str):
        raise InferenceError("malformed chat completion: content is not text", body=json.dumps(data)[:_SNIPPET])
    text, cut = cut_at_stop(text, stop)
    finish = _finish_reason(reason, cut, bool(tool_calls))
    usage = data.get("usage") or {}
    return Generation(
        text=text,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=finish,
        tool_calls=tool_calls or None,
    )


#: finish reasons servers send, in our vocabulary: OpenAI and vLLM ("stop", "length", "tool_calls",
#: "function_call", "content_filter", "abort"), TGI ("eos_token", "stop_sequence"), others ("eos",
#: "end_turn", "max_tokens", "error"); None from minimal servers
_FINISH_REASONS: dict[str | None, str] = {
    None: "stop",
    "stop": "stop",
    "eos": "stop",
    "eos_token": "stop",
    "stop_sequence": "stop",
    "end_turn": "stop",
    "content_filter": "stop",  # the server withheld (part of) the answer: what came is the answer
    "length": "length",
    "max_tokens": "length",
    "model_length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "error": "error",
    "abort": "error",
}
#: reasons worth a warning (once per process each): they change what the answer means
_NOTEWORTHY_REASONS = {"content_filter"}
_warned_reasons: set[str] = set()


def _finish_reason(reason: Any, cut: bool, has_tool_calls: bool) -> str:
    """A server's finish reason in our vocabulary (see :data:`sca.inference.base.FinishReason`).

    Tool calls mean "tool_calls" unless the answer ran out of tokens; a stop string found in
    the text (the server ignored it, or ran on to its limit after it) means it did not run
    out. An unknown reason becomes "stop", with a warning naming it.
    """
    key = reason if reason is None or isinstance(reason, str) else repr(reason)
    finish = _FINISH_REASONS.get(key)
    if finish is None or key in _NOTEWORTHY_REASONS:
        if key not in _warned_reasons:
            _warned_reasons.add(key)
            what = "unknown finish_reason" if finish is None else "finish_reason"
            log.warning("the server answered with %s %r; treating it as 'stop'", what, key)
        finish = finish or "stop"
    if finish == "error":
        return finish
    if finish == "length" and not cut:
        return "length"
    if has_tool_calls or finish == "tool_calls":
        return "tool_calls"
    return "stop"


def _tool_call(call: Any, index: int) -> dict:
    """One tool call of a response in the OpenAI shape, arguments as JSON text."""
    fn = call["function"]
    name = fn["name"]
    if not isinstance(name, str) or not name:
        raise ValueError(f"tool call without a name: {call!r}")
    args = fn.get("arguments")
    if not isinstance(args, str):
        args = json.dumps(args if args is not None else {}, ensure_ascii=False)
    call_id = call.get("id")
    return {
        "id": call_id if isinstance(call_id, str) and call_id else f"call_{index}",
        "type": "function",
        "function": {"name": name, "arguments": args},
    }


#: what servers say when the prompt (plus max_tokens) exceeds the model's context: OpenAI, vLLM, SGLang,
#: llama.cpp, TGI ("`inputs` tokens + `max_new_tokens` must be <= N", "`inputs` must have less than N tokens")
_CONTEXT_ERROR = re.compile(
    r"context[_ ]length[_ ]exceeded|maximum context length|context (?:length|size|window)"
    r"|max_model_len|maximum model length|maximum (?:sequence|input|prompt) length|exceeds? the (?:available )?context"
    r"|requested token count exceeds|tokens\) exceeds the maximum allowed length|`inputs` tokens \+ `max_new_tokens` must be"
    r"|`inputs` must have less than",
    re.IGNORECASE,
)
#: the context length in those messages (the first that matches counts)
_CONTEXT_LIMIT = re.compile(
    r"(?:maximum context length|context length|context size|context window|max_model_len|maximum model length)"
    r"\D{0,20}?(\d+)|\"n_ctx\"\s*:\s*(\d+)"
    r"|`max_new_tokens` must be (?:<=|\\u003c=)\s*(\d+)|`inputs` must have less than (\d+)"
    r"|maximum allowed length \((\d+) tokens\)",
    re.IGNORECASE,
)
#: the prompt's length in tokens in those messages
_PROMPT_LENGTH = re.compile(
    r"(\d+) in the messages|messages resulted in (\d+) tokens|(\d+) input tokens|prompt \(length (\d+)\)"
    r"|input \((\d+) tokens\)|prompt (?:has|contains|is) (\d+) tokens|\"n_prompt_tokens\"\s*:\s*(\d+)"
    r"|(\d+) tokens from the input messages|Given: (\d+) `inputs` tokens|`inputs` must have less than \d+ tokens\. Given: (\d+)"
    r"|input length \((\d+) tokens\)",
    re.IGNORECASE,
)
#: context errors that may be answered with a smaller max_tokens: at most this many retries, and
#: (when the server does not say how much room is left) never fewer than this many tokens
_CONTEXT_RETRIES = 6
_MIN_CUT_TOKENS = 16
#: the statuses servers use for a prompt too long: 400 (OpenAI, vLLM, SGLang, llama.cpp), 422 (TGI)
_CONTEXT_STATUSES = (400, 422)


def context_limits(error: InferenceError) -> tuple[int | None, int | None] | None:
    """For a 400/422 saying the context is exceeded, the ``(context length, prompt tokens)`` it names; else None.

    Either number is None where the message does not give it.
    """
    body = error.body or ""
    if error.status not in _CONTEXT_STATUSES or not _CONTEXT_ERROR.search(body):
        return None
    limit = _CONTEXT_LIMIT.search(body)
    prompt = _PROMPT_LENGTH.search(body)
    return (
        int(next(g for g in limit.groups() if g)) if limit else None,
        int(next(g for g in prompt.groups() if g)) if prompt else None,
    )


def normalize_base_url(url: str) -> str:
    """Strip trailing slashes; a URL with no path gets the usual ``/v1``."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) base URL: {url!r}")
    return url if parts.path else url + "/v1"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare enough to ignore


def _run_sync(coroutine: Any) -> Any:
    """Run `coroutine` to completion from synchronous code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # Called from async code (a notebook, a server): use a private loop on a helper thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
