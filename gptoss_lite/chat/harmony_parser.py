"""Streaming parser for what gpt-oss generates after `<|start|>assistant`.

Feed token ids one at a time to `StreamParser.feed`; it returns `Event`s as messages open, grow
and close, each carrying the live `Message` (role, channel, recipient, content type, text so far),
so a CLI can print reasoning (channel "analysis") apart from the answer ("final"). Headers are
read the way openai-harmony reads them. Unlike harmony it never raises on malformed output: a bad
or unfinished header, bare text, text after a stop token or a stray special token all degrade to
showing the text, and special-token markup never reaches the visible text. `parse_completion`
parses a whole completion; `Completion` names the final text, the tool calls and the stop token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .harmony import ROLES, Message
from .tokenizer import CALL, CHANNEL, CONSTRAIN, END, ENDOFTEXT, MESSAGE, RETURN, START, Tokenizer

_CLOSERS = (END, RETURN, CALL, ENDOFTEXT)  # end the current message
_GENERATION_STOPS = (RETURN, CALL, ENDOFTEXT)
_CHANNEL_MARK = "<|channel|>"
_CONSTRAIN_MARK = "<|constrain|>"
_CHANNEL_NAME = re.compile(r"[^\s<]*")  # a channel name runs to whitespace or '<'


@dataclass(frozen=True)
class Event:
    """A message opened ("start"), grew by `text` ("text") or closed ("end")."""

    kind: str
    message: Message
    text: str = ""

    @property
    def channel(self) -> str | None:
        return self.message.channel


@dataclass(frozen=True)
class ToolCall:
    """An assistant message addressed to a tool: `recipient` e.g. "functions.get_weather"."""

    recipient: str
    arguments: str
    content_type: str | None = None

    @property
    def name(self) -> str:
        """The function name, without the "functions." namespace."""
        return self.recipient.removeprefix("functions.")


@dataclass
class Completion:
    """The parsed messages of one completion and the stop token that ended it (or None)."""

    messages: list[Message] = field(default_factory=list)
    stop_token: int | None = None

    @property
    def final_text(self) -> str:
        """The answer: assistant text on the final channel, or on no channel at all."""
        return "".join(m.content for m in self._assistant() if m.channel in ("final", None))

    @property
    def analysis_text(self) -> str:
        """The chain of thought (analysis channel), messages separated by blank lines."""
        return "\n\n".join(m.content for m in self._assistant() if m.channel == "analysis")

    @property
    def tool_calls(self) -> list[ToolCall]:
        """Assistant messages with a recipient, in order."""
        return [
            ToolCall(m.recipient, m.content, m.content_type)
            for m in self.messages
            if m.role == "assistant" and m.recipient is not None
        ]

    @property
    def wants_tool(self) -> bool:
        """Generation stopped on `<|call|>`: run the tool call and continue."""
        return self.stop_token == CALL

    @property
    def is_done(self) -> bool:
        """Generation stopped on `<|return|>`: the answer is complete."""
        return self.stop_token == RETURN

    def _assistant(self) -> list[Message]:
        return [m for m in self.messages if m.role == "assistant" and m.recipient is None]


class StreamParser:
    """Token-at-a-time harmony parser. `role` is the role already in the prompt's prefix
    (`<|start|>assistant`); None when the tokens start with `<|start|>` themselves."""

    def __init__(self, tokenizer: Tokenizer, role: str | None = "assistant") -> None:
        self._tokenizer = tokenizer
        self._fallback_role = role or "assistant"
        self._messages: list[Message] = []
        self._stop: int | None = None
        self._current: Message | None = None
        self._header: list[int] | None = [] if role else None  # None: not inside a header
        self._header_role = role
        self._decoder = tokenizer.stream()

    @property
    def messages(self) -> list[Message]:
        """The finished messages."""
        return list(self._messages)

    @property
    def current(self) -> Message | None:
        """The message whose body is being generated, if any."""
        return self._current

    @property
    def channel(self) -> str | None:
        """Channel of the current message (None between messages or when it has none)."""
        return self._current.channel if self._current else None

    @property
    def stop_token(self) -> int | None:
        """The last `<|return|>`, `<|call|>` or `<|endoftext|>` seen."""
        return self._stop

    @property
    def completion(self) -> Completion:
        """The finished messages and the stop token so far."""
        return Completion(self.messages, self._stop)

    def feed(self, token: int) -> list[Event]:
        """Take one token; return what it did to the messages."""
        events: list[Event] = []
        if self._current is not None:
            self._in_body(token, events)
        elif self._header is not None:
            self._in_header(token, events)
        else:
            self._between(token, events)
        if token in _GENERATION_STOPS:
            self._stop = token
        return events

    def finish(self) -> list[Event]:
        """End of the stream: close whatever is open (an unfinished header shows as text)."""
        events: list[Event] = []
        if self._current is not None:
            self._close(events)
        elif self._header is not None:
            self._close_header(events)
        return events

    def _between(self, token: int, events: list[Event]) -> None:
        if token == START:
            self._begin_header(None)
        elif token == CHANNEL:  # a header that skipped `<|start|>role`
            self._begin_header(self._fallback_role)
            self._header.append(token)
        elif token == MESSAGE or not self._tokenizer.is_special(token):
            self._open(Message(self._fallback_role), events)  # a body with no header
            self._in_body(token, events)

    def _in_header(self, token: int, events: list[Event]) -> None:
        if token == MESSAGE:
            message, extra = parse_header(self._header_text(), self._header_role)
            self._header = None
            self._open(message, events)
            self._add_text(f"{extra} " if extra else "", events)  # stray header words, shown
        elif token == START:
            self._close_header(events)
            self._begin_header(None)
        elif token in _CLOSERS:
            self._close_header(events)
        elif token in (CHANNEL, CONSTRAIN) or not self._tokenizer.is_special(token):
            self._header.append(token)

    def _in_body(self, token: int, events: list[Event]) -> None:
        if token in _CLOSERS:
            self._close(events)
        elif token in (START, CHANNEL):  # a new header without `<|end|>` first
            self._close(events)
            self._begin_header(None if token == START else self._fallback_role)
            if token == CHANNEL:
                self._header.append(token)
        elif not self._tokenizer.is_special(token):
            self._add_text(self._decoder.push(token), events)

    def _begin_header(self, role: str | None) -> None:
        self._header, self._header_role = [], role

    def _header_text(self) -> str:
        return self._tokenizer.decode(self._header or [])

    def _close_header(self, events: list[Event]) -> None:
        """A header that ended without `<|message|>`: keep its words as the message text."""
        text, role = self._header_text(), self._header_role
        self._header = None
        if text.strip():
            message, words = parse_header(text, role, body_follows=False)
            self._open(message, events)
            self._add_text(words, events)
            self._close(events)

    def _open(self, message: Message, events: list[Event]) -> None:
        self._current = message
        self._decoder = self._tokenizer.stream()
        events.append(Event("start", message))

    def _add_text(self, text: str, events: list[Event]) -> None:
        if text and self._current is not None:
            self._current.content += text
            events.append(Event("text", self._current, text))

    def _close(self, events: list[Event]) -> None:
        self._add_text(self._decoder.flush(), events)
        message, self._current = self._current, None
        self._messages.append(message)
        events.append(Event("end", message))


def parse_completion(
    tokens: list[int], tokenizer: Tokenizer, role: str | None = "assistant"
) -> Completion:
    """Parse a whole completion (the tokens after `<|start|>assistant`, stop token optional)."""
    parser = StreamParser(tokenizer, role)
    for token in tokens:
        parser.feed(token)
    parser.finish()
    return parser.completion


def parse_header(text: str, role: str | None, body_follows: bool = True) -> tuple[Message, str]:
    """A header's fields, read as openai-harmony reads them, and its leftover words as text.

    `text` is the decoded header (markup included); `role` is known for the first message only.
    When no `<|message|>` follows, recipient and content type are not looked for.
    """
    channel = None
    at = text.find(_CHANNEL_MARK)
    if at >= 0:
        rest = text[at + len(_CHANNEL_MARK) :]
        name = _CHANNEL_NAME.match(rest).group()
        channel = name or None
        text = text[:at] + rest[len(name) :]
    words = text.replace(_CONSTRAIN_MARK, f" {_CONSTRAIN_MARK}").split()
    message = Message(role or "assistant", channel=channel)
    if role is None and words:
        first = words.pop(0)
        if first in ROLES:
            message.role = first
        else:  # a tool speaking, e.g. functions.get_weather
            message.role, message.name = "tool", first
    elif words and words[0] == role:
        words.pop(0)
    if body_follows and words:
        _recipient_and_type(message, words)
    leftover = " ".join(words)
    return message, leftover.replace(_CHANNEL_MARK, "").replace(_CONSTRAIN_MARK, "")


def _recipient_and_type(message: Message, words: list[str]) -> None:
    """Harmony's rule: a trailing `to=x` is the recipient; otherwise the last word is the content
    type (a lone word without `<|constrain|>` is a recipient) and the word before, the recipient.
    Consumed words are removed from `words`. openai-harmony 0.0.8 also reads a lone
    `<|constrain|>json` as a recipient; we follow its later fix and read a content type."""
    last = words.pop()
    if last.startswith("to="):
        message.recipient = last.removeprefix("to=")
    elif not words and not last.startswith(_CONSTRAIN_MARK):
        message.recipient = last
    else:
        message.content_type = last
        if words:
            message.recipient = words.pop().removeprefix("to=")
