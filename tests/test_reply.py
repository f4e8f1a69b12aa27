"""The one reply translator (`chat.reply`): parts, joined texts, tool calls, stop strings, finish.

Replies are written as harmony text with markup, tokenized with the real o200k vocabulary and fed
token by token. Stop strings are checked against a reference written independently: `str.find`
over the whole text for every stop string, the one that is completed first winning.
"""

from __future__ import annotations

import random

import pytest

from gptoss_lite.chat.harmony import Message, check_tool_name
from gptoss_lite.chat.reply import SEPARATOR, Reply, read_reply
from gptoss_lite.chat.stats import ReplyStats
from gptoss_lite.errors import GptossError


def feed(reply: Reply, text: str, tokenizer) -> list:
    """Every change of `reply` fed the tokens of `text` (markup allowed), then finished."""
    tokens = tokenizer.encode(text, allow_special=True)
    return [c for t in tokens for c in reply.feed(t)] + reply.finish()


def joined(changes: list, kind: str) -> str:
    """The text of `kind` as a client that joins the streamed deltas sees it."""
    return "".join(c.lead + c.text for c in changes if c.kind == "delta" and c.part.kind == kind)


def test_a_tool_chain_reads_as_parts(o200k_tokenizer):
    text = (
        "<|channel|>analysis<|message|>Two cities.<|end|>"
        "<|start|>assistant<|channel|>commentary<|message|>Checking both…<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"city": "Paris"}<|end|>'
        "<|start|>assistant<|channel|>analysis<|message|>Now Tokyo.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"city": "東京"}<|call|>'
    )
    reply = Reply(o200k_tokenizer, tools=["get_weather"])
    changes = feed(reply, text, o200k_tokenizer)
    assert [p.kind for p in reply.parts] == [
        "reasoning",
        "text",
        "tool_call",
        "reasoning",
        "tool_call",
    ]
    assert [c.part.index for c in changes if c.kind == "open"] == list(range(5))
    calls = reply.tool_calls
    assert [(c.name, c.text, c.content_type) for c in calls] == [
        ("get_weather", '{"city": "Paris"}', "json"),
        ("get_weather", '{"city": "東京"}', "json"),
    ]
    assert len({c.call_id for c in calls}) == 2 and all(
        c.call_id.startswith("call_") for c in calls
    )
    assert reply.text("reasoning") == "Two cities.\n\nNow Tokyo." == joined(changes, "reasoning")
    assert reply.text("text") == "Checking both…"
    assert reply.called_tool and reply.finish_reason("stop") == "tool_calls"
    assert [m.recipient for m in reply.messages][2] == "functions.get_weather"


def test_several_answers_are_joined_by_a_blank_line_streamed_and_not(o200k_tokenizer):
    text = (
        "<|channel|>final<|message|>First.<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>Hmm.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Second.<|return|>"
    )
    reply = Reply(o200k_tokenizer)
    changes = feed(reply, text, o200k_tokenizer)
    assert reply.text("text") == f"First.{SEPARATOR}Second." == joined(changes, "text")
    assert [p.kind for p in reply.parts] == ["text", "reasoning", "text"]  # Responses: 3 items


@pytest.mark.parametrize(
    "text",
    [
        "<|channel|>commentary to=functions.delete_all <|constrain|>json<|message|>{}<|call|>",
        "<|channel|>commentary to=browser.search<|message|>{}<|call|>",
        "<|channel|>commentary to=get_weather<|message|>{}<|call|>",  # no namespace
        "<|channel|>final to=all<|message|>{}<|return|>",
    ],
)
def test_a_call_to_an_undeclared_tool_is_text(o200k_tokenizer, text):
    reply = Reply(o200k_tokenizer, tools=["get_weather"])
    feed(reply, text, o200k_tokenizer)
    assert reply.tool_calls == [] and reply.text("text") == "{}"
    assert reply.finish_reason("stop") == "stop"


@pytest.mark.parametrize(
    ("tail", "ended", "reason"),
    [
        ("<|channel|>final<|message|>A<|return|>", "stop", "stop"),
        ("<|channel|>final<|message|>A<|endoftext|>", "stop", "stop"),
        ("<|channel|>final<|message|>A", "length", "length"),
        ("<|channel|>final<|message|>A", "interrupted", "interrupted"),
        ("<|channel|>commentary to=functions.f<|message|>{}<|call|>", "stop", "tool_calls"),
        ("<|channel|>commentary to=functions.f<|message|>{}", "length", "length"),
        ("<|channel|>commentary<|message|>no recipient<|call|>", "stop", "stop"),
    ],
)
def test_finish_reason(o200k_tokenizer, tail, ended, reason):
    tokens = o200k_tokenizer.encode(tail, allow_special=True)
    reply = read_reply(tokens, o200k_tokenizer, tools=["f"])
    assert reply.finish_reason(ended) == reason


def test_usage_counts_the_reasoning_tokens(o200k_tokenizer):
    thought = "<|channel|>analysis<|message|>Think it through.<|end|>"
    text = f"{thought}<|start|>assistant<|channel|>final<|message|>Done.<|return|>"
    tokens = o200k_tokenizer.encode(text, allow_special=True)
    reply = read_reply(tokens, o200k_tokenizer)
    stats = ReplyStats(prompt_tokens=30, cached_tokens=12, generated_tokens=len(tokens))
    usage = reply.usage(stats)
    # the analysis body and its <|end|>: the tokens fed while the analysis channel was open
    body = o200k_tokenizer.encode("Think it through.<|end|>", allow_special=True)
    assert usage.reasoning_tokens == len(body)
    assert (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) == (
        30,
        12,
        len(tokens),
    )
    assert usage.total_tokens == 30 + len(tokens)


def test_a_forced_call_header_opens_the_call(o200k_tokenizer):
    header = "<|channel|>commentary to=functions.f <|constrain|>json<|message|>"
    prefix = o200k_tokenizer.encode(header, allow_special=True)
    reply = Reply(o200k_tokenizer, tools=["f"], prefix=prefix)
    changes = feed(reply, "{}<|call|>", o200k_tokenizer)
    assert changes[0].kind == "open" and changes[0].part.name == "f"
    assert reply.tool_calls[0].text == "{}" and reply.finish_reason("stop") == "tool_calls"


def test_plain_text_leaves_special_tokens_out(o200k_tokenizer):
    reply = Reply(o200k_tokenizer, harmony=False)
    changes = feed(reply, "Once <|start|>upon<|endoftext|>", o200k_tokenizer)
    assert reply.text() == "Once upon" == joined(changes, "text")
    assert reply.messages == [] and not reply.called_tool


# ------------------------------------------------------------------ stop strings


def reference_cut(text: str, stops: list[str]) -> str:
    """The text before the stop string completed first (the longest of those completed at the
    same character); all of it when none occurs."""
    found = [(text.find(s) + len(s), -len(s)) for s in stops if s and s in text]
    if not found:
        return text
    end, minus_length = min(found)
    return text[: end + minus_length]


@pytest.mark.parametrize(
    ("text", "stops", "shown"),
    [
        ("The answer is 42.\n\nE", ["END"], "The answer is 42.\n\nE"),  # the tail was swallowed
        ("AB", ["ABC"], "AB"),  # all of it was held back, then lost
        ("The answer is 42.\n\nEND and more", ["END"], "The answer is 42.\n\n"),
        ("xabcd", ["abcd", "bc"], "xa"),  # "bc" is completed first
        ("xabcd", ["abc", "bc"], "x"),  # both at once: the longer
    ],
)
def test_stop_strings_cut_exactly(o200k_tokenizer, text, stops, shown):
    assert reference_cut(text, stops) == shown
    for script, harmony in ((f"<|channel|>final<|message|>{text}<|return|>", True), (text, False)):
        reply = Reply(o200k_tokenizer, stops, harmony=harmony)
        changes = feed(reply, script, o200k_tokenizer)
        assert reply.text() == joined(changes, "text") == shown
        assert reply.stopped == (shown != text)
        assert reply.finish_reason("length") == ("stop" if reply.stopped else "length")


PIECES = ["a", "b", "ab", "E", "N", "D", "END", "\n", " ", ".", "42", "é", "🦜", "日本"]


def random_case(rng: random.Random) -> tuple[str, list[str]]:
    """A text of a few pieces and 0-3 stop strings: pieces of it, pieces that may not occur,
    ends of the text grown by a character (a prefix that never completes), the empty string."""
    text = "".join(rng.choices(PIECES, k=rng.randint(1, 14)))
    stops = []
    for _ in range(rng.randint(0, 3)):
        roll = rng.random()
        if roll < 0.4 and len(text) > 1:
            at = rng.randrange(len(text))
            stops.append(text[at : at + rng.randint(1, 4)])
        elif roll < 0.7:
            stops.append("".join(rng.choices(PIECES, k=rng.randint(1, 2))))
        elif roll < 0.9:
            stops.append(text[-rng.randint(1, len(text)) :] + rng.choice("xyzE"))
        else:
            stops.append("")
    return text, stops


def test_stop_strings_property(o200k_tokenizer):
    """Random texts x random stop lists: the deltas joined, the reply's text and the reference
    cut agree, for plain text and for an answer after reasoning (which stops never cut)."""
    rng = random.Random(19)
    for _ in range(400):
        text, stops = random_case(rng)
        want = reference_cut(text, stops)
        thought = "<|channel|>analysis<|message|>a END b<|end|><|start|>assistant"
        scripts = {False: text, True: f"{thought}<|channel|>final<|message|>{text}<|return|>"}
        for harmony, script in scripts.items():
            reply = Reply(o200k_tokenizer, stops, harmony=harmony)
            changes = feed(reply, script, o200k_tokenizer)
            assert joined(changes, "text") == reply.text() == want, (text, stops, harmony)
            if harmony:
                assert reply.text("reasoning") == "a END b"


# ------------------------------------------------------------------ the tool-name rule


@pytest.mark.parametrize("name", ["get_weather", "a", "A-9_z", "x" * 64])
def test_tool_names_the_rule_allows(name):
    assert check_tool_name(name, "tools.0") == name


@pytest.mark.parametrize(
    "name", ["", "x" * 65, "get weather", "f\n} // namespace functions", "fünf", "a.b", 7, None]
)
def test_tool_names_the_rule_refuses(name):
    with pytest.raises(GptossError, match=r"^tools\.0: the name .* is not 1-64 of") as caught:
        check_tool_name(name, "tools.0")
    assert len(str(caught.value)) < 120  # a long name is shown cut


def test_history_keeps_the_messages_as_generated(o200k_tokenizer):
    """A call to an undeclared tool shows as text, but the history keeps what the model wrote."""
    text = "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}<|call|>"
    reply = read_reply(o200k_tokenizer.encode(text, allow_special=True), o200k_tokenizer)
    assert reply.messages == [Message.tool_call("f", "{}")]
    assert not reply.called_tool and reply.text() == "{}"
