"""Whatever a model writes, every endpoint answers it: never a 5xx, never invalid JSON on the wire,
always well-formed final events.

A scripted runner replies with random token sequences: harmony messages built from random parts
(missing or garbled headers, every channel, calls to declared, undeclared, custom and namespaced
tools, arguments that are not JSON or not an object, NaN, lone surrogate escapes, nesting), with
random text and special tokens put anywhere, and cut short at random (by the sequence or by the
token limit). Each reply goes through Chat Completions, Responses, Completions and Ollama's chat
and generate, streamed and not. Every body, SSE event and NDJSON line must be strict UTF-8 JSON
that the `openai` or `ollama` client's own types accept; a stream must end as its API ends one
(one finish reason then `[DONE]`; `response.completed` or `.incomplete` holding exactly the items
streamed; a last line with `done`), and say what the whole reply says.
"""

from __future__ import annotations

import json
import random

import httpx
import ollama
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gptoss_lite.chat.tokens import ENDOFTEXT, N_TEXT, NAMED_SPECIALS

pytest_plugins = ["server_fixtures"]

CASES = 40  # replies, each sent 10 ways: ~25 s on a loaded machine
MODEL = "gpt-oss-test"
USER = [{"role": "user", "content": "Go on."}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}}
CHAT_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "custom", "custom": {"name": "apply_patch"}},
]
RESPONSES_TOOLS = [
    {"type": "function", "name": "get_weather", "parameters": WEATHER},
    {"type": "custom", "name": "apply_patch"},
    {
        "type": "namespace",
        "name": "shell",
        "description": "Commands.",
        "tools": [{"type": "function", "name": "run"}],
    },
    {"type": "web_search"},
]
OLLAMA_TOOLS = CHAT_TOOLS[:1]
DECLARED = {"get_weather", "apply_patch", "shell.run"}

RECIPIENTS = [
    *["functions.get_weather", "functions.apply_patch", "shell.run"] * 3, "functions.run",
    "functions.nope", "nope.get_weather", "functions.", "functions.get_weather.x", "assistant",
    "=", "functions.get_weather<|constrain|>json",
]  # fmt: skip
CHANNELS = ["analysis", "final", "commentary", "bogus", "", None]
ARGUMENTS = [
    '{"city": "Paris"}', "{}", "", '["a", 1]', '"*** Begin Patch\\n*** End Patch"', '"\\ud800"',
    '{"city": NaN}', '{"n": 1e999}', '{"city": "Par', "[" * 300, "not json", '{"a": "\\udc00"}',
    "3", "null", '{"a": 1}{"b": 2}', '{"city": "é🦜\\u0000"}', '"\\"quoted\\""',
]  # fmt: skip
TEXTS = [
    "Hello", "é🦜 ok", " ", "\n\n", "{", "<|start|>", "to=functions.get_weather", "END", "",
    "Let me think about that.",
]  # fmt: skip
FOUND = [  # replies that once failed: a 500 on Ollama's chat, then on a custom tool's input
    '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>["a", 1]<|call|>',
    '<|channel|>commentary to=functions.apply_patch <|constrain|>json<|message|>"a\\ud800"<|call|>',
]
ENDS = ["<|end|>"] * 4 + ["<|call|>", "<|return|>", "<|endoftext|>", ""]
MARKUP = list(NAMED_SPECIALS.values())


def well_formed(rng: random.Random) -> str:
    """A reply as gpt-oss writes one: maybe an analysis, then a call or an answer (the
    arguments and texts still random)."""
    analysis = f"<|channel|>analysis<|message|>{rng.choice(TEXTS)}<|end|><|start|>assistant"
    reply = analysis if rng.random() < 0.5 else ""
    if rng.random() < 0.7:
        recipient, body = rng.choice(RECIPIENTS), rng.choice(ARGUMENTS)
        header = f"<|channel|>commentary to={recipient} <|constrain|>json"
        return f"{reply}{header}<|message|>{body}<|call|>"
    return f"{reply}<|channel|>final<|message|>{rng.choice(TEXTS)}<|return|>"


def garbled(rng: random.Random, first: bool) -> str:
    """One harmony message from random parts (the prompt ends with `<|start|>assistant`)."""
    start = "" if first else "<|start|>assistant"
    if rng.random() < 0.3:
        start = rng.choice(["", "<|start|>", "<|start|>user", "<|start|>functions.run"])
    recipient = rng.choice(RECIPIENTS) if rng.random() < 0.6 else None
    channel = rng.choice(CHANNELS)
    header = f" to={recipient}" if recipient and rng.random() < 0.3 else ""
    if channel is not None:
        header += f"<|channel|>{channel}"
    if recipient and (not header or rng.random() < 0.8):
        header += f" to={recipient}"
    if rng.random() < 0.5:
        header += rng.choice([" <|constrain|>json", " json", "<|constrain|>", " <|constrain|>"])
    body = rng.choice(ARGUMENTS if recipient else TEXTS * 2 + ARGUMENTS)
    end = "<|call|>" if recipient and rng.random() < 0.6 else rng.choice(ENDS)
    if rng.random() < 0.1:
        return start + header + body + end  # no <|message|>
    return f"{start}{header}<|message|>{body}{end}"


def random_reply(rng: random.Random, tokenizer) -> list[int]:
    """Token ids of a random reply: messages, noise tokens put anywhere, maybe cut short; then
    `<|endoftext|>`, where a model stops on any endpoint (a runner stops at a stop token or the
    token limit, never otherwise)."""
    if rng.random() < 0.6:
        text = well_formed(rng)
    else:
        text = "".join(garbled(rng, i == 0) for i in range(rng.randint(1, 4)))
    ids = tokenizer.encode(text, allow_special=True)
    for _ in range(rng.choice([0, 0, 0, 1, 4])):
        noise = rng.choice(
            [rng.randrange(N_TEXT), rng.randrange(N_TEXT, tokenizer.n_vocab), rng.choice(MARKUP)]
        )
        ids.insert(rng.randint(0, len(ids)), noise)
    if rng.random() < 0.2:
        ids = ids[: rng.randint(0, len(ids))]
    return [*ids, ENDOFTEXT]


# ------------------------------------------------------------------ reading the wire strictly


def strict_json(raw: str | bytes):
    """JSON as the standard has it: UTF-8, no NaN or Infinity."""

    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    return json.loads(text, parse_constant=refuse)


def whole(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text[:500]
    return strict_json(response.content)


def sse(response: httpx.Response) -> list[tuple[str | None, str]]:
    """The (event name, data) of each server-sent event."""
    assert response.status_code == 200, response.text[:500]
    events = []
    for block in response.content.decode("utf-8").split("\n\n"):
        if not block:
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        assert set(fields) <= {"event", "data"}, block
        events.append((fields.get("event"), fields["data"]))
    return events


def ndjson(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text[:500]
    text = response.content.decode("utf-8")
    assert text.endswith("\n"), text[-200:]
    return [strict_json(line) for line in text[:-1].split("\n")]


# ------------------------------------------------------------------ each endpoint, both ways


def chat(client: httpx.Client, max_tokens: int) -> None:
    body = {"model": MODEL, "messages": USER, "tools": CHAT_TOOLS, "max_tokens": max_tokens}
    one = ChatCompletion.model_validate(whole(client.post("/v1/chat/completions", json=body)))
    choice = one.choices[0]
    calls = [_chat_call(c.model_dump()) for c in choice.message.tool_calls or []]
    said = (choice.message.content or "", _reasoning(choice.message.model_extra), calls)
    assert {name for name, _ in calls} <= DECLARED
    assert (choice.finish_reason == "tool_calls") <= bool(calls)

    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    events = [data for _, data in sse(client.post("/v1/chat/completions", json=stream))]
    assert events[-1] == "[DONE]"
    chunks = [_chunk(strict_json(data)) for data in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] is not None
    finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1]]
    assert finishes[-1] == choice.finish_reason and not any(finishes[:-1])
    content, reasoning, streamed = "", "", {}
    for chunk in chunks[:-1]:
        delta = chunk["choices"][0]["delta"]
        content += delta.get("content") or ""
        reasoning += _reasoning(delta)
        for call in delta.get("tool_calls") or []:
            _merge(streamed.setdefault(call["index"], {}), call)
    calls = [_chat_call(streamed[i]) for i in sorted(streamed)]
    assert (content, reasoning, calls) == said


def _chunk(chunk: dict) -> dict:
    """A chunk checked by the client's type, which knows no custom tool call in a delta (the
    client does not check chunks): those are checked here."""
    plain = json.loads(json.dumps(chunk))
    for choice in plain["choices"]:
        calls = choice["delta"].get("tool_calls") or []
        for call in [c for c in calls if c.get("type") == "custom"]:
            assert isinstance(call["custom"]["name"], str), call
            assert isinstance(call["custom"]["input"], str), call
            calls.remove(call)
    ChatCompletionChunk.model_validate(plain)
    return chunk


def _reasoning(extra: dict | None) -> str:
    return (extra or {}).get("reasoning_content") or ""


def _chat_call(call: dict) -> tuple[str, str]:
    if call.get("type") == "custom":
        return call["custom"]["name"], call["custom"]["input"]
    return call["function"]["name"], call["function"]["arguments"]


def _merge(into: dict, delta: dict) -> None:
    """A streamed tool-call delta added to the call so far (argument texts are joined)."""
    for key, value in delta.items():
        if isinstance(value, dict):
            _merge(into.setdefault(key, {}), value)
        elif key == "arguments":
            into[key] = into.get(key, "") + value
        else:
            into[key] = value


STREAM_EVENT = TypeAdapter(ResponseStreamEvent)


def responses(client: httpx.Client, max_tokens: int, summary: bool) -> None:
    body = {"model": MODEL, "input": "Go on.", "tools": RESPONSES_TOOLS, "store": False}
    body["max_output_tokens"] = max_tokens
    if summary:
        body["reasoning"] = {"summary": "auto"}
    raw = whole(client.post("/v1/responses", json=body))
    one = Response.model_validate(raw)
    assert one.status in ("completed", "incomplete")
    for item in one.output:
        if item.type == "function_call":
            qualified = f"{item.namespace}.{item.name}" if item.namespace else item.name
            assert qualified in DECLARED

    events = sse(client.post("/v1/responses", json={**body, "stream": True}))
    data = [strict_json(d) for _, d in events]
    for (name, _), event in zip(events, data, strict=True):
        assert name == event["type"]
        STREAM_EVENT.validate_python(event)
    assert [e["sequence_number"] for e in data] == list(range(len(data)))
    assert data[0]["type"] == "response.created"
    assert data[-1]["type"] == f"response.{one.status}", data[-1]
    done = [e["item"] for e in data if e["type"] == "response.output_item.done"]
    added = [e["item"]["id"] for e in data if e["type"] == "response.output_item.added"]
    assert data[-1]["response"]["output"] == done and [i["id"] for i in done] == added
    assert _items(done) == _items(raw["output"])


def _items(items: list[dict]) -> list[dict]:
    """Output items without their ids, which differ between two requests."""
    return [{k: v for k, v in item.items() if k not in ("id", "call_id")} for item in items]


def completions(client: httpx.Client, max_tokens: int) -> None:
    body = {"model": MODEL, "prompt": "Go on.", "max_tokens": max_tokens}
    one = Completion.model_validate(whole(client.post("/v1/completions", json=body)))
    events = [
        data for _, data in sse(client.post("/v1/completions", json={**body, "stream": True}))
    ]
    assert events[-1] == "[DONE]"
    chunks = [strict_json(data) for data in events[:-1]]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finishes[-1] == one.choices[0].finish_reason and not any(finishes[:-1])
    for chunk in chunks:  # the type wants a finish reason, which only the last chunk has
        (choice,) = chunk["choices"]
        Completion.model_validate({**chunk, "choices": [{**choice, "finish_reason": "stop"}]})
    assert "".join(c["choices"][0]["text"] for c in chunks) == one.choices[0].text


def ollama_chat(client: httpx.Client, max_tokens: int) -> None:
    body = {"model": MODEL, "messages": USER, "tools": OLLAMA_TOOLS}
    body.update(stream=False, options={"num_predict": max_tokens})
    one = ollama.ChatResponse.model_validate(whole(client.post("/api/chat", json=body)))
    said = (one.message.content, one.message.thinking or "", _ollama_calls([one.message]))
    assert {name for name, _ in said[2]} <= DECLARED

    lines = ndjson(client.post("/api/chat", json={**body, "stream": True}))
    pieces = [ollama.ChatResponse.model_validate(line) for line in lines]
    assert [p.done for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert pieces[-1].done_reason == one.done_reason and one.done_reason in ("stop", "length")
    messages = [p.message for p in pieces]
    content = "".join(m.content or "" for m in messages)
    assert (content, "".join(m.thinking or "" for m in messages), _ollama_calls(messages)) == said


def _ollama_calls(messages: list) -> list[tuple[str, dict]]:
    calls = [call for message in messages for call in message.tool_calls or []]
    return [(call.function.name, dict(call.function.arguments)) for call in calls]


def ollama_generate(client: httpx.Client, max_tokens: int) -> None:
    body = {"model": MODEL, "prompt": "Go on.", "stream": False}
    body["options"] = {"num_predict": max_tokens}
    one = ollama.GenerateResponse.model_validate(whole(client.post("/api/generate", json=body)))
    lines = ndjson(client.post("/api/generate", json={**body, "stream": True}))
    pieces = [ollama.GenerateResponse.model_validate(line) for line in lines]
    assert [p.done for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert pieces[-1].done_reason == one.done_reason
    assert "".join(p.response for p in pieces) == one.response
    assert "".join(p.thinking or "" for p in pieces) == (one.thinking or "")


@pytest.fixture
def http(scripted_service, serve_http):
    """(httpx client, service) of a running scripted server."""
    service = scripted_service()
    with httpx.Client(base_url=serve_http(service), timeout=30) as client:
        yield client, service


def test_random_replies_are_answered_well_on_every_endpoint(http):
    client, service = http
    rng = random.Random(20)
    found = [service.tokenizer.encode(text, allow_special=True) for text in FOUND]
    for case in range(len(found) + CASES):
        reply = found[case] if case < len(found) else random_reply(rng, service.tokenizer)
        service.runner.reply = reply
        limit = len(reply)
        if case >= len(found) and rng.random() < 0.3:
            limit = rng.randint(1, limit)  # cut short by the token limit
        try:
            chat(client, limit)
            responses(client, limit, summary=rng.random() < 0.5)
            completions(client, limit)
            ollama_chat(client, limit)
            ollama_generate(client, limit)
        except AssertionError as failure:
            text = service.tokenizer.decode(service.runner.reply)
            raise AssertionError(f"case {case}, max tokens {limit}, reply {text!r}") from failure
    assert service.queue.counts() == (0, 0)
