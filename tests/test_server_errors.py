"""Errors over raw HTTP, in the OpenAI shape, and the queue's bounds, on a scripted model.

Every error body must be exactly `{"error": {"message", "type", "param", "code"}}`; the numbers a
user needs (prompt length, context, limit) are in the message. The queue tests hold the
scripted model on a gate, so "one running, N waiting" is a state the test controls.
"""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

from gptoss_lite.server.app import body_limit

pytest_plugins = ["server_fixtures"]

REPLY = "<|channel|>final<|message|>Hello there, friend.<|return|>"
CHAT = {"model": "gpt-oss-test", "messages": [{"role": "user", "content": "Hi"}]}
WAIT_S = 10.0  # bound on every wait for the worker


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.fixture
def http(scripted_service, serve_http):
    """`http(text, **service_options)` → an httpx client of a running scripted server, and its
    service."""

    def start(text: str = REPLY, **options):
        service = scripted_service(text, **options)
        return httpx.Client(base_url=serve_http(service), timeout=WAIT_S), service

    return start


def test_prompt_longer_than_the_context(http):
    client, service = http(context=300)
    long = {**CHAT, "messages": [{"role": "user", "content": "word " * 400}]}
    error = _error(client.post("/v1/chat/completions", json=long), 400)
    prompt = len(service.runner.tokenizer.encode("word " * 400))
    assert error["code"] == "context_length_exceeded"
    numbers = [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", error["message"])]
    assert numbers[1] == 300 and numbers[0] > prompt  # the rendered prompt, then the context
    too_many = {**CHAT, "max_tokens": 300}
    error = _error(client.post("/v1/chat/completions", json=too_many), 400)
    assert error["param"] == "max_tokens" and "300" in error["message"]
    response = {"model": "gpt-oss-test", "input": "Hi", "max_output_tokens": 10_000}
    assert _error(client.post("/v1/responses", json=response), 400)["param"] == "max_output_tokens"
    long = {"model": "gpt-oss-test", "input": "word " * 400}
    assert _error(client.post("/v1/responses", json=long), 400)["param"] == "input"
    long = {"model": "gpt-oss-test", "prompt": "word " * 400}
    assert _error(client.post("/v1/completions", json=long), 400)["param"] == "prompt"
    assert service.runner.prompts == []  # nothing reached the model


def test_api_key(http, monkeypatch):
    client, _ = http(api_key="sesame")
    assert _error(client.post("/v1/chat/completions", json=CHAT), 401)["code"] == "invalid_api_key"
    wrong = {"Authorization": "Bearer open"}
    assert _error(client.get("/v1/models", headers=wrong), 401)["code"] == "invalid_api_key"
    right = {"Authorization": "Bearer sesame"}
    assert client.post("/v1/chat/completions", json=CHAT, headers=right).status_code == 200
    assert client.get("/health").status_code == 200  # open, for load balancers and monitors


def test_unknown_model_and_paths(http):
    client, _ = http()
    error = _error(client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-5"}), 404)
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert _error(client.get("/v1/nothing"), 404)["code"] == "not_found"
    assert _error(client.get("/v1/chat/completions"), 405)["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "gpt-oss-test", "messages": [', None),
        (b'["not", "an", "object"]', None),
        (b'{"model": "gpt-oss-test"}', "messages"),
        (b'{"model": "gpt-oss-test", "messages": [{"role": "robot", "content": "x"}]}', None),
        (b'{"model": "gpt-oss-test", "messages": [], "temperature": 1}', "messages"),
        (b'{"model": "gpt-oss-test", "messages": [{"role": "user"}], "temperature": -1}', None),
        (b'{"model": "gpt-oss-test", "messages": [{"role": "user"}], "top_p": NaN}', "top_p"),
        (b'{"model": "gpt-oss-test", "messages": [{"role": "user"}], "n": 2}', "n"),
        (b'{"model": "gpt-oss-test", "messages": [{"role": "user"}], "seed": 1e40}', "seed"),
    ],
)
def test_malformed_bodies(http, body, param):
    client, service = http()
    headers = {"Content-Type": "application/json"}
    error = _error(client.post("/v1/chat/completions", content=body, headers=headers), 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert service.runner.prompts == []


_F = {"type": "function", "name": "f"}
_NS_A = {"type": "namespace", "name": "ns_a", "tools": [{"type": "function", "name": "f"}]}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {**CHAT, "reasoning_effort": "extreme"}, "reasoning_effort"),
        ("/v1/chat/completions", {**CHAT, "tool_choice": "required"}, "tool_choice"),  # no tools
        (
            "/v1/chat/completions",
            {
                **CHAT,
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
                "tools": [{"type": "function", "function": {"name": "get_time"}}],
            },
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
            "messages.0.tool_call_id",
        ),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages.0.content",
        ),
        (
            "/v1/responses",
            {"model": "gpt-oss-test", "input": "x", "previous_response_id": "r"},
            "previous_response_id",
        ),
        (
            "/v1/responses",
            {"model": "gpt-oss-test", "input": [{"type": "web_search_call"}]},
            "input.0",
        ),
        (
            "/v1/responses",
            {"model": "gpt-oss-test", "input": "x", "tools": [{"type": "teleport"}]},
            "tools.0.type",
        ),
        (
            "/v1/responses",
            {"model": "gpt-oss-test", "input": "x", "reasoning": {"effort": "max"}},
            "reasoning.effort",
        ),
        *[
            ("/v1/responses", {"model": "gpt-oss-test", "input": "x", **bad}, param)
            for bad, param in (
                ({"tools": [{"type": "namespace", "name": "ns", "tools": []}]}, "tools.0.tools"),
                ({"tools": [{"type": "namespace", "name": "ns"}]}, "tools.0.tools"),
                ({"tools": [_NS_A, {**_NS_A, "name": "ns_b"}]}, "tools.1.tools.0.name"),
                ({"tools": [{"type": "function", "name": "f"}, _NS_A]}, "tools.1.tools.0.name"),
                ({"tools": [_NS_A, _NS_A]}, "tools.1.name"),
                ({"tools": [{**_NS_A, "tools": [{"type": "web_search"}]}]}, "tools.0.tools.0.type"),
                (
                    {"tools": [{"type": "custom", "name": "c", "format": {"type": "regexp"}}]},
                    "tools.0.format",
                ),
                ({"tools": ["web_search"]}, "tools.0.type"),
                ({"include": ["reasoning.plaintext"]}, "include.0"),
                ({"truncation": "smart"}, "truncation"),
                ({"background": True}, "background"),
            )
        ],
        (
            "/v1/chat/completions",
            {**CHAT, "tools": [{"type": "web_search"}]},
            "tools.0.type",
        ),
    ],
)
def test_requests_the_server_cannot_honour(http, path, body, param):
    client, service = http()
    assert _error(client.post(path, json=body), 400)["param"] == param
    assert service.runner.prompts == []


@pytest.mark.parametrize(
    ("path", "tools", "param"),
    [
        ("/v1/responses", [_F, {"type": "teleport"}], "tools.1.type"),
        ("/v1/responses", [{**_NS_A, "tools": [{"type": "teleport"}]}], "tools.0.tools.0.type"),
        ("/v1/chat/completions", [{"type": "teleport"}], "tools.0.type"),
    ],
)
def test_an_unknown_tool_type_is_named_in_the_error(http, path, tools, param):
    client, service = http()
    asked = CHAT if "chat" in path else {"model": "gpt-oss-test", "input": "x"}
    error = _error(client.post(path, json={**asked, "tools": tools}), 400)
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert "'teleport'" in error["message"]
    assert service.runner.prompts == []


def test_a_body_larger_than_the_context_needs(http):
    client, _ = http(context=64)
    huge = b'{"model": "gpt-oss-test", "messages": [{"role": "user", "content": "'
    huge += b"x" * body_limit(64) + b'"}]}'
    headers = {"Content-Type": "application/json"}
    error = _error(client.post("/v1/chat/completions", content=huge, headers=headers), 413)
    assert f"{body_limit(64):,}" in error["message"]

    def chunked():  # no Content-Length: counted as it arrives
        yield huge[: len(huge) // 2]
        yield huge[len(huge) // 2 :]

    _error(client.post("/v1/chat/completions", content=chunked(), headers=headers), 413)


def _wait(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_full_queue_is_503_with_retry_after(http):
    client, service = http(max_queue=1)
    gate = service.runner.gate = threading.Event()
    results: list[httpx.Response] = []
    workers = [
        threading.Thread(
            target=lambda: results.append(client.post("/v1/chat/completions", json=CHAT))
        )
        for _ in range(2)
    ]
    workers[0].start()
    _wait(lambda: service.queue.counts() == (1, 0), "the first request to run")
    workers[1].start()
    _wait(lambda: service.queue.counts() == (1, 1), "the second request to wait")
    refused = client.post("/v1/chat/completions", json=CHAT)
    assert _error(refused, 503)["code"] == "queue_full"
    assert int(refused.headers["Retry-After"]) >= 1
    queue = client.get("/health").json()["queue"]
    assert queue == {"running": 1, "waiting": 1, "max_waiting": 1, "parallel": 1}
    gate.set()
    for worker in workers:
        worker.join(WAIT_S)
    assert [r.status_code for r in results] == [200, 200]
    texts = [r.json()["choices"][0]["message"]["content"] for r in results]
    assert texts == ["Hello there, friend."] * 2


def test_a_client_that_leaves_stops_its_generation(http):
    """Streamed or not, a disconnect ends the generation at once and frees the queue."""
    client, service = http("<|channel|>final<|message|>" + "la " * 2000, max_queue=0)
    runner = service.runner
    runner.pause_s = 0.005
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as stream:
        lines = stream.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any("la" in line for line in got)
    _wait(lambda: service.queue.counts() == (0, 0), "the streamed job to stop")
    assert runner.yielded < 500  # of 2,001 tokens

    before = runner.yielded
    short = httpx.Client(base_url=str(client.base_url), timeout=0.3)
    with pytest.raises(httpx.TimeoutException):
        short.post("/v1/chat/completions", json=CHAT)
    _wait(lambda: service.queue.counts() == (0, 0), "the non-streamed job to stop")
    assert runner.yielded - before < 500
    assert client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3}).status_code == 200
