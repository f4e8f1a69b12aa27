"""Streaming parser for what gpt-oss generates after `<|start|>assistant`.

Feed token ids one at a time to `StreamParser.feed`; it returns `Event`s as messages open, grow
and close, each carrying the live `Message` (role, channel, recipient, content type, text so far).
`ReplyStream` sits on top for a server or a CLI: it turns the events into `Delta`s of reasoning,
answer text and tool calls (name, then arguments, one index per call), whose concatenation is
exactly the `Completion` it ends with: final text, analysis text, tool calls, finish reason.

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

from .harmony import FUNCTIONS, ROLES, Message
from .tokenizer import Tokenizer
from .tokens import CALL, CHANNEL, CLOSERS, CONSTRAIN, MESSAGE, RETURN, START, STOP_TOKENS

_CHANNEL_NAME = re.compile(r"[^\s<]*")  # a channel name runs to whitespace or '<'
_WORD = re.compile(r"\S+")
_HEADER_MARKERS = (CHANNEL, CONSTRAIN)  # the special tokens a header may hold
SEPARATOR = "\n\n"  # between two messages' texts of the same kind (reasoning or answer)


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
        return tool_name(self.recipient)


def tool_name(recipient: str) -> str:
    """The tool a recipient names: "functions.get_weather" -> "get_weather"."""
    return recipient.removeprefix(FUNCTIONS)


def message_kind(message: Message) -> str:
    """How an assistant message counts: "call" (to a tool), "reasoning" (the analysis channel)
    or "answer" (final, a commentary preamble, no channel or an unknown one)."""
    if message.recipient not in (None, "all"):
        return "call"
    return "reasoning" if message.channel == "analysis" else "answer"


@dataclass
class Completion:
    """The parsed messages of one completion and the stop token that ended it (or None)."""

    messages: list[Message] = field(default_factory=list)
    stop_token: int | None = None

    @property
    def final_text(self) -> str:
        """The answer: the texts of the answer messages, separated by blank lines."""
        return self._text("answer")

    @property
    def analysis_text(self) -> str:
        """The chain of thought (analysis channel), messages separated by blank lines."""
        return self._text("reasoning")

    @property
    def tool_calls(self) -> list[ToolCall]:
        """Assistant messages to a tool, in order."""
        return [ToolCall(m.recipient, m.content, m.content_type) for m in self._assistant("call")]

    @property
    def finish_reason(self) -> str:
        """ "tool_calls" (stopped on `<|call|>` after a call), "stop" (any other stop token) or
        "length" (no stop token: the token limit, or the stream was cut)."""
        if self.stop_token == CALL and self.tool_calls:
            return "tool_calls"
        return "length" if self.stop_token is None else "stop"

    @property
    def wants_tool(self) -> bool:
        """Generation stopped on `<|call|>`: run the tool call and continue."""
        return self.stop_token == CALL

    @property
    def is_done(self) -> bool:
        """Generation stopped on `<|return|>`: the answer is complete."""
        return self.stop_token == RETURN

    def _assistant(self, kind: str) -> list[Message]:
        return [m for m in self.messages if m.role == "assistant" and message_kind(m) == kind]

    def _text(self, kind: str) -> str:
        return SEPARATOR.join(m.content for m in self._assistant(kind) if m.content)


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


@dataclass(frozen=True)
class Delta:
    """What a token added to the reply: "reasoning" or "text" (answer) `text`; "tool_call", a
    call opened (`name`, `index`); "arguments", `text` of call `index`."""

    kind: str
    text: str = ""
    index: int | None = None
    name: str | None = None


class ReplyStream:
    """The assistant's reply as deltas, for a server or a CLI. Concatenated, the "reasoning"
    deltas are `completion.analysis_text`, the "text" deltas `completion.final_text`, and the
    "arguments" of each index the arguments of `completion.tool_calls[index]`."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.parser = StreamParser(tokenizer)
        self._calls = 0
        self._started: set[str] = set()  # kinds that already have text (a separator comes next)
        self._fresh = False  # the current message has no text yet

    @property
    def completion(self) -> Completion:
        """The reply so far, parsed."""
        return self.parser.completion

    def feed(self, token: int) -> list[Delta]:
        """Take one token; return what it added."""
        return self._deltas(self.parser.feed(token))

    def finish(self) -> list[Delta]:
        """End of the stream: what closing the open message added."""
        return self._deltas(self.parser.finish())

    def _deltas(self, events: list[Event]) -> list[Delta]:
        out: list[Delta] = []
        for event in events:
            if event.message.role != "assistant":
                continue
            kind = message_kind(event.message)
            if event.kind == "start":
                self._fresh = True
                if kind == "call":
                    name = tool_name(event.message.recipient)
                    out.append(Delta("tool_call", index=self._calls, name=name))
                    self._calls += 1
            elif event.kind == "text" and kind == "call":
                out.append(Delta("arguments", event.text, index=self._calls - 1))
            elif event.kind == "text":
                kind = "text" if kind == "answer" else kind
                lead = SEPARATOR if self._fresh and kind in self._started else ""
                self._fresh = False
                self._started.add(kind)
                out.append(Delta(kind, lead + event.text))
        return out


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
