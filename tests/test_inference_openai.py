"""The OpenAI-compatible backend against small real HTTP servers started by the tests."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import get_args

import pytest

from sca.inference import (
    BadRequest,
    Generation,
    InferenceError,
    RequestTimeout,
    SamplingParams,
    ServerError,
    load_model,
    openai_compat,
)
from sca.inference.base import FinishReason
from sca.inference.openai_compat import (
    OpenAIChatModel,
    context_limits,
    normalize_base_url,
    parse_completion,
)

FAST_RETRY = {"backoff": 0.01, "max_backoff": 0.05}


class FakeServer:
    """An OpenAI-style chat server on 127.0.0.1 that answers ``echo:<server>:<last user message>``.

    `plan[message]` is a list of what to do on successive requests for that
    message: an HTTP status to fail with, ("sleep", seconds) before a normal
    answer, ("tool_calls", calls) to answer with those tool calls, or
    ("status", code, message) to fail with that error message, ("raw", code,
    text) to answer with that body as it is (not JSON), or ("finish", reason)
    to answer normally with that finish_reason. Every request is recorded;
    `max_in_flight` is the most requests the client had in flight at once: a
    request counts from its arrival until its reply starts going out (the
    client may send its next request as soon as it has read a reply, before
    this handler's thread has finished, so counting to the handler's end
    would count one request of the client's twice). With
    `context_length` set, a request whose words (its "tokens") plus max_tokens
    exceed it gets the context error of `context_style` (vLLM's 400 by
    default; see :func:`context_error`), and ``GET /models`` lists it as
    ``max_model_len``.
    """

    def __init__(self, tag: str, delay: float = 0.0):
        self.tag = tag
        self.delay = delay
        self.plan: dict[str, list] = {}
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.context_length: int | None = None
        self.context_style = "vllm"
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _replied(self) -> None:
                """The request being answered leaves the count, once, before its reply goes out."""
                if getattr(self, "_counted", False):
                    self._counted = False
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, status: int, payload: dict | str) -> None:
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self._replied()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    card = {"id": "served-model", "object": "model"}
                    if server.context_length:
                        card["max_model_len"] = server.context_length
                    self._send(200, {"object": "list", "data": [card]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": f"no route {self.path}"})
                    return
                with server.lock:
                    server.in_flight += 1
                    self._counted = True
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                    prompt = body["messages"][-1]["content"] or ""
                    steps = server.plan.get(prompt, [])
                    action = steps.pop(0) if steps else "ok"
                try:
                    time.sleep(server.delay)
                    if isinstance(action, int):
                        self._send(action, {"error": {"message": f"planned failure {action}"}})
                        return
                    if isinstance(action, tuple) and action[0] == "status":
                        self._send(action[1], {"error": {"message": action[2]}})
                        return
                    if isinstance(action, tuple) and action[0] == "raw":
                        self._send(action[1], action[2])
                        return
                    if isinstance(action, tuple) and action[0] == "sleep":
                        time.sleep(action[1])
                    max_tokens = body.get("max_tokens", 100)
                    n = sum(len((m.get("content") or "").split()) for m in body["messages"])
                    refused = context_error(server.context_style, server.context_length, n, max_tokens)
                    if refused is not None:
                        self._send(*refused)
                        return
                    text = f"echo:{server.tag}:{prompt}"
                    length = max_tokens < 5 or bool(server.context_length and n + max_tokens == server.context_length)
                    message = {"role": "assistant", "content": text}
                    finish = "length" if length else "stop"
                    if isinstance(action, tuple) and action[0] == "tool_calls":
                        message = {"role": "assistant", "content": None, "tool_calls": action[1]}
                        finish = "tool_calls"
                    if isinstance(action, tuple) and action[0] == "finish":
                        finish = action[1]
                    payload = {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    }
                    if "no-usage" not in prompt:
                        payload["usage"] = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
                    self._send(200, payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass
                finally:
                    self._replied()

        return Handler


def context_error(style: str, context: int | None, n: int, max_tokens: int) -> tuple[int, dict] | None:
    """The (status, body) with which a server of `style` refuses `n` prompt tokens plus `max_tokens`; None if it fits.

    The messages are those the servers write: vLLM's, SGLang's (which wants prompt plus
    max_tokens strictly below the context), TGI's (422), and llama.cpp's without its numbers
    ("bare").
    """
    if not context:
        return None
    if style == "sglang":
        if n >= context:
            message = f"The input ({n} tokens) is longer than the model's context length ({context} tokens)."
        elif n + max_tokens >= context:
            message = (
                f"Requested token count exceeds the model's maximum context length of {context} tokens. "
                f"You requested a total of {n + max_tokens} tokens: {n} tokens from the input messages and "
                f"{max_tokens} tokens for the completion. Please reduce the number of tokens in the input "
                "messages or the completion to fit within the limit."
            )
        else:
            return None
        return 400, {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}
    if n + max_tokens <= context:
        return None
    if style == "tgi":
        if n >= context:
            message = f"Input validation error: `inputs` must have less than {context} tokens. Given: {n}"
        else:
            message = (
                f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {context}. "
                f"Given: {n} `inputs` tokens and {max_tokens} `max_new_tokens`"
            )
        return 422, {"error": message, "error_type": "validation"}
    if style == "bare":
        message = "the request exceeds the available context size, try increasing it"
        return 400, {"error": {"code": 400, "message": message, "type": "exceed_context_size_error"}}
    message = (
        f"This model's maximum context length is {context} tokens. However, you requested {n + max_tokens} tokens "
        f"({n} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion."
    )
    return 400, {"object": "error", "message": message, "type": "BadRequestError", "code": 400}


@pytest.fixture
def server():
    s = FakeServer("A", delay=0.02)
    yield s
    s.close()


@pytest.fixture
def second_server():
    s = FakeServer("B", delay=0.02)
    yield s
    s.close()


def convs(*prompts: str) -> list[list[dict]]:
    return [[{"role": "system", "content": "be brief"}, {"role": "user", "content": p}] for p in prompts]


def test_batch_is_answered_in_order_within_the_concurrency_limit(server):
    model = OpenAIChatModel("m", base_urls=[server.url], concurrency=4)
    prompts = [f"question {i}" for i in range(40)]
    gens = model.generate(convs(*prompts), SamplingParams(temperature=0))
    assert [g.text for g in gens] == [f"echo:A:{p}" for p in prompts]
    assert all(g.finish_reason == "stop" and g.prompt_tokens == 2 and g.completion_tokens == 2 for g in gens)
    assert len(server.requests) == 40
    assert 1 < server.max_in_flight <= 4


def test_request_body_and_api_key(server, monkeypatch):
    monkeypatch.setenv("SCA_API_KEY", "secret-key")
    monkeypatch.setenv("OPENAI_API_KEY", "other-key")
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    model = load_model("my-model", backend="openai", base_urls=[server.url], concurrency=1)
    sp = SamplingParams(temperature=0.5, top_p=0.9, max_new_tokens=77, stop=["END"], seed=10)
    model.generate(convs("a", "b"), sp, tools=tools)
    bodies = [r["body"] for r in server.requests]
    assert [b["seed"] for b in bodies] == [10, 11]  # one seed per conversation, reproducible per call
    for body, prompt in zip(bodies, "ab"):
        assert body["model"] == "my-model"
        assert body["messages"] == convs(prompt)[0]
        assert (body["temperature"], body["top_p"], body["max_tokens"], body["stop"]) == (0.5, 0.9, 77, ["END"])
        assert body["tools"] == tools
    assert {r["auth"] for r in server.requests} == {"Bearer secret-key"}


def test_no_seed_no_stop_no_tools_are_left_out(server, monkeypatch):
    monkeypatch.delenv("SCA_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    OpenAIChatModel("m", base_urls=[server.url]).generate(convs("x"), SamplingParams())
    [request] = server.requests
    assert not {"seed", "stop", "tools"} & request["body"].keys()
    assert request["auth"] is None


def test_round_robin_over_two_servers(server, second_server):
    model = OpenAIChatModel("m", base_urls=[server.url, second_server.url], concurrency=1)
    gens = model.generate(convs(*[f"q{i}" for i in range(10)]), SamplingParams())
    assert [g.text.split(":")[1] for g in gens] == ["A", "B"] * 5
    assert len(server.requests) == len(second_server.requests) == 5


def test_server_errors_are_retried_until_success(server):
    server.plan["flaky"] = [500, 503, 429]
    model = OpenAIChatModel("m", base_urls=[server.url], max_retries=3, **FAST_RETRY)
    gens = model.generate(convs("steady", "flaky"), SamplingParams())
    assert [g.text for g in gens] == ["echo:A:steady", "echo:A:flaky"]
    prompts = [r["body"]["messages"][-1]["content"] for r in server.requests]
    assert prompts.count("flaky") == 4 and prompts.count("steady") == 1


def test_client_errors_are_not_retried(server):
    server.plan["bad"] = [400]
    model = OpenAIChatModel("m", base_urls=[server.url], max_retries=3, **FAST_RETRY)
    with pytest.raises(BadRequest) as info:
        model.generate(convs("bad"), SamplingParams())
    assert info.value.status == 400
    assert "planned failure 400" in info.value.body
    assert len(server.requests) == 1


def test_persistent_server_errors_raise_a_typed_error(server):
    server.plan["down"] = [503] * 10
    model = OpenAIChatModel("m", base_urls=[server.url], max_retries=2, **FAST_RETRY)
    with pytest.raises(ServerError) as info:
        model.generate(convs("down"), SamplingParams())
    assert info.value.status == 503
    assert "planned failure 503" in info.value.body and "3 attempts" in str(info.value)
    assert len(server.requests) == 3


def test_failed_requests_can_become_error_generations(server):
    server.plan["down"] = [500] * 10
    model = OpenAIChatModel("m", base_urls=[server.url], max_retries=1, on_error="return", **FAST_RETRY)
    up, down = model.generate(convs("up", "down"), SamplingParams())
    assert up.text == "echo:A:up" and up.finish_reason == "stop"
    assert (down.text, down.finish_reason, down.completion_tokens) == ("", "error", 0)


def test_a_body_that_is_not_json_and_http_408_are_retried(server):
    server.plan["hiccup"] = [("raw", 200, '{"choices": [{"index": 0, "mess'), ("raw", 200, "<html>502 Bad Gateway</html>")]
    server.plan["408"] = [("status", 408, "Request Timeout")] * 2
    model = OpenAIChatModel("m", base_urls=[server.url], max_retries=2, **FAST_RETRY)
    assert [g.text for g in model.generate(convs("hiccup", "408"), SamplingParams())] == ["echo:A:hiccup", "echo:A:408"]
    prompts = [r["body"]["messages"][-1]["content"] for r in server.requests]
    assert prompts.count("hiccup") == prompts.count("408") == 3


def test_persistent_bodies_that_are_not_json_and_408s_raise_typed_errors(server):
    server.plan["garbled"] = [("raw", 200, "<html>upstream connect error</html>")] * 5
    server.plan["slow proxy"] = [("status", 408, "Request Timeout")] * 5
    model = OpenAIChatModel("m", base_urls=[server.url], max_retries=1, **FAST_RETRY)
    with pytest.raises(ServerError, match="not JSON.*2 attempts") as info:
        model.generate(convs("garbled"), SamplingParams())
    assert info.value.status == 200 and "upstream connect error" in info.value.body
    with pytest.raises(RequestTimeout, match="HTTP 408.*2 attempts") as info:
        model.generate(convs("slow proxy"), SamplingParams())
    assert info.value.status == 408
    prompts = [r["body"]["messages"][-1]["content"] for r in server.requests]
    assert prompts.count("garbled") == prompts.count("slow proxy") == 2
    # With on_error="return", they become error generations like any failed request.
    lenient = OpenAIChatModel("m", base_urls=[server.url], max_retries=0, on_error="return", **FAST_RETRY)
    assert [g.finish_reason for g in lenient.generate(convs("garbled", "slow proxy"), SamplingParams())] == ["error"] * 2


def test_a_malformed_completion_follows_on_error(server):
    server.plan["odd"] = [("raw", 200, '{"choices": []}')] * 2
    with pytest.raises(InferenceError, match="malformed"):
        OpenAIChatModel("m", base_urls=[server.url]).generate(convs("odd"), SamplingParams())
    lenient = OpenAIChatModel("m", base_urls=[server.url], on_error="return")
    ok, odd = lenient.generate(convs("fine", "odd"), SamplingParams())
    assert ok.text == "echo:A:fine" and (odd.text, odd.finish_reason) == ("", "error")


def test_timeouts_are_retried_then_raised(server):
    server.plan["slow once"] = [("sleep", 1.0)]
    server.plan["always slow"] = [("sleep", 1.0)] * 3
    model = OpenAIChatModel("m", base_urls=[server.url], timeout=0.25, max_retries=1, **FAST_RETRY)
    [gen] = model.generate(convs("slow once"), SamplingParams())
    assert gen.text == "echo:A:slow once"
    with pytest.raises(RequestTimeout, match="timed out"):
        model.generate(convs("always slow"), SamplingParams())
    prompts = [r["body"]["messages"][-1]["content"] for r in server.requests]
    assert prompts.count("slow once") == 2 and prompts.count("always slow") == 2


def test_unreachable_server_raises_server_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = OpenAIChatModel("m", base_urls=[f"http://127.0.0.1:{port}"], max_retries=1, **FAST_RETRY)
    with pytest.raises(ServerError, match="2 attempts"):
        model.generate(convs("hello"), SamplingParams())


def test_model_name_comes_from_the_server_when_not_given(server):
    model = load_model(backend="openai", base_urls=[server.url])
    [gen] = model.generate(convs("hi"), SamplingParams())
    assert gen.text == "echo:A:hi"
    assert server.requests[0]["body"]["model"] == "served-model"
    assert model.info()["model"] == "served-model"


def test_stop_strings_are_applied_even_if_the_server_ignores_them(server):
    [gen] = OpenAIChatModel("m", base_urls=[server.url]).generate(convs("say STOP now"), SamplingParams(stop=["STOP"]))
    assert gen.text == "echo:A:say " and gen.finish_reason == "stop"


def test_length_finish_and_missing_usage(server):
    model = OpenAIChatModel("m", base_urls=[server.url])
    [gen] = model.generate(convs("no-usage here"), SamplingParams(max_new_tokens=2))
    assert gen.finish_reason == "length"
    assert (gen.prompt_tokens, gen.completion_tokens) == (0, 0)


def test_generate_works_from_threads_and_inside_an_event_loop(server):
    model = OpenAIChatModel("m", base_urls=[server.url])
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = model.generate(convs(f"t{i}"), SamplingParams())[0].text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"echo:A:t{i}" for i in range(4)}

    async def caller() -> str:
        return model.generate(convs("from async"), SamplingParams())[0].text

    assert asyncio.run(caller()) == "echo:A:from async"


def completion(message: dict, finish: str | None) -> dict:
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}


def test_parse_completion_reads_tool_calls_and_rejects_malformed_bodies():
    call = {"id": "call_abc", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    gen = parse_completion(completion({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"), [])
    assert (gen.text, gen.finish_reason, gen.tool_calls) == ("", "tool_calls", [call])
    assert gen.token_ids is None
    # Text beside the calls stays text; arguments sent as an object become JSON text; a missing id gets one.
    bare = {"function": {"name": "g", "arguments": {"q": "é"}}}
    gen = parse_completion(completion({"content": "Let me see.", "tool_calls": [call, bare]}, "stop"), [])
    assert gen.text == "Let me see." and gen.finish_reason == "tool_calls"
    assert gen.tool_calls[1] == {"id": "call_1", "type": "function", "function": {"name": "g", "arguments": '{"q": "é"}'}}
    # Out of tokens is still "length"; no calls means no tool_calls.
    assert parse_completion(completion({"content": "", "tool_calls": [call]}, "length"), []).finish_reason == "length"
    assert parse_completion(completion({"content": "hi"}, "stop"), []).tool_calls is None
    for bad in ({"choices": []}, completion({"content": "x", "tool_calls": [{"function": {}}]}, "tool_calls")):
        with pytest.raises(InferenceError, match="malformed"):
            parse_completion(bad, [])


@pytest.mark.parametrize(
    ("reason", "finish", "warned"),
    [
        ("stop", "stop", False),
        (None, "stop", False),
        ("eos_token", "stop", False),  # TGI
        ("stop_sequence", "stop", False),  # TGI
        ("length", "length", False),
        ("content_filter", "stop", True),
        ("abort", "error", False),
        ("error", "error", False),
        ("tool_calls", "tool_calls", False),
        ("function_call", "tool_calls", False),
        ("some_new_reason", "stop", True),
        (7, "stop", True),
    ],
)
def test_finish_reasons_are_mapped_to_our_vocabulary(reason, finish, warned, caplog, monkeypatch):
    monkeypatch.setattr(openai_compat, "_warned_reasons", set())
    with caplog.at_level(logging.WARNING, logger="sca.inference.openai_compat"):
        gen = parse_completion(completion({"content": "hi"}, reason), [])
        again = parse_completion(completion({"content": "hi"}, reason), [])
    assert gen.finish_reason == again.finish_reason == finish
    assert finish in get_args(FinishReason)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == (1 if warned else 0)  # named once, not once per answer
    if warned:
        assert repr(reason if isinstance(reason, str) else repr(reason)) in warnings[0]


def test_a_content_filtered_answer_from_the_server_is_a_stop(server):
    server.plan["risky"] = [("finish", "content_filter")]
    [gen] = OpenAIChatModel("m", base_urls=[server.url]).generate(convs("risky"), SamplingParams())
    assert (gen.text, gen.finish_reason) == ("echo:A:risky", "stop")


def test_tool_calls_come_back_and_prior_tool_messages_are_sent(server):
    call = {"id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "vLLM"}'}}
    server.plan["find it"] = [("tool_calls", [call])]
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    history = [
        {"role": "user", "content": "find a"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "lookup", "arguments": {"q": "a"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "found a"},
        {"role": "user", "content": "find it"},
    ]
    [gen] = OpenAIChatModel("m", base_urls=[server.url]).generate([history], SamplingParams(), tools=tools)
    assert gen.tool_calls == [call] and gen.finish_reason == "tool_calls" and gen.text == ""
    [request] = server.requests
    body = request["body"]
    assert body["tools"] == tools
    assert body["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "a"}'}}],
    }
    assert body["messages"][2] == {"role": "tool", "tool_call_id": "c1", "content": "found a"}


def test_a_prompt_beyond_the_context_is_a_context_generation_not_an_error(server):
    server.context_length = 20
    model = OpenAIChatModel("m", base_urls=[server.url], max_retries=3, **FAST_RETRY)
    long_prompt = " ".join(["word"] * 30)
    short, long_ = model.generate(convs("short one", long_prompt), SamplingParams(max_new_tokens=5))
    assert short.text == "echo:A:short one" and short.finish_reason == "stop"
    assert long_ == Generation(text="", prompt_tokens=32, completion_tokens=0, finish_reason="context")
    assert model.context_length == 20  # learnt from the error
    prompts = [r["body"]["messages"][-1]["content"] for r in server.requests]
    assert prompts.count(long_prompt) == 1  # not retried


def test_max_tokens_is_capped_when_only_the_completion_would_not_fit(server):
    server.context_length = 20
    model = OpenAIChatModel("m", base_urls=[server.url])
    [gen] = model.generate(convs("ten words " * 5), SamplingParams(max_new_tokens=100))
    # 12 words of prompt: the server refuses 100 new tokens, then gives the 8 left
    assert [r["body"]["max_tokens"] for r in server.requests] == [100, 8]
    assert gen.finish_reason == "length" and gen.text.startswith("echo:A:")


def test_only_context_errors_become_context_generations(server):
    server.plan["bad"] = [("status", 400, "temperature must be non-negative")]
    server.plan["llama.cpp"] = [("status", 400, "the request exceeds the available context size, try increasing it")] * 10
    server.plan["not found"] = [("status", 404, "This model's maximum context length is 10 tokens")]
    model = OpenAIChatModel("m", base_urls=[server.url], max_retries=0)
    with pytest.raises(BadRequest, match="temperature"):
        model.generate(convs("bad"), SamplingParams())
    [gen] = model.generate(convs("llama.cpp"), SamplingParams())
    assert (gen.finish_reason, gen.prompt_tokens) == ("context", 0)
    # No numbers in the message: max_tokens is halved a few times, never below the floor, then it gives up.
    sent = [r["body"]["max_tokens"] for r in server.requests if r["body"]["messages"][-1]["content"] == "llama.cpp"]
    assert sent == [512, 256, 128, 64, 32, 16]
    with pytest.raises(BadRequest):  # a context message on another status is no context error
        model.generate(convs("not found"), SamplingParams())


def test_a_context_error_without_numbers_halves_max_tokens_until_the_answer_fits(server):
    server.context_length, server.context_style = 100, "bare"  # llama.cpp's message, without its numbers
    model = OpenAIChatModel("m", base_urls=[server.url], max_retries=0)
    [gen] = model.generate(convs("ten words " * 5), SamplingParams(max_new_tokens=400))
    # 12 words of prompt: 400, 200 and 100 tokens more do not fit, 50 do
    assert [r["body"]["max_tokens"] for r in server.requests] == [400, 200, 100, 50]
    assert gen.finish_reason == "stop" and gen.text.startswith("echo:A:")
    # A prompt that never fits: a bounded number of halvings, then "context".
    server.requests.clear()
    [gen] = model.generate(convs(" ".join(["word"] * 150)), SamplingParams(max_new_tokens=4096))
    assert gen == Generation(text="", prompt_tokens=0, completion_tokens=0, finish_reason="context")
    assert [r["body"]["max_tokens"] for r in server.requests] == [4096, 2048, 1024, 512, 256, 128, 64]


@pytest.mark.parametrize(("style", "status"), [("sglang", 400), ("tgi", 422), ("vllm", 400)])
def test_context_errors_of_each_server_cap_max_tokens_or_give_context(server, style, status):
    server.context_length, server.context_style = 20, style
    model = OpenAIChatModel("m", base_urls=[server.url], max_retries=3, **FAST_RETRY)
    long_prompt = " ".join(["word"] * 30)
    fits, long_ = model.generate(convs("ten words " * 5, long_prompt), SamplingParams(max_new_tokens=100))
    assert fits.text.startswith("echo:A:") and fits.finish_reason in ("stop", "length")
    assert long_ == Generation(text="", prompt_tokens=32, completion_tokens=0, finish_reason="context")
    assert model.context_length == 20  # learnt from the error
    sent = {}
    for r in server.requests:
        sent.setdefault(r["body"]["messages"][-1]["content"], []).append(r["body"]["max_tokens"])
    # 12 words of prompt leave 8 tokens; SGLang wants the total strictly below the context: 7
    assert sent["ten words " * 5] == ([100, 8, 7] if style == "sglang" else [100, 8])
    assert sent[long_prompt] == [100]  # the prompt alone is too long: not retried
    assert context_error(style, 20, 12, 100)[0] == status  # each server's own status


@pytest.mark.parametrize(
    ("message", "limits"),
    [
        (
            (
                "This model's maximum context length is 2048 tokens. However, you requested 2100 tokens "
                "(2000 in the messages, 100 in the completion)."
            ),
            (2048, 2000),
        ),
        (
            (
                "'max_tokens' or 'max_completion_tokens' is too large: 512. This model's maximum context "
                "length is 2048 tokens and your request has 1800 input tokens (512 > 2048 - 1800)."
            ),
            (2048, 1800),
        ),
        ("This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.", (8192, 9000)),
        ("The input (5000 tokens) is longer than the model's context length (4096 tokens).", (4096, 5000)),
        ('{"message": "exceeds the available context size", "n_prompt_tokens": 5000, "n_ctx": 4096}', (4096, 5000)),
        ("context_length_exceeded", (None, None)),
        # vLLM V1's engine
        (
            ("The decoder prompt (length 5000) is longer than the maximum model length of 4096. Make sure that "
             "`max_model_len` is no smaller than the number of text tokens."),
            (4096, 5000),
        ),
        # SGLang: prompt plus max_tokens, the prompt alone, the scheduler's input limit
        (
            json.dumps(
                {
                    "object": "error",
                    "message": "Requested token count exceeds the model's maximum context length of 32768 tokens. "
                    "You requested a total of 33792 tokens: 32768 tokens from the input messages and 1024 tokens "
                    "for the completion. Please reduce the number of tokens in the input messages or the completion "
                    "to fit within the limit.",
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                }
            ),
            (32768, 32768),
        ),
        (
            ('{"object": "error", "message": "The input (40000 tokens) is longer than the model\'s context length '
             '(32768 tokens).", "type": "BadRequestError", "param": null, "code": 400}'),
            (32768, 40000),
        ),
        (
            ("Input length (40000 tokens) exceeds the maximum allowed length (32760 tokens). Use a shorter input "
             "or enable --allow-auto-truncate."),
            (32760, 40000),
        ),
        # TGI (it answers 422): prompt plus max_new_tokens, the prompt alone
        (
            ('{"error":"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 3900 '
             '`inputs` tokens and 512 `max_new_tokens`","error_type":"validation"}'),
            (4096, 3900),
        ),
        (
            ('{"error":"Input validation error: `inputs` must have less than 4095 tokens. Given: 5000",'
             '"error_type":"validation"}'),
            (4095, 5000),
        ),
        ("temperature must be >= 0", None),
        ('{"error":"Input validation error: `temperature` must be strictly positive","error_type":"validation"}', None),
    ],
)
def test_context_limits_read_from_server_messages(message, limits):
    assert context_limits(BadRequest("x", status=400, body=message)) == limits
    assert context_limits(BadRequest("x", status=422, body=message)) == limits  # TGI's status
    assert context_limits(BadRequest("x", status=404, body=message)) is None
    assert context_limits(ServerError("x", status=500, body=message)) is None


def test_context_length_from_the_model_list(server):
    server.context_length = 4096
    model = load_model(backend="openai", base_urls=[server.url])
    assert model.context_length is None
    model.generate(convs("hi"), SamplingParams(max_new_tokens=5))
    assert model.context_length == 4096 and model.info()["context_length"] == 4096
    assert OpenAIChatModel("m", base_urls=[server.url], context_length=512).context_length == 512


def test_base_urls_are_normalised():
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalize_base_url("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"
    with pytest.raises(ValueError):
        normalize_base_url("h:8000")
    with pytest.raises(ValueError):
        OpenAIChatModel("m", base_urls=["http://h"], on_error="ignore")
