"""The tool types and Responses fields agents send, checked with the official `openai` client.

A real server on 127.0.0.1 with a scripted model: namespace tools rendered as openai-harmony
renders them and their calls returned with the namespace apart; custom (free-text) tools on both
APIs; hosted tools left out of the prompt with one warning; the reasoning as a summary when one
is asked for (streamed as summary events); `include`, `parallel_tool_calls`, the echoed fields and
`truncation: "auto"`.
"""

from __future__ import annotations

import datetime
import json
import logging

import openai
import openai_harmony as oh
import pytest

from gptoss_lite.chat.harmony import Conversation, Message, ToolDef, render_prompt

pytest_plugins = ["server_fixtures"]

THOUGHT = "Spawn a helper."
SPAWN_ARGS = '{"message": "look around"}'
SPAWN = (
    f"<|channel|>analysis<|message|>{THOUGHT}<|end|>"
    "<|start|>assistant<|channel|>commentary to=multi_agent_v1.spawn_agent <|constrain|>json"
    f"<|message|>{SPAWN_ARGS}<|call|>"
)
PATCH = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch\n"
CUSTOM_CALL = (  # the model gives the declared string as JSON
    "<|channel|>commentary to=functions.apply_patch <|constrain|>json"
    f"<|message|>{json.dumps(PATCH)}<|call|>"
)
ANSWERED = (
    f"<|channel|>analysis<|message|>{THOUGHT}<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Done.<|return|>"
)
EXEC = {
    "type": "function",
    "name": "exec_command",
    "description": "Runs a command.",
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
}
SPAWN_TOOL = {
    "type": "function",
    "name": "spawn_agent",
    "description": "Spawn a sub-agent.",
    "parameters": {"type": "object", "properties": {"message": {"type": "string"}}},
}
NAMESPACE = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Tools for spawning and managing sub-agents.",
    "tools": [SPAWN_TOOL],
}
GRAMMAR = 'start: "*** Begin Patch" LF hunk+ "*** End Patch" LF?\n%import common.LF\n'
APPLY_PATCH = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files.",
    "format": {"type": "grammar", "syntax": "lark", "definition": GRAMMAR},
}
HOSTED = [{"type": "web_search", "external_web_access": False}, {"type": "file_search"}]


def _described(tool: dict) -> oh.ToolDescription:
    return oh.ToolDescription.new(tool["name"], tool["description"], tool.get("parameters"))


def _oracle(developer: oh.DeveloperContent, messages: list[oh.Message], harmony) -> list[int]:
    system = oh.SystemContent.new().with_conversation_start_date(datetime.date.today().isoformat())
    conversation = oh.Conversation.from_messages(
        [
            oh.Message.from_role_and_content(oh.Role.SYSTEM, system),
            oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer),
            *messages,
        ]
    )
    return harmony.render_conversation_for_completion(conversation, oh.Role.ASSISTANT)


def test_a_namespace_is_rendered_and_its_call_comes_back_with_the_namespace(
    serve, harmony_oracle, caplog
):
    client, service = serve(SPAWN)
    with caplog.at_level(logging.WARNING, logger="gptoss_lite.server"):
        response = client.responses.create(
            model="gpt-oss-test", input="hi", tools=[EXEC, NAMESPACE, *HOSTED]
        )
    namespace = oh.ToolNamespaceConfig(
        name="multi_agent_v1", description=NAMESPACE["description"], tools=[_described(SPAWN_TOOL)]
    )
    developer = oh.DeveloperContent.new().with_function_tools([_described(EXEC)])
    developer = developer.with_tools(namespace)
    user = oh.Message.from_role_and_content(oh.Role.USER, "hi")
    assert service.runner.prompts[-1] == _oracle(developer, [user], harmony_oracle)
    [reasoning, call] = response.output
    assert (reasoning.type, call.type) == ("reasoning", "function_call")
    assert (call.namespace, call.name, call.arguments) == (
        "multi_agent_v1",
        "spawn_agent",
        SPAWN_ARGS,
    )
    # the hosted tools are left out, named in one warning, and echoed as sent
    [warning] = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert "web_search (tools.2)" in warning and "file_search (tools.3)" in warning
    assert [t.type for t in response.tools] == [
        "function",
        "namespace",
        "web_search",
        "file_search",
    ]

    # the call sent back with its output is rendered in the namespace
    client.responses.create(
        model="gpt-oss-test",
        tools=[EXEC, NAMESPACE],
        input=[
            {"role": "user", "content": "hi"},
            {"type": "function_call", "call_id": "c1", "name": "spawn_agent",
             "namespace": "multi_agent_v1", "arguments": SPAWN_ARGS},
            {"type": "function_call_output", "call_id": "c1", "output": "agent a1"},
        ],
    )  # fmt: skip
    tool = oh.Author(role=oh.Role.TOOL, name="multi_agent_v1.spawn_agent")
    messages = [
        user,
        oh.Message.from_role_and_content(oh.Role.ASSISTANT, SPAWN_ARGS)
        .with_channel("commentary")
        .with_recipient("multi_agent_v1.spawn_agent")
        .with_content_type("<|constrain|>json"),
        oh.Message.from_author_and_content(tool, "agent a1")
        .with_channel("commentary")
        .with_recipient("assistant"),
    ]
    assert service.runner.prompts[-1] == _oracle(developer, messages, harmony_oracle)


def test_a_namespaced_call_streams_like_a_function_call(serve):
    client, _ = serve(SPAWN)
    events = list(
        client.responses.create(model="gpt-oss-test", input="hi", tools=[NAMESPACE], stream=True)
    )
    done = [e for e in events if e.type == "response.output_item.done"]
    assert done[-1].item.namespace == "multi_agent_v1" and done[-1].item.name == "spawn_agent"
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert deltas == SPAWN_ARGS
    assert events[-1].response.output[-1].namespace == "multi_agent_v1"


def test_a_custom_tool_is_a_string_function_and_its_call_a_custom_tool_call(serve):
    client, service = serve(CUSTOM_CALL)
    response = client.responses.create(model="gpt-oss-test", input="hi", tools=[APPLY_PATCH])
    described = ToolDef(
        "apply_patch",
        f"Edit files.\n\nThe string follows this lark grammar:\n{GRAMMAR}",
        {"type": "string"},
    )
    today = datetime.date.today().isoformat()
    asked = Conversation([Message.user("hi")], tools=[described], date=today)
    assert service.runner.prompts[-1] == render_prompt(asked, service.tokenizer)
    [call] = response.output
    assert (call.type, call.name, call.input) == ("custom_tool_call", "apply_patch", PATCH)

    events = list(
        client.responses.create(model="gpt-oss-test", input="hi", tools=[APPLY_PATCH], stream=True)
    )
    [done] = [e for e in events if e.type == "response.custom_tool_call_input.done"]
    deltas = [e.delta for e in events if e.type == "response.custom_tool_call_input.delta"]
    assert done.input == "".join(deltas) == PATCH

    # sent back: the call as the string the model gives, then its output
    client.responses.create(
        model="gpt-oss-test",
        tools=[APPLY_PATCH],
        input=[
            {"role": "user", "content": "hi"},
            {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": PATCH},
            {"type": "custom_tool_call_output", "call_id": "c1", "output": "Done!"},
        ],
    )
    chain = [
        Message.user("hi"),
        Message.tool_call("apply_patch", json.dumps(PATCH)),
        Message.tool_result("functions.apply_patch", "Done!"),
    ]
    sent = Conversation(chain, tools=[described], date=today)
    assert service.runner.prompts[-1] == render_prompt(sent, service.tokenizer)


def test_chat_completions_take_custom_tools(serve):
    client, service = serve(CUSTOM_CALL)
    tool = {"type": "custom", "custom": {"name": "apply_patch", "description": "Edit files."}}
    reply = client.chat.completions.create(
        model="gpt-oss-test", messages=[{"role": "user", "content": "hi"}], tools=[tool]
    )
    [call] = reply.choices[0].message.tool_calls
    assert (call.type, call.custom.name, call.custom.input) == ("custom", "apply_patch", PATCH)
    assert reply.choices[0].finish_reason == "tool_calls"
    chunks = list(
        client.chat.completions.create(
            model="gpt-oss-test", messages=[{"role": "user", "content": "hi"}], tools=[tool],
            stream=True,
        )
    )  # fmt: skip
    calls = [c for chunk in chunks for d in chunk.choices for c in d.delta.tool_calls or []]
    assert [(c.type, c.custom["input"]) for c in calls] == [("custom", PATCH)]

    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "custom", "custom": {
            "name": "apply_patch", "input": PATCH}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Done!"},
    ]  # fmt: skip
    client.chat.completions.create(model="gpt-oss-test", messages=history, tools=[tool])
    expected = Conversation(
        [
            Message.user("hi"),
            Message.tool_call("apply_patch", json.dumps(PATCH)),
            Message.tool_result("functions.apply_patch", "Done!"),
        ],
        tools=[ToolDef("apply_patch", "Edit files.", {"type": "string"})],
        date=datetime.date.today().isoformat(),
    )
    assert service.runner.prompts[-1] == render_prompt(expected, service.tokenizer)


@pytest.mark.parametrize("summary", ["auto", "concise", "detailed"])
def test_a_summary_asked_for_is_the_analysis(serve, summary):
    client, _ = serve(ANSWERED)
    reasoning = {"effort": "low", "summary": summary}
    response = client.responses.create(model="gpt-oss-test", input="hi", reasoning=reasoning)
    item = response.output[0]
    assert [s.text for s in item.summary] == [THOUGHT] and not item.content
    assert response.reasoning.summary == summary

    events = list(
        client.responses.create(model="gpt-oss-test", input="hi", reasoning=reasoning, stream=True)
    )
    kinds = [e.type for e in events]
    assert "response.reasoning_text.delta" not in kinds
    added = kinds.index("response.reasoning_summary_part.added")
    done = kinds.index("response.reasoning_summary_part.done")
    assert added < kinds.index("response.reasoning_summary_text.delta") < done
    text = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    [finished] = [e.text for e in events if e.type == "response.reasoning_summary_text.done"]
    assert text == finished == THOUGHT
    assert events[-1].response.output[0].summary[0].text == THOUGHT


def test_without_a_summary_the_analysis_is_reasoning_text(serve):
    client, _ = serve(ANSWERED)
    response = client.responses.create(model="gpt-oss-test", input="hi")
    item = response.output[0]
    assert item.summary == [] and [c.text for c in item.content] == [THOUGHT]
    assert item.encrypted_content is None and "encrypted_content" not in item.model_fields_set


def test_encrypted_content_comes_back_empty_and_the_round_trip_works(serve):
    client, service = serve(ANSWERED)
    include = ["reasoning.encrypted_content"]
    response = client.responses.create(
        model="gpt-oss-test", input="hi", include=include, store=False,
        reasoning={"summary": "auto"}, tools=[EXEC],
    )  # fmt: skip
    item = response.output[0]
    assert "encrypted_content" in item.model_fields_set and item.encrypted_content is None
    # as Codex does: the items sent back as they came, then a tool output
    sent = item.model_dump(exclude_none=False)
    call = {"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": "{}"}
    client.responses.create(
        model="gpt-oss-test", include=include, store=False, tools=[EXEC],
        input=[{"role": "user", "content": "hi"}, sent, call,
               {"type": "function_call_output", "call_id": "c1", "output": "ok"}],
    )  # fmt: skip
    today = datetime.date.today().isoformat()
    chain = [
        Message.user("hi"),
        Message("assistant", THOUGHT, channel="analysis"),  # from the summary
        Message.tool_call("exec_command", "{}"),
        Message.tool_result("functions.exec_command", "ok"),
    ]
    described = ToolDef(EXEC["name"], EXEC["description"], EXEC["parameters"])
    expected = Conversation(chain, tools=[described], date=today)
    assert service.runner.prompts[-1] == render_prompt(expected, service.tokenizer)


@pytest.mark.parametrize("parallel", [True, False])
def test_settings_are_echoed_as_asked(serve, parallel):
    client, _ = serve(ANSWERED)
    response = client.responses.create(
        model="gpt-oss-test", input="hi", parallel_tool_calls=parallel,
        prompt_cache_key="session-1", safety_identifier="user-1", service_tier="auto",
        store=False, truncation="disabled", metadata={"k": "v"},
        extra_body={"client_metadata": {"x": "y"}},
    )  # fmt: skip
    assert response.parallel_tool_calls is parallel
    assert (response.prompt_cache_key, response.safety_identifier) == ("session-1", "user-1")
    assert (response.service_tier, response.store, response.truncation) == (
        "auto",
        False,
        "disabled",
    )
    assert response.metadata == {"k": "v"}


def test_truncation_auto_drops_the_oldest_turns(serve):
    client, service = serve(ANSWERED, context=600)
    turns = [{"role": "user", "content": f"turn {i}: " + "word " * 40} for i in range(12)]
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="gpt-oss-test", input=turns, max_output_tokens=50)
    assert refused.value.body["param"] == "input"
    response = client.responses.create(
        model="gpt-oss-test", input=turns, max_output_tokens=50, truncation="auto"
    )
    assert response.truncation == "auto" and response.output_text == "Done."
    prompt = service.tokenizer.decode(service.runner.prompts[-1])
    assert len(service.runner.prompts[-1]) + 50 <= 600
    assert "turn 11:" in prompt and "turn 0:" not in prompt
