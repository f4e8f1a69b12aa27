"""Streaming parser for what gpt-oss generates after `<|start|>assistant`.

Feed token ids one at a time to `StreamParser.feed`; it returns `Event`s as messages open, grow
and close, each carrying the live `Message` (role, channel, recipient, content type, text so far),
and ends with a `Completion`: the messages and the stop token. What the events mean to a reader
(reasoning, text, tool calls) is decided once, in `chat.reply`.

Headers are read the way openai-harmony reads them, but from the token ids rather than from
decoded text: `<|channel|>` and `<|constrain|>` are taken as tokens and never decoded, and a
header word spelling markup is dropped, so no `<|...|>` reaches a role, tool name, recipient,
channel or content type. Unlike harmony it never raises on malformed output: a bad or unfinished
header, bare text, text after a stop token or a stray special token all degrade to showing the
text, and special tokens never reach the visible text either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .harmony import ROLES, Message
from .tokenizer import Tokenizer
from .tokens import CHANNEL, CLOSERS, CONSTRAIN, MESSAGE, START, STOP_TOKENS

_CHANNEL_NAME = re.compile(r"[^\s<]*")  # a channel name runs to whitespace or '<'
_WORD = re.compile(r"\S+")
_HEADER_MARKERS = (CHANNEL, CONSTRAIN)  # the special tokens a header may hold


@dataclass(frozen=True)
class Event:
    """A message opened ("start"), grew by `text` ("text") or closed ("end")."""

    kind: str
    message: Message
    text: str = ""

    @property
    def channel(self) -> str | None:
        return self.message.channel


@dataclass
class Completion:
    """The parsed messages of one completion and the stop token that ended it (or None)."""

    messages: list[Message] = field(default_factory=list)
    stop_token: int | None = None


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
        if token in STOP_TOKENS:
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
            message, extra = parse_header(self._header, self._tokenizer, self._header_role)
            self._header = None
            self._open(message, events)
            self._add_text(f"{extra} " if extra else "", events)  # stray header words, shown
        elif token == START:
            self._close_header(events)
            self._begin_header(None)
        elif token in CLOSERS:
            self._close_header(events)
        elif token in _HEADER_MARKERS or not self._tokenizer.is_special(token):
            self._header.append(token)

    def _in_body(self, token: int, events: list[Event]) -> None:
        if token in CLOSERS:
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

    def _close_header(self, events: list[Event]) -> None:
        """A header that ended without `<|message|>`: keep its words as the message text."""
        tokens, role = self._header or [], self._header_role
        self._header = None
        message, words = parse_header(tokens, self._tokenizer, role, body_follows=False)
        if words or message.channel is not None:
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


@dataclass
class _Word:
    text: str
    constrained: bool = False  # right after `<|constrain|>`: a content type


def parse_header(
    tokens: list[int], tokenizer: Tokenizer, role: str | None, body_follows: bool = True
) -> tuple[Message, str]:
    """A header's fields, read as openai-harmony reads them, and its leftover words as text.

    `tokens` are the header's ids (ordinary text, `<|channel|>`, `<|constrain|>`); `role` is
    known for the first message only. When no `<|message|>` follows, recipient and content type
    are not looked for."""
    words, channel = _header_words(tokens, tokenizer)
    message = Message(role or "assistant", channel=channel)
    if role is None and words and not words[0].constrained:
        first = words.pop(0).text
        if first in ROLES:
            message.role = first
        else:  # a tool speaking, e.g. functions.get_weather
            message.role, message.name = "tool", first
    elif words and words[0].text == role and not words[0].constrained:
        words.pop(0)
    if body_follows and words:
        _recipient_and_type(message, words)
    return message, " ".join(w.text for w in words)


def _header_words(tokens: list[int], tokenizer: Tokenizer) -> tuple[list[_Word], str | None]:
    """The header's words, with `<|channel|>name` taken out (the first name is the channel) and
    a word starting at each `<|constrain|>`; a bare `<|constrain|>` and words spelling markup
    are dropped."""
    text, starts, channel, after = "", set(), None, None
    for marker, piece in _segments(tokens, tokenizer):
        if marker == CHANNEL:
            after = CHANNEL
        elif marker == CONSTRAIN:
            text += " "
            starts.add(len(text))
            after = None
        else:
            if after == CHANNEL:
                name = _CHANNEL_NAME.match(piece).group()
                channel = channel or name or None
                piece = piece[len(name) :]
            text, after = text + piece, None
    found = {m.start(): m.group() for m in _WORD.finditer(text)}
    words = [_Word(found.get(at, ""), at in starts) for at in sorted({*found, *starts})]
    return [w for w in words if w.text and "<|" not in w.text], channel


def _segments(tokens: list[int], tokenizer: Tokenizer) -> list[tuple[int | None, str]]:
    """(marker, "") for `<|channel|>` and `<|constrain|>`, (None, text) for each run of ordinary
    tokens between them; any other special token is left out."""
    out: list[tuple[int | None, str]] = []
    run: list[int] = []
    for token in [*tokens, CHANNEL]:  # a last marker flushes the last run
        if token in _HEADER_MARKERS:
            if run:
                out.append((None, tokenizer.decode(run)))
            out.append((token, ""))
            run = []
        elif not tokenizer.is_special(token):
            run.append(token)
    return out[:-1]


def _recipient_and_type(message: Message, words: list[_Word]) -> None:
    """Harmony's rule: a trailing `to=x` is the recipient; otherwise the last word is the content
    type (a lone word without `<|constrain|>` is a recipient) and the word before, the recipient.
    Consumed words are removed from `words`. openai-harmony 0.0.8 also reads a lone
    `<|constrain|>json` as a recipient; we follow its later fix and read a content type."""
    last = words.pop()
    if not last.constrained and last.text.startswith("to="):
        message.recipient = last.text.removeprefix("to=") or None
    elif not words and not last.constrained:
        message.recipient = last.text
    else:
        message.content_type, message.constrained = last.text, last.constrained
        if words and not words[-1].constrained:
            message.recipient = words.pop().text.removeprefix("to=") or None
