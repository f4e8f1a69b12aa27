"""A generated reply as the APIs present it: reasoning, visible text and tool calls, as it streams.

`Reply.feed(token)` runs the tolerant harmony parser and turns its messages into `Part`s: the
analysis channel is "reasoning", a message addressed to a recipient is a "tool_call" (its name
without the "functions." namespace and markup, a stable call id, the arguments as the message
text), and any other assistant text (final, a commentary preamble, text with no channel or a
malformed header) is "text"; with `harmony=False` the whole reply is plain text (special tokens
left out). It returns `Change`s ("open", "delta", "close") that each endpoint translates into
its own stream events. Text and reasoning parts open on their first character, so a message with
nothing in it shows nothing. Stop strings cut the visible text: the text up to the first one is
kept, and `Reply.stopped` tells the caller to end the generation; text that might begin a stop
string is held back until it cannot.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from ..chat.harmony import Message
from ..chat.harmony_parser import Event, StreamParser
from ..chat.tokenizer import CALL, Tokenizer

_MARKUP = re.compile(r"<\|[^|]*\|>")
_ID_PREFIXES = {"reasoning": "rs_", "text": "msg_", "tool_call": "fc_"}


def new_id(prefix: str) -> str:
    """A fresh identifier such as "call_1f3a...", unique across the server's life."""
    return f"{prefix}{uuid.uuid4().hex[:24]}"


@dataclass
class Part:
    """One item of a reply; `index` is its position among the reply's parts."""

    kind: str  # "reasoning", "text" or "tool_call"
    index: int
    text: str = ""
    name: str | None = None  # the function a tool call calls
    call_id: str | None = None
    id: str = ""  # "rs_...", "msg_..." or "fc_...", as the Responses API names its items

    def __post_init__(self) -> None:
        self.id = self.id or new_id(_ID_PREFIXES[self.kind])


@dataclass(frozen=True)
class Change:
    """A part opened, grew by `text`, or closed."""

    kind: str  # "open", "delta" or "close"
    part: Part
    text: str = ""


class StopText:
    """Cuts text at the first of `stops`, holding back a tail that may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""
        self.hit = False

    def push(self, text: str) -> str:
        """The part of `held + text` that is safe to show."""
        if self.hit:
            return ""
        text, self.held = self.held + text, ""
        found = [at for at in (text.find(s) for s in self.stops) if at >= 0]
        if found:
            self.hit = True
            return text[: min(found)]
        keep = max((_overlap(text, s) for s in self.stops), default=0)
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back text, at the end of a message: it began no stop string."""
        text, self.held = self.held, ""
        return text


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `stop`."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


class Reply:
    """Consumes the generated tokens of one reply and reports its parts as they change."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        stop: Sequence[str] = (),
        harmony: bool = True,
        prefix: Sequence[int] = (),
    ) -> None:
        self._tokenizer = tokenizer
        self._parser = StreamParser(tokenizer)
        self._plain = None if harmony else Message("assistant")  # plain text: one message
        self._decoder = tokenizer.stream()
        self._stop = StopText(stop)
        self.parts: list[Part] = []
        self._open: Part | None = None
        self.reasoning_tokens = 0
        # `prefix`: reply tokens the prompt already holds (a forced call header); the first
        # feed() reports what they opened.
        self._early = [c for token in prefix for c in self._changes(self._parser.feed(token))]

    @property
    def stopped(self) -> bool:
        """A stop string was generated: nothing after it is shown."""
        return self._stop.hit

    @property
    def called_tool(self) -> bool:
        """The reply ended on `<|call|>` after a tool call."""
        return self._parser.stop_token == CALL and any(p.kind == "tool_call" for p in self.parts)

    def feed(self, token: int) -> list[Change]:
        """What one generated token changed."""
        if self._plain is not None:
            text = "" if self._tokenizer.is_special(token) else self._decoder.push(token)
            return self._changes([Event("text", self._plain, text)])
        if self._parser.channel == "analysis":
            self.reasoning_tokens += 1
        early, self._early = self._early, []
        return early + self._changes(self._parser.feed(token))

    def finish(self) -> list[Change]:
        """The end of the generation: close whatever is open."""
        if self._plain is not None:
            text = self._decoder.flush()
            return self._changes([Event("text", self._plain, text), Event("end", self._plain)])
        return self._changes(self._parser.finish())

    def text(self, kind: str) -> str:
        """All text of the parts of `kind`, reasoning parts separated by blank lines."""
        texts = [p.text for p in self.parts if p.kind == kind]
        return ("\n\n" if kind == "reasoning" else "").join(texts)

    @property
    def tool_calls(self) -> list[Part]:
        return [p for p in self.parts if p.kind == "tool_call"]

    def _changes(self, events: list[Event]) -> list[Change]:
        changes: list[Change] = []
        for event in events:
            if self.stopped:
                break
            if event.kind == "start" and _kind(event.message) == "tool_call":
                name = _MARKUP.sub("", event.message.recipient or "").removeprefix("functions.")
                self._begin(Part("tool_call", len(self.parts), name=name), changes)
                self._open.call_id = new_id("call_")
            elif event.kind == "text":
                self._text(event.message, event.text, changes)
            elif event.kind == "end":
                self._text(event.message, self._stop.flush(), changes)
                if self._open is not None:
                    changes.append(Change("close", self._open))
                    self._open = None
        return changes

    def _text(self, message: Message, text: str, changes: list[Change]) -> None:
        kind = _kind(message)
        if kind == "text":
            text = self._stop.push(text)
        if text:
            if self._open is None:
                self._begin(Part(kind, len(self.parts)), changes)
            self._open.text += text
            changes.append(Change("delta", self._open, text))
        if self.stopped and self._open is not None:
            changes.append(Change("close", self._open))
            self._open = None

    def _begin(self, part: Part, changes: list[Change]) -> None:
        self.parts.append(part)
        self._open = part
        changes.append(Change("open", part))


def _kind(message: Message) -> str:
    if message.role == "assistant" and message.recipient is not None:
        return "tool_call"
    return "reasoning" if message.channel == "analysis" else "text"
