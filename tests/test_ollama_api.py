"""Ollama's API under /api, checked with the `ollama` client from PyPI as the oracle.

A real server on 127.0.0.1 with a scripted model (exact harmony replies): listing, show, pull
(the served model succeeds, any other is Ollama's error), chat and generate streamed and not
(thinking, content, tool calls with object arguments, timings and counts), the history a chat
sends (thinking, tool calls, tool results) rendered as the same harmony turns the OpenAI API
makes, `think` levels, options, and the refusals, each parsed by the client's own types.
"""

from __future__ import annotations

import datetime
import json

import httpx
import ollama
import pytest

from gptoss_lite.chat.harmony import Conversation, Message, ToolDef, render_prompt
from gptoss_lite.config import preset
from gptoss_lite.server.ollama_api import OLLAMA_VERSION

pytest_plugins = ["server_fixtures"]

THOUGHT = "The user greets; answer briefly."
ANSWER = "Hello there!"
REASONED = (
    f"<|channel|>analysis<|message|>{THOUGHT}<|end|>"
    f"<|start|>assistant<|channel|>final<|message|>{ANSWER}<|return|>"
)
ARGS = {"cmd": "echo hello", "timeout": 5}
CALL = (
    "<|channel|>analysis<|message|>Run it.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.exec_command <|constrain|>json"
    f"<|message|>{json.dumps(ARGS)}<|call|>"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "exec_command",
            "description": "Run a shell command.",
            "parameters": {
                "type": "object",
                "properties": {"cmd": {"type": "string"}, "timeout": {"type": "integer"}},
                "required": ["cmd"],
            },
        },
    }
]
USER = [{"role": "user", "content": "hi"}]
CODEX_MINIMUM = (0, 13, 4)  # codex --oss refuses an older Ollama (codex-rs/ollama)


@pytest.fixture
def serve(scripted_service, serve_http):
    """`serve(text, **options)` → (ollama client, service, base URL)."""

    def start(text: str = REASONED, **options):
        service = scripted_service(text, **options)
        url = serve_http(service)
        return ollama.Client(host=url, timeout=20), service, url

    return start


def _today() -> str:
    return datetime.date.today().isoformat()


def test_version_is_one_codex_accepts(serve):
    _, _, url = serve()
    version = httpx.get(f"{url}/api/version").json()["version"]
    assert version == OLLAMA_VERSION
    assert tuple(int(n) for n in version.split(".")) >= CODEX_MINIMUM


def test_tags_and_show_describe_the_served_model(serve):
    client, service, _ = serve()
    models = client.list().models
    assert [m.model for m in models] == ["gpt-oss-test"]
    assert models[0].details.family == "gpt-oss"
    assert models[0].size > 0 and len(models[0].digest) == 64
    shown = client.show("gpt-oss-test")
    assert shown.modelinfo["gpt-oss.context_length"] == service.context
    assert shown.modelinfo["gpt-oss.block_count"] == service.config.num_layers
    assert {"completion", "tools", "thinking"} <= set(shown.capabilities)


def test_a_published_geometry_is_listed_under_ollamas_name(scripted_service, serve_http):
    import openai

    service = scripted_service(REASONED)
    service.runner.config = preset("gpt-oss-20b").with_(eos_token_ids=(200002, 199999))
    service.__init__(service.runner, service.tokenizer, "openai/gpt-oss-20b")  # names again
    url = serve_http(service)
    names = [m.model for m in ollama.Client(host=url).list().models]
    assert names == ["openai/gpt-oss-20b", "gpt-oss:20b"]
    # codex --oss then asks the Responses API for it under that name
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    assert client.responses.create(model="gpt-oss:20b", input="hi").output_text == ANSWER
    service.close()


def test_pull_succeeds_for_the_served_model_only(serve):
    client, _, _ = serve()
    assert client.pull("gpt-oss-test").status == "success"
    assert client.pull("gpt-oss-test:latest").status == "success"
    assert client.chat(model="gpt-oss-test:latest", messages=USER).message.content == ANSWER
    assert [p.status for p in client.pull("gpt-oss-test", stream=True)] == ["success"]
    with pytest.raises(ollama.ResponseError) as refused:
        client.pull("llama3.2")
    assert refused.value.status_code == 404 and "llama3.2" in refused.value.error
    with pytest.raises(ollama.ResponseError, match="llama3.2"):
        list(client.pull("llama3.2", stream=True))


def test_chat_gives_thinking_content_and_counts(serve):
    client, service, _ = serve()
    reply = client.chat(model="gpt-oss-test", messages=USER)
    assert (reply.message.thinking, reply.message.content) == (THOUGHT, ANSWER)
    assert reply.done and reply.done_reason == "stop"
    assert reply.prompt_eval_count == len(service.runner.prompts[-1])
    assert reply.eval_count == len(service.tokenizer.encode(REASONED, allow_special=True))
    assert reply.total_duration >= reply.eval_duration >= 0


def test_chat_streams_the_same_reply(serve):
    client, _, _ = serve()
    chunks = list(client.chat(model="gpt-oss-test", messages=USER, stream=True))
    assert all(not c.done for c in chunks[:-1]) and chunks[-1].done
    assert "".join(c.message.thinking or "" for c in chunks) == THOUGHT
    assert "".join(c.message.content or "" for c in chunks) == ANSWER
    assert chunks[-1].done_reason == "stop" and chunks[-1].eval_count > 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_comes_with_object_arguments(serve, stream):
    client, _, _ = serve(CALL)
    reply = client.chat(model="gpt-oss-test", messages=USER, tools=TOOLS, stream=stream)
    chunks = list(reply) if stream else [reply]
    calls = [call for c in chunks for call in c.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("exec_command", ARGS)
    ]
    assert chunks[-1].done_reason == "stop"


def test_chat_history_becomes_the_harmony_turns(serve):
    client, service, _ = serve()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "List files"},
        {
            "role": "assistant",
            "content": "",
            "thinking": "Use ls.",
            "tool_calls": [{"function": {"name": "exec_command", "arguments": {"cmd": "ls"}}}],
        },
        {"role": "tool", "content": "a.txt", "tool_name": "exec_command"},
    ]
    client.chat(model="gpt-oss-test", messages=messages, tools=TOOLS, think="high")
    turns = [
        Message.user("List files"),
        Message("assistant", "Use ls.", channel="analysis"),  # a chain under way keeps it
        Message.tool_call("exec_command", '{"cmd": "ls"}'),
        Message.tool_result("functions.exec_command", "a.txt"),
    ]
    tool = TOOLS[0]["function"]
    expected = Conversation(
        turns,
        instructions="Be brief.",
        tools=[ToolDef(tool["name"], tool["description"], tool["parameters"])],
        reasoning_effort="high",
        date=_today(),
    )
    assert service.runner.prompts[-1] == render_prompt(expected, service.tokenizer)


@pytest.mark.parametrize(("think", "effort"), [("low", "low"), ("max", "high"), (True, "medium")])
def test_think_sets_the_effort(serve, think, effort):
    client, service, _ = serve()
    client.chat(model="gpt-oss-test", messages=USER, think=think)
    expected = Conversation([Message.user("hi")], reasoning_effort=effort, date=_today())
    assert service.runner.prompts[-1] == render_prompt(expected, service.tokenizer)


def test_options_reach_the_sampler(serve):
    client, service, _ = serve()
    options = {"temperature": 0.5, "top_p": 0.9, "top_k": 40, "seed": 7, "num_predict": 3}
    reply = client.chat(model="gpt-oss-test", messages=USER, options=options)
    seen = service.runner.sampling[-1]
    assert seen == {**seen, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "seed": 7}
    assert seen["max_new_tokens"] == 3 and reply.done_reason == "length"


def test_a_stop_string_ends_the_answer(serve):
    client, _, _ = serve()
    reply = client.chat(model="gpt-oss-test", messages=USER, options={"stop": ["there"]})
    assert reply.message.content == "Hello "


def test_generate_answers_a_prompt_and_a_raw_prompt(serve):
    client, service, _ = serve()
    reply = client.generate(model="gpt-oss-test", prompt="hi", system="Be brief.")
    assert (reply.thinking, reply.response, reply.done_reason) == (THOUGHT, ANSWER, "stop")
    expected = Conversation([Message.user("hi")], instructions="Be brief.", date=_today())
    assert service.runner.prompts[-1] == render_prompt(expected, service.tokenizer)
    chunks = list(client.generate(model="gpt-oss-test", prompt="Once upon", raw=True, stream=True))
    assert service.runner.prompts[-1] == service.tokenizer.encode("Once upon")
    plain = [t for t in service.runner.reply if not service.tokenizer.is_special(t)]
    assert "".join(c.response for c in chunks) == service.tokenizer.decode(plain)


def test_nothing_to_generate_is_a_load(serve):
    client, service, _ = serve()
    assert client.chat(model="gpt-oss-test", messages=[]).done_reason == "load"
    assert client.generate(model="gpt-oss-test", prompt="").done_reason == "load"
    assert service.runner.prompts == []


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("chat", {"model": "llama3", "messages": USER}, 404, "llama3"),
        ("chat", {"model": "gpt-oss-test", "messages": USER, "think": "lots"}, 400, "think"),
        ("chat", {"model": "gpt-oss-test", "messages": USER, "format": "xml"}, 400, "format"),
        ("chat", {"model": "gpt-oss-test", "messages": [{"role": "x"}]}, 400, "role"),
        ("generate", {"model": "gpt-oss-test", "prompt": "a", "suffix": "b"}, 400, "suffix"),
        ("generate", {"model": "gpt-oss-test", "prompt": "a", "images": ["AA=="]}, 400, "images"),
        ("show", {"model": "llama3"}, 404, "llama3"),
    ],
)
def test_bad_requests_get_ollamas_error_shape(serve, path, body, status, words):
    _, service, url = serve()
    answer = httpx.post(f"{url}/api/{path}", json={**body, "stream": False})
    assert answer.status_code == status
    assert list(answer.json()) == ["error"] and words in answer.json()["error"]
    assert service.runner.prompts == []


PREAMBLE = "<|start|>assistant<|channel|>commentary<|message|>Let me look.<|end|>"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "arguments", ['["not", "an", "object"]', '{"cmd": "ls"', '{"cmd": NaN}', '"\\ud800"']
)
def test_arguments_that_are_no_object_come_as_content(serve, arguments, stream):
    # Ollama's arguments are an object: these cannot be a call (was a 500, or an error line)
    client, _, _ = serve(CALL.replace("<|start|>", PREAMBLE + "<|start|>").replace(
        json.dumps(ARGS), arguments
    ))  # fmt: skip
    reply = client.chat(model="gpt-oss-test", messages=USER, tools=TOOLS, stream=stream)
    chunks = list(reply) if stream else [reply]
    assert not [c for c in chunks if c.message.tool_calls]
    assert "".join(c.message.content or "" for c in chunks) == f"Let me look.\n\n{arguments}"
    assert chunks[-1].done and chunks[-1].done_reason == "stop"


def test_a_call_cut_short_comes_as_content_and_says_length(serve):
    client, service, _ = serve(CALL)
    header = CALL[: CALL.index(json.dumps(ARGS))]
    limit = len(service.tokenizer.encode(header, allow_special=True)) + 3
    for stream in (False, True):
        reply = client.chat(
            model="gpt-oss-test", messages=USER, tools=TOOLS, stream=stream,
            options={"num_predict": limit},
        )  # fmt: skip
        chunks = list(reply) if stream else [reply]
        content = "".join(c.message.content or "" for c in chunks)
        assert content and json.dumps(ARGS).startswith(content)
        assert not [c for c in chunks if c.message.tool_calls]
        assert chunks[-1].done_reason == "length"


def test_the_api_key_guards_all_but_the_version(serve):
    _, _, url = serve(api_key="sekrit")
    assert httpx.get(f"{url}/api/version").status_code == 200
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=url).list()
    assert refused.value.status_code == 401
    keyed = ollama.Client(host=url, headers={"Authorization": "Bearer sekrit"})
    assert keyed.chat(model="gpt-oss-test", messages=USER).message.content == ANSWER
