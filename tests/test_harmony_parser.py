"""Streaming harmony parser: same messages and deltas as openai-harmony on well-formed output,
and no exception and no markup on malformed output."""

from __future__ import annotations

import random

import openai_harmony as oh
import pytest

from gptoss_lite.chat.harmony import Conversation, Message, render_conversation
from gptoss_lite.chat.harmony_parser import StreamParser, parse_completion
from gptoss_lite.chat.tokenizer import CALL, END, ENDOFTEXT, N_VOCAB, RETURN

WEATHER_CALL = Message(
    "assistant", '{"location": "東京"}', "commentary", "functions.get_weather", "<|constrain|>json"
)
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


def oracle_message(message: Message) -> oh.Message:
    out = oh.Message.from_role_and_content(oh.Role(message.role), message.content)
    out = out.with_channel(message.channel)
    if message.recipient is not None:
        out = out.with_recipient(message.recipient)
    if message.content_type is not None:
        out = out.with_content_type(message.content_type)
    return out


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
            message.content_type,
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


@pytest.mark.parametrize("name", WELL_FORMED)
def test_messages_match_openai_harmony(name, o200k_tokenizer, harmony_oracle):
    messages, stop = WELL_FORMED[name]
    tokens = completion_tokens(harmony_oracle, messages, stop)
    expected = harmony_oracle.parse_messages_from_completion_tokens(tokens, oh.Role.ASSISTANT)
    parsed = parse_completion(tokens, o200k_tokenizer)
    assert [fields(m) for m in parsed.messages] == [fields(m) for m in expected]
    assert [fields(m) for m in parsed.messages] == [fields(m) for m in messages]
    assert parsed.stop_token == stop


@pytest.mark.parametrize("name", WELL_FORMED)
def test_stream_matches_openai_harmony_token_by_token(name, o200k_tokenizer, harmony_oracle):
    messages, stop = WELL_FORMED[name]
    oracle = oh.StreamableParser(harmony_oracle, oh.Role.ASSISTANT)
    parser = StreamParser(o200k_tokenizer)
    for token in completion_tokens(harmony_oracle, messages, stop):
        oracle.process(token)
        delta = "".join(e.text for e in parser.feed(token) if e.kind == "text")
        assert delta == (oracle.last_content_delta or "")
        assert "\ufffd" not in delta
        current = parser.current
        if oracle.state == oh.StreamState.CONTENT:
            assert (current.role, current.channel, current.recipient, current.content_type) == (
                oracle.current_role.value,
                oracle.current_channel,
                oracle.current_recipient,
                oracle.current_content_type,
            )
            assert current.content == oracle.current_content
        else:
            assert current is None


def test_split_characters_stream_without_replacement(o200k_tokenizer, harmony_oracle):
    messages, stop = WELL_FORMED["unicode-split-characters"]
    parser = StreamParser(o200k_tokenizer)
    silent = [t for t in completion_tokens(harmony_oracle, messages, stop) if not parser.feed(t)]
    assert silent, "no token held back a partial character"


def test_events_and_completion_for_a_cli(o200k_tokenizer, harmony_oracle):
    messages, stop = WELL_FORMED["preamble-then-call"]
    parser = StreamParser(o200k_tokenizer)
    events = [e for t in completion_tokens(harmony_oracle, messages, stop) for e in parser.feed(t)]
    kinds = [e.kind for e in events if e.kind != "text"]
    assert kinds == ["start", "end"] * 3
    shown = {}
    for event in events:
        shown[event.channel] = shown.get(event.channel, "") + event.text
    assert shown == {"commentary": messages[0].content + messages[2].content, "analysis": "Think."}
    result = parser.completion
    assert result.wants_tool and not result.is_done
    (call,) = result.tool_calls
    assert (call.name, call.recipient, call.arguments, call.content_type) == (
        "get_weather",
        "functions.get_weather",
        '{"location": "東京"}',
        "<|constrain|>json",
    )
    assert result.analysis_text == "Think." and result.final_text == ""


def test_parsed_turn_goes_back_into_history(o200k_tokenizer, harmony_oracle):
    messages, stop = WELL_FORMED["analysis-final"]
    result = parse_completion(completion_tokens(harmony_oracle, messages, stop), o200k_tokenizer)
    assert result.is_done and result.final_text == "**4**" and result.analysis_text == "2+2 is 4."
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
    assert result.final_text == "{}" and result.tool_calls == []


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


def test_random_token_soup_never_raises_or_shows_markup(o200k_tokenizer):
    rng = random.Random(0)
    text = o200k_tokenizer.encode("hello world 42 é 日本 🦜 json to=functions.f analysis final")
    specials = [*range(199998, 200019), 200500, N_VOCAB - 1, N_VOCAB, -3]
    for _ in range(200):
        tokens = [rng.choice(text if rng.random() < 0.6 else specials) for _ in range(40)]
        shown = visible(tokens, o200k_tokenizer)
        assert all("<|" not in content for _, content in shown)
