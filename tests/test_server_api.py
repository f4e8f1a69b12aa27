"""The HTTP API against the official `openai` client, on a scripted model with exact harmony output.

A real server listens on 127.0.0.1 (a free port); the model is a `ScriptedRunner` that replies a
fixed harmony completion, so reasoning, answers, one and two tool calls, malformed headers and a
refusal without a channel can be checked field by field, streamed and not, on both endpoints.
What the server renders is compared with openai-harmony's rendering of the same conversation.
"""

from __future__ import annotations

import datetime
import json

import httpx
import openai_harmony as oh
import pytest

pytest_plugins = ["server_fixtures"]

REASONED = (
    "<|channel|>analysis<|message|>The user asks for a sum; it is 4.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>"
)
WEATHER_ARGS = '{"location": "Tokyo"}'
ONE_CALL = (
    "<|channel|>analysis<|message|>Need the weather; call the tool.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    f"<|message|>{WEATHER_ARGS}<|call|>"
)
TWO_CALLS = (
    "<|channel|>commentary to=functions.get_weather <|constrain|>json"
    f"<|message|>{WEATHER_ARGS}<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_time <|constrain|>json"
    '<|message|>{"zone": "JST"}<|call|>'
)
REFUSAL = "I can't help with that.<|return|>"
MALFORMED = {  # a completion, and the texts of it that must reach the client
    "<|channel|>analysis<|channel|>final to=functions.x<|message|>doubled<|return|>": ["doubled"],
    "<|channel|><|message|>no channel<|end|><|start|><|message|>no role<|return|>": [
        "no channel",
        "no role",
    ],
    "<|start|>assistant<|channel|>final<|constrain|><|message|>odd type<|return|>": ["odd type"],
    "<|channel|>final<|message|>answer<|start|>assistant<|channel|>fin": ["answer"],  # cut off
    "<|message|>body first<|end|><|end|><|call|>": ["body first"],
    "<|channel|>final to=<|channel|>x<|message|>markup recipient<|call|>": ["markup recipient"],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}},
                "required": ["location"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time", "description": "The time."}},
]
RESPONSE_TOOLS = [{"type": "function", **tool["function"]} for tool in TOOLS]
USER = [{"role": "user", "content": "What is 2 + 2?"}]


def _tokens(service, text: str) -> int:
    return len(service.tokenizer.encode(text, allow_special=True))


def _stream_chat(client, **kwargs) -> tuple[dict, list]:
    """Accumulate a streamed chat completion the way a client does."""
    out = {"content": "", "reasoning": "", "calls": {}, "finish": None, "usage": None}
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    for chunk in chunks:
        if chunk.usage is not None:
            out["usage"] = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            out["content"] += delta.content or ""
            out["reasoning"] += getattr(delta, "reasoning_content", None) or ""
            for call in delta.tool_calls or []:
                slot = out["calls"].setdefault(call.index, {"ids": set(), "name": "", "args": ""})
                if call.id:
                    slot["ids"].add(call.id)
                if call.function and call.function.name:
                    slot["name"] += call.function.name
                slot["args"] += (call.function.arguments or "") if call.function else ""
            out["finish"] = choice.finish_reason or out["finish"]
    return out, chunks


def test_reasoning_and_answer(serve):
    client, service = serve(REASONED)
    reply = client.chat.completions.create(model="gpt-oss-test", messages=USER)
    message = reply.choices[0].message
    assert message.content == "2 + 2 = 4."
    assert message.reasoning_content == message.reasoning == "The user asks for a sum; it is 4."
    assert message.tool_calls is None
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == _tokens(service, REASONED)
    assert reply.usage.prompt_tokens == len(service.runner.prompts[0])

    streamed, chunks = _stream_chat(
        client, model="gpt-oss-test", messages=USER, stream_options={"include_usage": True}
    )
    assert streamed["content"] == message.content
    assert streamed["reasoning"] == message.reasoning_content
    assert streamed["finish"] == "stop" and not streamed["calls"]
    assert streamed["usage"].completion_tokens == reply.usage.completion_tokens
    assert chunks[-1].choices == [] and chunks[0].choices[0].delta.role == "assistant"
    assert len({chunk.id for chunk in chunks}) == 1


def test_one_tool_call(serve):
    client, _ = serve(ONE_CALL)
    reply = client.chat.completions.create(model="gpt-oss-test", messages=USER, tools=TOOLS)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.reasoning_content == "Need the weather; call the tool."
    [call] = choice.message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", WEATHER_ARGS)
    assert call.id.startswith("call_")

    streamed, _ = _stream_chat(client, model="gpt-oss-test", messages=USER, tools=TOOLS)
    assert streamed["finish"] == "tool_calls" and streamed["content"] == ""
    assert list(streamed["calls"]) == [0]
    assert streamed["calls"][0]["name"] == "get_weather"
    assert streamed["calls"][0]["args"] == WEATHER_ARGS
    assert len(streamed["calls"][0]["ids"]) == 1  # one stable id


def test_two_tool_calls_get_one_index_each(serve):
    client, _ = serve(TWO_CALLS)
    reply = client.chat.completions.create(model="gpt-oss-test", messages=USER, tools=TOOLS)
    calls = reply.choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"location": "Tokyo"}),
        ("get_time", {"zone": "JST"}),
    ]
    assert len({c.id for c in calls}) == 2
    streamed, _ = _stream_chat(client, model="gpt-oss-test", messages=USER, tools=TOOLS)
    assert [(c["name"], c["args"], len(c["ids"])) for c in streamed["calls"].values()] == [
        (c.function.name, c.function.arguments, 1) for c in calls
    ]
    assert list(streamed["calls"]) == [0, 1]


def test_refusal_without_a_channel_is_the_content(serve):
    client, _ = serve(REFUSAL)
    reply = client.chat.completions.create(model="gpt-oss-test", messages=USER)
    assert reply.choices[0].message.content == "I can't help with that."
    assert reply.choices[0].message.reasoning_content is None
    assert reply.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("script", MALFORMED)
def test_malformed_output_never_fails_nor_shows_markup(serve, script):
    client, _ = serve(script)
    reply = client.chat.completions.create(model="gpt-oss-test", messages=USER, tools=TOOLS)
    streamed, _ = _stream_chat(client, model="gpt-oss-test", messages=USER, tools=TOOLS)
    response = client.responses.create(model="gpt-oss-test", input="hi", tools=RESPONSE_TOOLS)
    fields = json.dumps([reply.model_dump(), streamed, response.model_dump()], default=str)
    assert "<|" not in fields
    message = reply.choices[0].message
    calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
    assert streamed["content"] == (message.content or "")
    assert [(c["name"], c["args"]) for c in streamed["calls"].values()] == calls
    shown = [message.content or "", message.reasoning_content or "", *(a for _, a in calls)]
    assert all(any(text in field for field in shown) for text in MALFORMED[script])


def test_history_renders_as_openai_harmony(serve, harmony_oracle):
    """A tool chain sent back: the last call's reasoning is kept, the finished turn's dropped."""
    client, service = serve(REASONED)
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hi <|start|>"},
        {"role": "assistant", "content": "Hello.", "reasoning_content": "Greet back."},
        {"role": "user", "content": "Weather in Tokyo?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "Need the weather.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": WEATHER_ARGS},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'},
    ]
    client.chat.completions.create(
        model="gpt-oss-test", messages=messages, tools=TOOLS, reasoning_effort="high"
    )
    system = oh.SystemContent.new().with_reasoning_effort(oh.ReasoningEffort.HIGH)
    system = system.with_conversation_start_date(datetime.date.today().isoformat())
    tools = [
        oh.ToolDescription.new(
            t["function"]["name"], t["function"]["description"], t["function"].get("parameters")
        )
        for t in TOOLS
    ]
    developer = oh.DeveloperContent.new().with_instructions("Answer briefly.")
    developer = developer.with_function_tools(tools)
    assistant = oh.Author(role=oh.Role.ASSISTANT)
    expected = oh.Conversation.from_messages(
        [
            oh.Message.from_role_and_content(oh.Role.SYSTEM, system),
            oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer),
            oh.Message.from_role_and_content(oh.Role.USER, "Hi <|start|>"),
            oh.Message.from_author_and_content(assistant, "Hello.").with_channel("final"),
            oh.Message.from_role_and_content(oh.Role.USER, "Weather in Tokyo?"),
            oh.Message.from_author_and_content(assistant, "Need the weather.").with_channel(
                "analysis"
            ),
            oh.Message.from_author_and_content(assistant, WEATHER_ARGS)
            .with_channel("commentary")
            .with_recipient("functions.get_weather")
            .with_content_type("<|constrain|>json"),
            oh.Message.from_author_and_content(
                oh.Author(role=oh.Role.TOOL, name="functions.get_weather"), '{"sky": "clear"}'
            )
            .with_channel("commentary")
            .with_recipient("assistant"),
        ]
    )
    want = harmony_oracle.render_conversation_for_completion(expected, oh.Role.ASSISTANT)
    assert service.runner.prompts[-1] == want


def test_responses_reasoning_and_answer(serve):
    client, service = serve(REASONED)
    response = client.responses.create(
        model="gpt-oss-test", input="What is 2 + 2?", reasoning={"effort": "low"}
    )
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == "The user asks for a sum; it is 4."
    assert response.output_text == "2 + 2 = 4."
    assert response.status == "completed"
    assert response.usage.output_tokens == _tokens(service, REASONED)
    assert "Reasoning: low" in service.tokenizer.decode(service.runner.prompts[-1])

    events = list(
        client.responses.create(model="gpt-oss-test", input="What is 2 + 2?", stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert (
        kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 2
    )
    thought = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    answer = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert (thought, answer) == (response.output[0].content[0].text, response.output_text)
    assert events[-1].response.output_text == answer


def test_responses_tool_chain_with_previous_response_id(serve):
    client, service = serve(ONE_CALL)
    first = client.responses.create(model="gpt-oss-test", input="Tokyo?", tools=RESPONSE_TOOLS)
    [_, call] = first.output
    assert (call.type, call.name, call.arguments) == ("function_call", "get_weather", WEATHER_ARGS)

    service.runner.script(REASONED)
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "clear"}
    second = client.responses.create(
        model="gpt-oss-test", previous_response_id=first.id, input=[output], tools=RESPONSE_TOOLS
    )
    assert second.output_text == "2 + 2 = 4."
    prompt = service.tokenizer.decode(service.runner.prompts[-1])
    # The chain's reasoning is kept, and the call and its output are rendered after it.
    chain = [
        "<|channel|>analysis<|message|>Need the weather; call the tool.<|end|>",
        "to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>"
        f"{WEATHER_ARGS}<|call|>",
        "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>clear<|end|>",
    ]
    at = [prompt.find(piece) for piece in chain]
    assert -1 not in at and at == sorted(at)

    streamed = list(
        client.responses.create(
            model="gpt-oss-test", input="again", previous_response_id=second.id, stream=True
        )
    )
    assert streamed[-1].type == "response.completed"
    # The finished turn's reasoning is dropped when the conversation goes on.
    assert "Need the weather" not in service.tokenizer.decode(service.runner.prompts[-1])


def test_responses_streams_function_call_arguments(serve):
    client, _ = serve(ONE_CALL)
    events = list(
        client.responses.create(model="gpt-oss-test", input="x", tools=RESPONSE_TOOLS, stream=True)
    )
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.output_item.done"]
    assert args == WEATHER_ARGS == done[-1].item.arguments
    assert [e.item.type for e in done] == ["reasoning", "function_call"]


def test_tool_choice_forces_a_call(serve, harmony_oracle):
    """A named function (or "required") opens the reply with the call's header, as gpt-oss
    writes it; the model writes the arguments (or the name and arguments) and `<|call|>`."""
    client, service = serve(f"{WEATHER_ARGS}<|call|>")
    named = {"type": "function", "function": {"name": "get_weather"}}
    reply = client.chat.completions.create(
        model="gpt-oss-test", messages=USER, tools=TOOLS, tool_choice=named
    )
    [call] = reply.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", WEATHER_ARGS)
    assert reply.choices[0].finish_reason == "tool_calls"
    header = service.tokenizer.encode(
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>",
        allow_special=True,
    )
    assert service.runner.prompts[-1][-len(header) :] == header
    # openai-harmony reads the forced header and the model's arguments as that call
    completion = header + service.tokenizer.encode(f"{WEATHER_ARGS}<|call|>", allow_special=True)
    [parsed] = harmony_oracle.parse_messages_from_completion_tokens(completion, oh.Role.ASSISTANT)
    assert (parsed.recipient, parsed.channel) == ("functions.get_weather", "commentary")

    service.runner.script("get_time <|constrain|>json<|message|>{}<|call|>")
    events = list(
        client.responses.create(
            model="gpt-oss-test",
            input="x",
            tools=RESPONSE_TOOLS,
            tool_choice="required",
            stream=True,
        )
    )
    [item] = [e.item for e in events if e.type == "response.output_item.done"]
    assert (item.type, item.name, item.arguments) == ("function_call", "get_time", "{}")


def test_stop_strings_cut_the_content(serve):
    client, _ = serve(REASONED)
    reply = client.chat.completions.create(model="gpt-oss-test", messages=USER, stop=[" = "])
    assert reply.choices[0].message.content == "2 + 2"
    assert reply.choices[0].finish_reason == "stop"
    streamed, _ = _stream_chat(client, model="gpt-oss-test", messages=USER, stop="+ 2 =")
    assert streamed["content"] == "2 "


def test_raw_completions(serve):
    client, service = serve("Once upon a time<|endoftext|>")
    reply = client.completions.create(
        model="gpt-oss-test", prompt="Tell me <|start|>", max_tokens=4
    )
    assert reply.choices[0].text == "Once upon a time"
    assert reply.choices[0].finish_reason == "length"
    # markup typed in the prompt stays text
    assert service.runner.prompts[-1] == service.tokenizer.encode("Tell me <|start|>")
    streamed = client.completions.create(model="gpt-oss-test", prompt="x", stream=True)
    assert "".join(c.choices[0].text for c in streamed) == "Once upon a time"


def test_models_and_health(serve):
    client, _ = serve(REASONED)
    assert [m.id for m in client.models.list()] == ["gpt-oss-test"]
    health = httpx.get(str(client.base_url).removesuffix("/v1/") + "/health").json()
    assert health["status"] == "ok" and health["queue"]["running"] == 0
