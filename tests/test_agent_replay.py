"""Real client traffic replayed against `serve` on the scripted checkpoint.

tests/fixtures/agents/ holds the requests Codex CLI (an answer, a tool loop, `exec resume`, both
sandbox modes, `--oss`, `--output-schema`), the OpenAI Agents SDK and LangChain sent to a live
server, recorded with scripts/record_requests.py (the README beside them says how, with which
versions). Each fixture is sent again, request by request and byte for byte, to a server whose
model is the scripted checkpoint, and each answer is read with the `openai` client's own types
(strictly validated, streamed events one by one) or the `ollama` client's for Ollama's
endpoints. The reply must be the one the script gives that request: the call (with the
arguments as streamed) where the user asked with TRIGGER and no call was made yet, or a tool
choice forces it, else the answer, after the reasoning (as the summary when one is asked for);
an answer held to a schema must be JSON valid for it (`jsonschema`). A tool loop's follow-up
request must come mostly from the prefix cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import ollama
import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter
from scripted_model import ANSWER, ARGS, THINK, TRIGGER

from gptoss_lite.config import read_config
from gptoss_lite.engine.runner import load
from gptoss_lite.engine.session import chat_ring_slots
from gptoss_lite.server.service import Service

pytest_plugins = ["server_fixtures"]

FIXTURES = Path(__file__).parent / "fixtures" / "agents"
EVENTS = TypeAdapter(ResponseStreamEvent)
JSON = {"Content-Type": "application/json"}  # as every one of these clients sends its bodies
CACHED = 0.9  # a follow-up request resends the history: at least this much of it is cached
WAIT_S = 120.0  # bound on one request on a loaded 2-core machine


@pytest.fixture(scope="module")
def served(scripted_model, o200k_tokenizer, serve_module):
    """(base URL, service) of a server on the scripted checkpoint, as `serve` loads it."""
    config = read_config(scripted_model)
    runner = load(
        scripted_model, device="cpu", dtype="bf16", context=8192, ring_slots=chat_ring_slots(config)
    )
    service = Service(runner, o200k_tokenizer, "scripted")
    return serve_module(service), service


def _fixtures() -> list[str]:
    return sorted(path.stem for path in FIXTURES.glob("*.json"))


@pytest.mark.parametrize("name", _fixtures())
def test_recorded_requests_get_the_scripted_replies(served, name):
    url, service = served
    recorded = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    assert recorded["requests"], "an empty fixture checks nothing"
    with httpx.Client(base_url=url, timeout=WAIT_S) as client:
        for i, request in enumerate(recorded["requests"]):
            body = request["body"]
            sent = {"content": json.dumps(body), "headers": JSON} if body is not None else {}
            answer = client.request(request["method"], request["path"], **sent)
            assert answer.status_code == 200, f"request {i}: {answer.text}"
            _check(request["path"], body, answer, service)


def test_a_tool_loop_follow_up_comes_from_the_cache(served):
    url, _ = served
    recorded = json.loads((FIXTURES / "codex-tool-loop.json").read_text(encoding="utf-8"))
    first, follow_up = (r["body"] for r in recorded["requests"])
    with httpx.Client(base_url=url, timeout=WAIT_S) as client:
        _completed(client.post("/v1/responses", json=first))
        usage = _completed(client.post("/v1/responses", json=follow_up)).usage
    assert usage.input_tokens_details.cached_tokens >= CACHED * usage.input_tokens


def _check(path: str, body: dict | None, answer: httpx.Response, service: Service) -> None:
    if path == "/v1/responses":
        _check_response(body, answer)
    elif path == "/v1/chat/completions":
        _check_chat(body, answer)
    elif path == "/v1/models":
        assert [Model.model_validate(m).id for m in answer.json()["data"]] == ["scripted"]
    elif path == "/api/tags":
        names = [m.model for m in ollama.ListResponse.model_validate(answer.json()).models]
        assert names == list(service.names)
    elif path == "/api/version":
        assert isinstance(answer.json()["version"], str)
    else:
        raise AssertionError(f"no check for {path}")


def _check_response(body: dict, answer: httpx.Response) -> None:
    if body.get("stream"):
        events = [EVENTS.validate_python(json.loads(data)) for data in _sse(answer.text)]
        response = _completed(answer)
        arguments = "".join(
            e.delta for e in events if e.type == "response.function_call_arguments.delta"
        )
        texts = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        if _expects_call(body):
            assert arguments == ARGS
        else:
            _check_answer(body, texts)
    else:
        response = Response.model_validate(answer.json())
    *reasoning, last = response.output
    summary = bool((body.get("reasoning") or {}).get("summary"))
    thoughts = [t.text for r in reasoning for t in (r.summary if summary else r.content)]
    assert thoughts == ([] if _forced(body) else [THINK])
    if _expects_call(body):
        assert (last.type, last.name, json.loads(last.arguments)) == (
            "function_call", "exec_command", json.loads(ARGS)
        )  # fmt: skip
    else:
        _check_answer(body, response.output_text)
    assert response.parallel_tool_calls is body.get("parallel_tool_calls", True)


def _check_answer(body: dict, text: str) -> None:
    """The script's answer, or under an answer format (Codex's `--output-schema`) JSON valid
    for its schema: the grammar then holds the scripted model to it."""
    form = (body.get("text") or {}).get("format") or {"type": "text"}
    if form["type"] == "json_schema":
        jsonschema.validate(json.loads(text), form["schema"])
    else:
        assert text == ANSWER


def _check_chat(body: dict, answer: httpx.Response) -> None:
    if body.get("stream"):
        chunks = [ChatCompletionChunk.model_validate(json.loads(d)) for d in _sse(answer.text)]
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        thought = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
        text = "".join(d.content or "" for d in deltas)
        calls = [c for d in deltas for c in d.tool_calls or []]
        arguments = "".join(c.function.arguments or "" for c in calls)
        got = (calls[0].function.name, arguments) if calls else None
    else:
        message = ChatCompletion.model_validate(answer.json()).choices[0].message
        thought, text = message.reasoning_content, message.content
        calls = message.tool_calls or []
        got = (calls[0].function.name, calls[0].function.arguments) if calls else None
    assert (thought or "") == ("" if _forced(body) else THINK)
    if _expects_call(body):
        assert got == ("exec_command", ARGS)
    else:
        assert (text, calls) == (ANSWER, [])


def _forced(body: dict) -> bool:
    """Whether a tool choice forces a call (the prompt then opens the call: no reasoning)."""
    choice = body.get("tool_choice")
    return choice == "required" or isinstance(choice, dict)


def _expects_call(body: dict) -> bool:
    """What the script answers: a call when a tool choice forces one, or when the user asked
    with TRIGGER and no call has been made yet."""
    if _forced(body):
        return True
    items = body.get("input") if isinstance(body.get("input"), list) else body.get("messages")
    items = items or [{"role": "user", "content": body.get("input")}]
    asked = any(TRIGGER in json.dumps(i.get("content")) for i in items if i.get("role") == "user")
    called = any(i.get("type") == "function_call" or i.get("tool_calls") for i in items)
    return asked and not called


def _completed(answer: httpx.Response) -> Response:
    """The finished response of a streamed answer (its last event)."""
    last = json.loads(list(_sse(answer.text))[-1])
    assert last["type"] == "response.completed"
    return Response.model_validate(last["response"])


def _sse(text: str):
    """The data of each server-sent event, without the final [DONE]."""
    for block in text.split("\n\n"):
        data = [line[len("data: ") :] for line in block.splitlines() if line.startswith("data: ")]
        if data and data[0] != "[DONE]":
            yield "\n".join(data)
