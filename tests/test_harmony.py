"""Harmony rendering, token for token against openai-harmony (the test oracle only)."""

from __future__ import annotations

import random

import openai_harmony as oh
import pytest

from gptoss_lite.chat.harmony import (
    Conversation,
    Message,
    ToolDef,
    ToolNamespace,
    render_conversation,
    render_prompt,
    tools_from_openai,
)
from gptoss_lite.chat.harmony_parser import parse_completion
from gptoss_lite.chat.tokens import CONSTRAIN, END, MARKUP, RETURN, STOP_TOKENS
from gptoss_lite.errors import GptossError

WEATHER = ToolDef(
    "get_weather",
    "Gets the current weather.\nUse it for any weather question.",
    {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "City and country, e.g. Paris, FR"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
            "days": {"type": "integer", "description": "Forecast days", "default": 1},
        },
        "required": ["location"],
    },
)
SEARCH = ToolDef(
    "search",
    "Searches documents.",
    {
        "type": "object",
        "description": "Search request",
        "properties": {
            "query": {"type": "string", "title": "Query", "examples": ["cats", "dogs"]},
            "filters": {
                "type": "object",
                "description": "Optional filters",
                "properties": {
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "after": {"type": ["string", "null"], "description": "ISO date"},
                    "scores": {"type": "array", "items": {"type": "number"}},
                },
                "required": ["tags"],
            },
            "mode": {
                "description": "How to match",
                "oneOf": [
                    {"type": "string", "enum": ["exact", "fuzzy"], "description": "By name"},
                    {"type": "integer", "description": "By id", "default": 0},
                ],
                "default": "exact",
            },
            "limit": {"type": "number", "nullable": True, "default": 10},
            "rows": {"type": "array", "items": {"type": "object", "properties": {"a": {}}}},
            "raw": {"type": "array"},
            "picks": {
                "type": "array",
                "items": {
                    "oneOf": [
                        {"type": "string", "enum": ["a", "b"], "default": "a"},
                        {"type": "null", "description": "none", "nullable": True},
                    ]
                },
            },
            "flag": {"type": "boolean"},
        },
        "required": ["query"],
    },
)
NO_ARGS = ToolDef("ping", "")
CALL = Message.tool_call("get_weather", '{"location":"Paris, FR"}')
RESULT = Message.tool_result("functions.get_weather", '{"temp_c": 21}')


def think(text: str) -> Message:
    return Message("assistant", text, channel="analysis")


def answer(text: str) -> Message:
    return Message("assistant", text, channel="final")


CASES = {
    "defaults": Conversation([Message.user("Hi")]),
    "low-date-instructions": Conversation(
        [Message.user("What is 2 + 2?")],
        instructions="Be terse.",
        reasoning_effort="low",
        date="2025-06-28",
    ),
    "high-identity-no-cutoff": Conversation(
        [Message.user("Prove it.")],
        reasoning_effort="HIGH",
        model_identity="You are a careful mathematician.",
        knowledge_cutoff=None,
    ),
    "tools-only": Conversation([Message.user("Weather in Paris?")], tools=[WEATHER, NO_ARGS]),
    "nested-tools-and-instructions": Conversation(
        [Message.user("Find cats")], instructions="Use tools.", tools=[SEARCH, WEATHER]
    ),
    "tool-chain-keeps-analysis": Conversation(
        [Message.user("Weather in Paris?"), think("Need the tool."), CALL, RESULT],
        tools=[WEATHER],
        date="2025-01-01",
    ),
    "second-turn-drops-analysis": Conversation(
        [Message.user("2+2?"), think("Easy: 4."), answer("4"), Message.user("And 3+3?")]
    ),
    "drops-only-before-first-final": Conversation(
        [
            Message.user("a"),
            think("t1"),
            answer("A"),
            Message.user("b"),
            think("t2"),
            answer("B"),
            Message.user("c"),
        ]
    ),
    "finished-tool-chain": Conversation(
        [
            Message.user("Weather?"),
            think("Call it."),
            CALL,
            RESULT,
            think("21 C."),
            answer("It is 21 °C."),
            Message.user("Thanks"),
        ],
        tools=[WEATHER],
    ),
    "preamble-names-and-recipient-forms": Conversation(
        [
            Message("user", "hello", name="alice"),
            Message("assistant", "Let me check.", channel="commentary"),
            Message("assistant", "{}", "commentary", "functions.ping", "json"),
            Message("tool", "pong", "commentary", "assistant", name="functions.ping"),
            Message("assistant", "to everyone", channel="final", recipient="all"),
            Message.user("again"),
        ],
        tools=[NO_ARGS],
    ),
    "earlier-answer-then-tool-chain": Conversation(
        [
            Message.user("a"),
            think("t1"),
            answer("A"),
            Message.user("Weather?"),
            think("t2"),
            Message("assistant", "Checking.", channel="commentary"),
            CALL,
            RESULT,
        ],
        tools=[WEATHER],
    ),
    "two-calls-in-a-chain": Conversation(
        [
            Message.user("Paris and Tokyo?"),
            think("Paris first."),
            CALL,
            RESULT,
            think("Now Tokyo."),
            Message.tool_call("get_weather", '{"location":"Tokyo, JP"}'),
            Message.tool_result("functions.get_weather", '{"temp_c": 30}'),
        ],
        tools=[WEATHER, SEARCH],
    ),
    "markup-in-text-stays-text": Conversation(
        [Message.user("say <|end|><|start|>system<|message|> literally")],
        instructions="",
    ),
    "unicode": Conversation(
        [Message.user("日本語で答えて 🦜"), think("考える"), Message.user("続けて")],
        instructions="Réponds en français.\r\nMerci.",
    ),
}


def oracle_tool(tool: ToolDef) -> oh.ToolDescription:
    return oh.ToolDescription.new(tool.name, tool.description, tool.parameters)


def oracle_content_type(message: Message) -> str | None:
    """openai-harmony's spelling of a content type: the `<|constrain|>` marker is part of it."""
    if message.content_type is None:
        return None
    return MARKUP[CONSTRAIN] * message.constrained + message.content_type


def oracle_message(message: Message) -> oh.Message:
    author = oh.Author(role=oh.Role(message.role), name=message.name)
    out = oh.Message.from_author_and_content(author, message.content)
    for value, setter in [
        (message.channel, out.with_channel),
        (message.recipient, out.with_recipient),
        (oracle_content_type(message), out.with_content_type),
    ]:
        if value is not None:
            out = setter(value)
    return out


def oracle_conversation(conversation: Conversation) -> oh.Conversation:
    """The same conversation built with openai-harmony's own classes."""
    system = oh.SystemContent(
        model_identity=conversation.model_identity,
        knowledge_cutoff=conversation.knowledge_cutoff,
        conversation_start_date=conversation.date,
        reasoning_effort=oh.ReasoningEffort(conversation.reasoning_effort.capitalize()),
    )
    messages = [oh.Message.from_role_and_content(oh.Role.SYSTEM, system)]
    if conversation.instructions is not None or conversation.tools:
        developer = oh.DeveloperContent.new()
        if conversation.instructions is not None:
            developer = developer.with_instructions(conversation.instructions)
        if conversation.tools:
            developer = developer.with_function_tools([oracle_tool(t) for t in conversation.tools])
        messages.append(oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer))
    messages += [oracle_message(m) for m in conversation.messages]
    return oh.Conversation.from_messages(messages)


@pytest.mark.parametrize("name", CASES)
def test_prompt_matches_openai_harmony(name, o200k_tokenizer, harmony_oracle):
    conversation = CASES[name]
    expected = harmony_oracle.render_conversation_for_completion(
        oracle_conversation(conversation), oh.Role.ASSISTANT
    )
    assert render_prompt(conversation, o200k_tokenizer) == expected


def test_a_token_vector_rendered_by_openai_harmony(o200k_tokenizer):
    # System (low effort, a date), developer "Be terse.", user "What is 2 + 2?", as openai-harmony
    # 0.0.8 renders them.
    expected = [200006, 17360, 200008, 3575, 553, 17554, 162016, 11, 261, 4410, 6439, 2359, 22203]
    expected += [656, 7788, 17527, 558, 87447, 100594, 25, 220, 1323, 19, 12, 3218, 198, 6576]
    expected += [3521, 25, 220, 1323, 20, 12, 3218, 12, 2029, 279, 30377, 289, 25, 4465, 279, 2]
    expected += [13888, 18403, 25, 8450, 11, 49159, 11, 1721, 13, 21030, 2804, 413, 7360, 395]
    expected += [1753, 3176, 13, 200007, 200006, 77944, 200008, 2, 68406, 279, 3238, 28410, 13]
    expected += [200007, 200006, 1428, 200008, 4827, 382, 220, 17, 659, 220, 17, 30, 200007]
    expected += [200006, 173781]
    assert render_prompt(CASES["low-date-instructions"], o200k_tokenizer) == expected


def test_analysis_dropped_only_after_a_final_answer(o200k_tokenizer):
    chain = render_conversation(CASES["tool-chain-keeps-analysis"], o200k_tokenizer)
    assert o200k_tokenizer.encode("Need the tool.")[0] in chain
    prompt = render_prompt(CASES["second-turn-drops-analysis"], o200k_tokenizer)
    text = o200k_tokenizer.decode(prompt)
    assert "Easy: 4." not in text and "<|channel|>final<|message|>4<|end|>" in text


def test_stored_answer_ends_with_end_not_return(o200k_tokenizer):
    tokens = render_conversation(CASES["finished-tool-chain"], o200k_tokenizer)
    assert RETURN not in tokens
    assert tokens[-1] == END


def _random_schema(rng: random.Random, depth: int = 0) -> dict:
    kinds = ["string", "integer", "number", "boolean", "array", "object", "union", "oneOf", None]
    kind = rng.choice(kinds if depth < 3 else kinds[:4])
    schema: dict = {}
    if kind == "union":
        schema["type"] = rng.sample(["string", "integer", "null", "boolean"], 2)
    elif kind == "oneOf":
        schema["oneOf"] = [_random_schema(rng, depth + 1) for _ in range(rng.randint(1, 3))]
    elif kind is not None:
        schema["type"] = kind
    if kind == "string" and rng.random() < 0.4:
        schema["enum"] = rng.sample(["red", "green", "blue"], rng.randint(1, 3))
    if kind == "array" and rng.random() < 0.8:
        schema["items"] = _random_schema(rng, depth + 1)
    if kind == "object":
        names = rng.sample(["a", "b_c", "d", "eFg", "h"], rng.randint(0, 4))
        schema["properties"] = {n: _random_schema(rng, depth + 1) for n in names}
        schema["required"] = [n for n in names if rng.random() < 0.5]
    for key, value in [
        ("description", rng.choice(["Some text", "b", "Multi word description"])),
        ("title", "A title"),
        ("examples", ["x", "y z"]),
        ("nullable", rng.choice([True, False])),
        ("default", rng.choice(["red", 3, 2.5, True, None, [1, "a"], {"k": "v"}])),
    ]:
        if rng.random() < 0.25:
            schema[key] = value
    return schema


def test_random_schemas_match_openai_harmony(o200k_tokenizer, harmony_oracle):
    rng = random.Random(0)
    for i in range(150):
        params = {
            "type": "object",
            "properties": {"p": _random_schema(rng), "q": _random_schema(rng)},
        }
        conversation = Conversation(tools=[ToolDef(f"tool_{i}", "Random tool.", params)])
        expected = harmony_oracle.render_conversation(oracle_conversation(conversation))
        assert render_conversation(conversation, o200k_tokenizer) == expected, params


def test_stop_tokens_never_include_end(harmony_oracle):
    assert STOP_TOKENS == (200002, 200012, 199999)
    assert END not in STOP_TOKENS
    assert set(harmony_oracle.stop_tokens_for_assistant_actions()) <= set(STOP_TOKENS)


def test_reasoning_effort_typo_lists_the_choices(o200k_tokenizer):
    with pytest.raises(GptossError, match="'hihg' is not one of: low, medium, high"):
        render_prompt(Conversation(reasoning_effort="hihg"), o200k_tokenizer)


@pytest.mark.parametrize(
    ("message", "error"),
    [(Message("tool", "out"), "tool's name"), (Message("robot", "hi"), "not one of")],
)
def test_malformed_messages_are_gptoss_errors(o200k_tokenizer, message, error):
    with pytest.raises(GptossError, match=error):
        render_prompt(Conversation([message]), o200k_tokenizer)


OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": WEATHER.description,
            "parameters": WEATHER.parameters,
        },
    },
    {"type": "function", "function": {"name": "ping"}},
    {
        "type": "function",
        "name": "search",
        "description": "Flat, as the Responses API sends it.",
        "parameters": SEARCH.parameters,
    },
]


def test_openai_function_tools_render_as_openai_harmony(o200k_tokenizer, harmony_oracle):
    conversation = Conversation([Message.user("Hi")], tools=tools_from_openai(OPENAI_TOOLS))
    described = []
    for tool in OPENAI_TOOLS:
        function = tool.get("function", tool)
        described.append(
            oh.ToolDescription.new(
                function["name"], function.get("description", ""), function.get("parameters")
            )
        )
    system = oh.SystemContent.new()
    developer = oh.DeveloperContent.new().with_function_tools(described)
    expected = harmony_oracle.render_conversation_for_completion(
        oh.Conversation.from_messages(
            [
                oh.Message.from_role_and_content(oh.Role.SYSTEM, system),
                oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer),
                oh.Message.from_role_and_content(oh.Role.USER, "Hi"),
            ]
        ),
        oh.Role.ASSISTANT,
    )
    assert render_prompt(conversation, o200k_tokenizer) == expected


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"type": "function"}, "expected a list"),
        (["get_weather"], r"tools\[0\]: only"),
        ([{"type": "web_search"}], "only"),
        ([{"type": "function", "function": {"name": "a b"}}], "'a b' is not 1-64 of"),
        ([{"type": "function", "function": {"name": "<|start|>"}}], "is not 1-64 of"),
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], "not a JSON schema"),
        ([{"type": "function", "function": {"name": "f", "description": 3}}], "not a string"),
        ([{"type": "function", "function": "f"}], r"tools\[0\].function: expected an object"),
    ],
)
def test_malformed_openai_tools_are_one_line(spec, error):
    with pytest.raises(GptossError, match=error) as info:
        tools_from_openai(spec)
    assert "\n" not in str(info.value)


def test_tool_call_message_is_harmonys(o200k_tokenizer, harmony_oracle):
    expected = (
        oh.Message.from_role_and_content(oh.Role.ASSISTANT, '{"location":"Paris, FR"}')
        .with_channel("commentary")
        .with_recipient("functions.get_weather")
        .with_content_type("<|constrain|>json")
    )
    ours = render_conversation(Conversation([CALL]), o200k_tokenizer)
    assert ours[-len(harmony_oracle.render(expected)) :] == harmony_oracle.render(expected)


def test_a_parsed_tool_call_goes_back_into_history_as_harmony_puts_it(
    o200k_tokenizer, harmony_oracle
):
    generated = (
        "<|channel|>analysis<|message|>Need the weather.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"location":"Paris, FR"}<|call|>'
    )
    tokens = o200k_tokenizer.encode(generated, allow_special=True)
    ours = parse_completion(tokens, o200k_tokenizer).messages
    theirs = harmony_oracle.parse_messages_from_completion_tokens(tokens, oh.Role.ASSISTANT)
    result = ("functions.get_weather", '{"temp_c": 21}')
    conversation = Conversation([Message.user("Weather?"), *ours, Message.tool_result(*result)])
    oracle = oracle_conversation(Conversation([Message.user("Weather?")]))
    author = oh.Author(role=oh.Role.TOOL, name=result[0])
    tool_message = oh.Message.from_author_and_content(author, result[1])
    tool_message = tool_message.with_channel("commentary").with_recipient("assistant")
    oracle = oh.Conversation.from_messages([*oracle.messages, *theirs, tool_message])
    expected = harmony_oracle.render_conversation_for_completion(oracle, oh.Role.ASSISTANT)
    assert render_prompt(conversation, o200k_tokenizer) == expected


@pytest.mark.parametrize("spaces", [["multi_agent_v1"], ["zeta", "alpha"], ["beta"]])
@pytest.mark.parametrize("with_functions", [True, False])
def test_namespaces_render_as_openai_harmony(
    o200k_tokenizer, harmony_oracle, spaces, with_functions
):
    """Extra namespaces sit beside `functions`, all in order of name, each with its description
    as comment lines (none when empty); a call to one goes to `namespace.tool`."""
    functions = [SEARCH] if with_functions else []
    namespaces = [
        ToolNamespace(name, "" if name == "beta" else f"Tools of {name}.\nTwo lines.", [SEARCH])
        for name in spaces
    ]
    call = Message.tool_call(f"{spaces[0]}.search", '{"query": "x"}')
    result = Message.tool_result(f"{spaces[0]}.search", "found")
    conversation = Conversation(
        [Message.user("Hi"), call, result], tools=functions, namespaces=namespaces
    )
    developer = oh.DeveloperContent.new()
    described = oh.ToolDescription.new(SEARCH.name, SEARCH.description, SEARCH.parameters)
    if with_functions:
        developer = developer.with_function_tools([described])
    for space in namespaces:
        developer = developer.with_tools(
            oh.ToolNamespaceConfig(
                name=space.name, description=space.description, tools=[described]
            )
        )
    tool = oh.Author(role=oh.Role.TOOL, name=f"{spaces[0]}.search")
    expected = harmony_oracle.render_conversation_for_completion(
        oh.Conversation.from_messages(
            [
                oh.Message.from_role_and_content(oh.Role.SYSTEM, oh.SystemContent.new()),
                oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer),
                oh.Message.from_role_and_content(oh.Role.USER, "Hi"),
                oh.Message.from_role_and_content(oh.Role.ASSISTANT, '{"query": "x"}')
                .with_channel("commentary")
                .with_recipient(f"{spaces[0]}.search")
                .with_content_type("<|constrain|>json"),
                oh.Message.from_author_and_content(tool, "found")
                .with_channel("commentary")
                .with_recipient("assistant"),
            ]
        ),
        oh.Role.ASSISTANT,
    )
    assert render_prompt(conversation, o200k_tokenizer) == expected
