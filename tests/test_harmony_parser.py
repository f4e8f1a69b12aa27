"""Streaming harmony parser: same messages and deltas as openai-harmony on well-formed output,
and no exception and no markup on malformed output, neither in the parser nor in the reply read
from it (`chat.reply`, whose own rules are tested in test_reply.py)."""

from __future__ import annotations

import random

import openai_harmony as oh
import pytest
from test_harmony import oracle_content_type, oracle_message

from gptoss_lite.chat.harmony import Conversation, Message, render_conversation
from gptoss_lite.chat.harmony_parser import StreamParser, parse_completion
from gptoss_lite.chat.reply import Reply, read_reply
from gptoss_lite.chat.tokens import CALL, END, ENDOFTEXT, N_VOCAB, RETURN
from gptoss_lite.cli.display import show_reply

WEATHER_CALL = Message.tool_call("get_weather", '{"location": "東京"}')
WELL_FORMED = {
    "analysis-final": (
        [Message("assistant", "2+2 is 4.", "analysis"), Message("assistant", "**4**", "final")],
        RETURN,
    ),
    "tool-call": ([Message("assistant", "Need weather.", "analysis"), WEATHER_CALL], CALL),
    "recipient-before-channel": (
        [Message("assistant", "{}", "commentary", "functions.ping", "json")],
        CALL,
    ),
    "preamble-then-call": (
        [
            Message("assistant", "Checking the weather now…", "commentary"),
            Message("assistant", "Think.", "analysis"),
            WEATHER_CALL,
        ],
        CALL,
    ),
    "unicode-split-characters": (
        [
            Message("assistant", "考える🦜🪿 naïve", "analysis"),
            Message("assistant", "答え：🇯🇵 ❤️‍🔥", "final"),
        ],
        RETURN,
    ),
    "truncated-mid-answer": (
        [Message("assistant", "Hmm.", "analysis"), Message("assistant", "The answer is", "final")],
        None,
    ),
}


def completion_tokens(oracle, messages: list[Message], stop: int | None) -> list[int]:
    """What the model generates after the prompt's `<|start|>assistant`."""
    tokens = [t for m in messages for t in oracle.render(oracle_message(m))][2:]
    if stop is None:
        return tokens[:-1]  # cut off before the last message's end token
    return [*tokens[:-1], stop]


def fields(message) -> tuple:
    """(role, name, channel, recipient, content_type, text) of ours or openai-harmony's."""
    if isinstance(message, Message):
        return (
            message.role,
            message.name,
            message.channel,
            message.recipient,
            oracle_content_type(message),
            message.content,
        )
    text = "".join(c.text for c in message.content)
    return (
        message.author.role.value,
        message.author.name,
        message.channel,
        message.recipient,
        message.content_type,
        text,
    )


def visible(tokens: list[int], tokenizer) -> list[tuple[str | None, str]]:
    """(channel, text) of each parsed message, after checking no markup was shown."""
    parser = StreamParser(tokenizer)
    events = [e for t in tokens for e in parser.feed(t)] + parser.finish()
    assert not any("<|" in e.text for e in events)
    messages = parser.completion.messages
    assert "".join(e.text for e in events) == "".join(m.content for m in messages)
    return [(m.channel, m.content) for m in messages]


def check_whole(messages: list[Message], stop: int | None, tokenizer, oracle) -> None:
    """Parsing the completion at once gives openai-harmony's messages and the ones rendered."""
    tokens = completion_tokens(oracle, messages, stop)
    expected = oracle.parse_messages_from_completion_tokens(tokens, oh.Role.ASSISTANT)
    parsed = parse_completion(tokens, tokenizer)
    assert [fields(m) for m in parsed.messages] == [fields(m) for m in expected]
    assert [fields(m) for m in parsed.messages] == [fields(m) for m in messages]
    assert parsed.stop_token == stop


def check_stream(messages: list[Message], stop: int | None, tokenizer, harmony) -> None:
    """Token by token, the deltas and the live message equal openai-harmony's StreamableParser."""
    oracle = oh.StreamableParser(harmony, oh.Role.ASSISTANT)
    parser = StreamParser(tokenizer)
    for token in completion_tokens(harmony, messages, stop):
        oracle.process(token)
        delta = "".join(e.text for e in parser.feed(token) if e.kind == "text")
        assert delta == (oracle.last_content_delta or "")
        assert "\ufffd" not in delta
        current = parser.current
        if oracle.state == oh.StreamState.CONTENT:
            ours = (current.role, current.channel, current.recipient, oracle_content_type(current))
            assert ours == (
                oracle.current_role.value,
                oracle.current_channel,
                oracle.current_recipient,
                oracle.current_content_type,
            )
            assert current.content == oracle.current_content
        else:
            assert current is None


@pytest.mark.parametrize("name", WELL_FORMED)
def test_messages_match_openai_harmony(name, o200k_tokenizer, harmony_oracle):
    check_whole(*WELL_FORMED[name], o200k_tokenizer, harmony_oracle)


@pytest.mark.parametrize("name", WELL_FORMED)
def test_stream_matches_openai_harmony_token_by_token(name, o200k_tokenizer, harmony_oracle):
    check_stream(*WELL_FORMED[name], o200k_tokenizer, harmony_oracle)


WORDS = [
    "Hello",
    " world",
    " 42",
    " é",
    " 日本",
    "🦜",
    " json",
    " to",
    "=",
    " <",
    " {",
    '"a"',
    "\n",
]


def random_completion(rng: random.Random) -> tuple[list[Message], int | None]:
    """A well-formed reply: reasoning, preambles and answers, maybe ending in a tool call."""
    messages = []
    for _ in range(rng.randint(1, 4)):
        text = "".join(rng.choices(WORDS, k=rng.randint(1, 12))).strip() or "x"
        messages.append(Message("assistant", text, rng.choice(["analysis", "commentary", "final"])))
    if rng.random() < 0.5:
        name = rng.choice(["get_weather", "f", "lookup-2"])
        plain = Message("assistant", "{}", "commentary", f"functions.{name}", "json")
        messages.append(Message.tool_call(name, '{"q": "東京"}') if rng.random() < 0.7 else plain)
        return messages, CALL
    return messages, rng.choice([RETURN, None])


def test_random_well_formed_replies_match_openai_harmony(o200k_tokenizer, harmony_oracle):
    rng = random.Random(1)
    for _ in range(60):
        messages, stop = random_completion(rng)
        check_whole(messages, stop, o200k_tokenizer, harmony_oracle)
        check_stream(messages, stop, o200k_tokenizer, harmony_oracle)


def test_split_characters_stream_without_replacement(o200k_tokenizer, harmony_oracle):
    messages, stop = WELL_FORMED["unicode-split-characters"]
    parser = StreamParser(o200k_tokenizer)
    silent = [t for t in completion_tokens(harmony_oracle, messages, stop) if not parser.feed(t)]
    assert silent, "no token held back a partial character"


def test_events_and_the_reply_read_from_them(o200k_tokenizer, harmony_oracle):
    messages, stop = WELL_FORMED["preamble-then-call"]
    tokens = completion_tokens(harmony_oracle, messages, stop)
    parser = StreamParser(o200k_tokenizer)
    events = [e for t in tokens for e in parser.feed(t)]
    kinds = [e.kind for e in events if e.kind != "text"]
    assert kinds == ["start", "end"] * 3
    shown = {}
    for event in events:
        shown[event.channel] = shown.get(event.channel, "") + event.text
    assert shown == {"commentary": messages[0].content + messages[2].content, "analysis": "Think."}
    assert parser.completion.stop_token == CALL
    reply = read_reply(tokens, o200k_tokenizer, tools=["get_weather"])
    assert reply.called_tool and reply.finish_reason("stop") == "tool_calls"
    (call,) = reply.tool_calls
    assert (call.name, call.text, call.content_type) == (
        "get_weather",
        '{"location": "東京"}',
        "json",
    )
    assert reply.text("reasoning") == "Think." and reply.text("text") == messages[0].content


def test_parsed_turn_goes_back_into_history(o200k_tokenizer, harmony_oracle):
    messages, stop = WELL_FORMED["analysis-final"]
    tokens = completion_tokens(harmony_oracle, messages, stop)
    result = parse_completion(tokens, o200k_tokenizer)
    reply = read_reply(tokens, o200k_tokenizer)
    assert result.stop_token == RETURN and result.messages == reply.messages
    assert reply.text("text") == "**4**" and reply.text("reasoning") == "2+2 is 4."
    conversation = Conversation([Message.user("2+2?"), *result.messages])
    tokens = render_conversation(conversation, o200k_tokenizer)
    assert tokens[-1] == END and RETURN not in tokens
    assert o200k_tokenizer.decode(tokens).endswith(
        "<|start|>assistant<|channel|>final<|message|>**4**<|end|>"
    )


HEADER_FORMS = {
    "role repeated": ("assistant", "assistant<|channel|>final<|message|>x<|return|>"),
    "recipient only": ("assistant", "<|channel|>commentary to=functions.f<|message|>{}<|call|>"),
    "tool speaks": (
        "assistant",
        "<|channel|>analysis<|message|>a<|end|>"
        "<|start|>functions.f to=assistant<|channel|>commentary<|message|>r<|end|>",
    ),
    "roles in the tokens": (
        None,
        "<|start|>user<|message|>hi<|end|><|start|>assistant<|channel|>final<|message|>x<|end|>",
    ),
}


@pytest.mark.parametrize("name", HEADER_FORMS)
def test_header_forms_match_openai_harmony(name, o200k_tokenizer, harmony_oracle):
    role, text = HEADER_FORMS[name]
    tokens = o200k_tokenizer.encode(text, allow_special=True)
    expected = harmony_oracle.parse_messages_from_completion_tokens(tokens, role and oh.Role(role))
    parsed = parse_completion(tokens, o200k_tokenizer, role).messages
    assert [fields(m) for m in parsed] == [fields(m) for m in expected]


def test_lone_constrained_type_is_a_content_type(o200k_tokenizer, harmony_oracle):
    """openai-harmony 0.0.8 reads a lone `<|constrain|>json` as a recipient, which turns a
    structured answer into a tool call; its later encoding.rs reads a content type, as we do."""
    text = "<|channel|>final <|constrain|>json<|message|>{}<|end|>"
    tokens = o200k_tokenizer.encode(text, allow_special=True)
    (oracle,) = harmony_oracle.parse_messages_from_completion_tokens(tokens, oh.Role.ASSISTANT)
    assert (oracle.recipient, oracle.content_type) == ("<|constrain|>json", None)
    result = parse_completion(tokens, o200k_tokenizer)
    assert fields(result.messages[0]) == (
        "assistant",
        None,
        "final",
        None,
        "<|constrain|>json",
        "{}",
    )
    reply = read_reply(tokens, o200k_tokenizer, tools=["json"])
    assert reply.text("text") == "{}" and reply.tool_calls == []


MALFORMED = {
    "bare text": ("Hello there", [(None, "Hello there")]),
    "no header": ("<|message|>just text<|end|>", [(None, "just text")]),
    "empty channel": ("<|channel|><|message|>x<|return|>", [(None, "x")]),
    "text after stop": ("<|channel|>final<|message|>A<|return|>B", [("final", "A"), (None, "B")]),
    "eos mid-header": (
        "<|channel|>analysis<|message|>t<|end|><|start|>assistant<|channel|>fin",
        [("analysis", "t"), ("fin", "")],
    ),
    "unknown specials": (
        "<|channel|>final<|message|>A<|reserved_200100|>B<|startoftext|>C<|endofprompt|>D",
        [("final", "ABCD")],
    ),
    "start inside body": (
        "<|channel|>final<|message|>a<|start|>assistant<|channel|>final<|message|>b",
        [("final", "a"), ("final", "b")],
    ),
    "channel inside body": (
        "<|channel|>analysis<|message|>t<|channel|>final<|message|>b",
        [("analysis", "t"), ("final", "b")],
    ),
    "stray header words": ("<|channel|>final Sure junk json<|message|>x", [("final", "Sure x")]),
    "constrain in lost header": (
        "<|channel|>final <|constrain|>json oops<|end|>",
        [("final", "json oops")],
    ),
    "endoftext in body": ("<|channel|>final<|message|>A<|endoftext|>", [("final", "A")]),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_output_degrades_to_text(name, o200k_tokenizer):
    text, expected = MALFORMED[name]
    tokens = o200k_tokenizer.encode(text, allow_special=True)
    assert visible([*tokens, N_VOCAB + 5, -1], o200k_tokenizer) == expected


def test_stop_tokens_are_reported(o200k_tokenizer):
    encode = o200k_tokenizer.encode
    cases = {
        "A<|return|>": RETURN,
        "A<|call|>": CALL,
        "A<|endoftext|>": ENDOFTEXT,
        "A<|end|>": None,
    }
    for tail, stop in cases.items():
        tokens = encode(f"<|channel|>final<|message|>{tail}", allow_special=True)
        assert parse_completion(tokens, o200k_tokenizer).stop_token == stop


def test_stop_inside_header_matches_lenient_openai_harmony(o200k_tokenizer, harmony_oracle):
    tokens = o200k_tokenizer.encode("<|channel|>final Answer<|return|>", allow_special=True)
    expected = harmony_oracle.parse_messages_from_completion_tokens(
        tokens, oh.Role.ASSISTANT, strict=False
    )
    parsed = parse_completion(tokens, o200k_tokenizer).messages
    assert [fields(m) for m in parsed] == [fields(m) for m in expected]


def test_unfinished_character_at_the_end_matches_openai_harmony(o200k_tokenizer, harmony_oracle):
    tokens = o200k_tokenizer.encode("<|channel|>final<|message|>ok", allow_special=True)
    tokens.append(o200k_tokenizer.encode("🦜")[0])
    expected = harmony_oracle.parse_messages_from_completion_tokens(tokens, oh.Role.ASSISTANT)
    parsed = parse_completion(tokens, o200k_tokenizer).messages
    assert [fields(m) for m in parsed] == [fields(m) for m in expected]
    assert parsed[0].content == "ok\ufffd"


def header_fields(message: Message) -> list[str | None]:
    return [message.role, message.name, message.channel, message.recipient, message.content_type]


def check_no_markup(tokens: list[int], tokenizer, clean_text: bool) -> None:
    """Streamed and whole, no field of any message, part or change holds `<|`; with
    `clean_text` (no markup spelled in ordinary tokens) neither does any text. The changes add
    up to the reply's parts, and streaming and parsing at once agree."""
    reply, parser, changes, fields_seen = (
        Reply(tokenizer, tools=["f"]),
        StreamParser(tokenizer),
        [],
        [],
    )
    for token in tokens:
        changes += reply.feed(token)
        parser.feed(token)
        if parser.current is not None:
            fields_seen += header_fields(parser.current)
    changes += reply.finish()
    whole = parse_completion(tokens, tokenizer)
    assert whole.messages == reply.messages
    fields_seen += [f for m in reply.messages for f in header_fields(m)]
    fields_seen += [f for p in reply.parts for f in (p.name, p.content_type)]
    assert not [f for f in fields_seen if f is not None and "<|" in f]
    texts = [c.text for c in changes] + [m.content for m in reply.messages]
    if clean_text:
        assert not [t for t in texts if "<|" in t]
    assert [c.part for c in changes if c.kind == "open"] == reply.parts
    for part in reply.parts:
        assert "".join(c.text for c in changes if c.part is part) == part.text
    for kind in ("text", "reasoning"):
        joined = "".join(c.lead + c.text for c in changes if c.part.kind == kind)
        assert joined == reply.text(kind)


SOUP_SPECIALS = [*range(199998, 200019), 200500, N_VOCAB - 1, N_VOCAB, -3]
SOUP_WORDS = "hello world 42 é 日本 🦜 json to=functions.f to= analysis final commentary user"


def test_random_token_soup_never_raises_or_shows_markup(o200k_tokenizer):
    rng = random.Random(0)
    text = o200k_tokenizer.encode(SOUP_WORDS)
    for _ in range(300):
        tokens = [rng.choice(text if rng.random() < 0.6 else SOUP_SPECIALS) for _ in range(40)]
        check_no_markup(tokens, o200k_tokenizer, clean_text=True)


def test_markup_spelled_in_ordinary_tokens_never_reaches_a_field(o200k_tokenizer):
    rng = random.Random(2)
    encode = o200k_tokenizer.encode
    words = [encode(w) for w in SOUP_WORDS.split()]
    words += [encode(m) for m in ["<|channel|>", "<|constrain|>json", "to=<|call|>", " <|x|>"]]
    for _ in range(300):
        tokens = []
        while len(tokens) < 40:
            tokens += rng.choice(words) if rng.random() < 0.6 else [rng.choice(SOUP_SPECIALS)]
        check_no_markup(tokens, o200k_tokenizer, clean_text=False)


# Headers with a special token where harmony's text-based reading put markup into a field.
MARKUP_IN_HEADER = {
    "doubled channel": "<|channel|>commentary <|channel|><|message|>{}<|call|>",
    "channel as the recipient": "<|channel|>commentary<|channel|>analysis<|message|>{}<|call|>",
    "channel inside to=": "<|channel|>commentary to=<|channel|>x<|message|>{}<|call|>",
    "channel as content type": "<|channel|>commentary to=functions.f <|channel|>json<|message|>{}",
    "doubled constrain": "<|channel|>commentary to=functions.f<|constrain|><|constrain|>json"
    "<|message|>{}<|call|>",
    "bare constrain": "<|channel|>commentary to=functions.f<|constrain|><|message|>{}<|call|>",
    "channel first": "<|channel|><|channel|>commentary to=functions.f<|message|>{}<|call|>",
}


@pytest.mark.parametrize("name", MARKUP_IN_HEADER)
def test_special_tokens_inside_a_header_never_become_fields(name, o200k_tokenizer, cli_shown):
    tokens = o200k_tokenizer.encode(MARKUP_IN_HEADER[name], allow_special=True)
    check_no_markup(tokens, o200k_tokenizer, clean_text=True)
    for call in read_reply(tokens, o200k_tokenizer, tools=["f"]).tool_calls:
        assert call.name == "f" and call.content_type in (None, "json")
    assert "<|" not in cli_shown(tokens)


@pytest.fixture
def cli_shown(o200k_tokenizer, capsys):
    """What `run` prints for a reply of these tokens."""

    def show(tokens: list[int]) -> str:
        show_reply(tokens, o200k_tokenizer, tools=["f"])
        return capsys.readouterr().out

    return show


def test_doubled_channel_calls_the_named_tool(o200k_tokenizer):
    text = "<|channel|>commentary<|channel|>commentary to=functions.get_weather <|constrain|>json"
    tokens = o200k_tokenizer.encode(f'{text}<|message|>{{"city":"SF"}}<|call|>', allow_special=True)
    (call,) = read_reply(tokens, o200k_tokenizer, tools=["get_weather"]).tool_calls
    assert (call.name, call.text, call.content_type) == (
        "get_weather",
        '{"city":"SF"}',
        "json",
    )
