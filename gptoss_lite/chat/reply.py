"""A generated reply, translated once: reasoning, text and tool calls, for the CLI and every API.

`Reply.feed(token)` runs the tolerant harmony parser (or, with `harmony=False`, takes the tokens
as plain text, special tokens left out) and reports what each token changed as `Change`s of the
reply's `Part`s: a part opens, grows by a delta, closes. The analysis channel is "reasoning"; a
message addressed to a declared function (`functions.NAME`, or `NAMESPACE.NAME` for one of
another namespace) is a "tool_call" with a fresh call id, its arguments the message text;
anything else the assistant writes (final, a commentary preamble, no channel, a malformed header,
a call to a tool nobody declared) is "text". Text and reasoning parts open on their first
character, so an empty message shows nothing. The parts of one kind read as one text joined by
blank lines (`text(kind)`); a delta's `lead` is the separator it follows in that text.

Stop strings cut the visible text: within each text message, the first stop string to be
completed (the longest of those ending at the same character) ends the reply just before it, and
`stopped` tells the caller to end the generation; text that may begin a stop string is held
back until it cannot, or until its message ends. `finish_reason` and `usage` say how the reply
ended and what it cost, in the OpenAI API's terms. The CLI prints the changes, the chat session
keeps `messages` as history, and each server endpoint turns the changes into its own events.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace

from .harmony import FUNCTIONS, Message, tool_recipient
from .harmony_parser import Event, StreamParser
from .stats import ReplyStats
from .tokenizer import Tokenizer
from .tokens import CALL

SEPARATOR = "\n\n"  # between two messages' texts of the same kind
_ID_PREFIXES = {"reasoning": "rs_", "text": "msg_", "tool_call": "fc_"}


def new_id(prefix: str) -> str:
    """A fresh identifier such as "call_1f3a...", unique across the process's life."""
    return f"{prefix}{uuid.uuid4().hex[:24]}"


@dataclass
class Part:
    """One item of a reply; `index` is its position among the reply's parts."""

    kind: str  # "reasoning", "text" or "tool_call"
    index: int
    text: str = ""
    name: str | None = None  # the function a tool call calls
    namespace: str | None = None  # its namespace, when it is not `functions`
    call_id: str | None = None
    content_type: str | None = None  # of a tool call's arguments, e.g. "json"
    id: str = ""  # "rs_...", "msg_..." or "fc_...", as the Responses API names its items
    logprobs: list = field(default_factory=list)  # of a text part's tokens, when fed any

    def __post_init__(self) -> None:
        self.id = self.id or new_id(_ID_PREFIXES[self.kind])


@dataclass(frozen=True)
class Change:
    """A part opened, grew by `text` (after `lead` in the joined text of its kind), or closed."""

    kind: str  # "open", "delta" or "close"
    part: Part
    text: str = ""
    lead: str = ""
    logprobs: tuple = ()  # a text delta's: those of the tokens shown since the last one


@dataclass(frozen=True)
class Usage:
    """What a reply cost, in tokens."""

    prompt_tokens: int
    cached_tokens: int  # prompt tokens the KV cache already held
    completion_tokens: int
    reasoning_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class StopText:
    """Cuts one message's text at the first stop string completed, holding back a tail that
    may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""
        self.hit = False

    def push(self, text: str) -> str:
        """The part of `held + text` that is safe to show."""
        if self.hit:
            return ""
        text, self.held = self.held + text, ""
        found = [(at + len(s), at) for s in self.stops if (at := text.find(s)) >= 0]
        if found:
            self.hit = True
            return text[: min(found)[1]]
        keep = max((_overlap(text, s) for s in self.stops), default=0)
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back text, at the end of its message: it began no stop string."""
        text, self.held = self.held, ""
        return text


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `stop`."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


class Reply:
    """Consumes the generated tokens of one reply and reports its parts as they change.

    `tools`: the names of the functions declared to the model, `namespace.tool` for one outside
    `functions` (a call to any other is text);
    `prefix`: reply tokens the prompt already holds (a forced call header), whose changes the
    first `feed` reports."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        stop: Sequence[str] = (),
        *,
        harmony: bool = True,
        tools: Collection[str] = (),
        prefix: Sequence[int] = (),
    ) -> None:
        self._tokenizer = tokenizer
        self._parser = StreamParser(tokenizer)
        self._plain = None if harmony else Message("assistant")  # plain text: one message
        self._decoder = tokenizer.stream()
        self._tools = frozenset(tool_recipient(name) for name in tools)
        self._stop = StopText(stop)
        self.parts: list[Part] = []
        self._open: Part | None = None
        self._unshown: list = []  # logprobs of shown tokens not yet given to a delta
        self.reasoning_tokens = 0
        self._early = [c for token in prefix for c in self._changes(self._parser.feed(token))]

    @property
    def stopped(self) -> bool:
        """A stop string was generated: nothing after it is shown."""
        return self._stop.hit

    @property
    def called_tool(self) -> bool:
        """The reply ended on `<|call|>` after a call to a declared tool."""
        return self._parser.stop_token == CALL and bool(self.tool_calls)

    @property
    def tool_calls(self) -> list[Part]:
        return [p for p in self.parts if p.kind == "tool_call"]

    @property
    def messages(self) -> list[Message]:
        """The finished harmony messages, as a conversation's history keeps them."""
        return [] if self._plain is not None else self._parser.messages

    def text(self, kind: str = "text") -> str:
        """All text of the parts of `kind`, separated by blank lines."""
        return SEPARATOR.join(p.text for p in self.parts if p.kind == kind)

    def finish_reason(self, ended: str) -> str:
        """How the reply ended, given how its generation did (`ended`: "stop" on a stop token,
        "length" or "interrupted"): "stop" also after a stop string, "tool_calls" after a call."""
        if self.stopped:
            return "stop"
        return "tool_calls" if ended == "stop" and self.called_tool else ended

    def usage(self, stats: ReplyStats) -> Usage:
        """The reply's token counts, with the generation's `stats`."""
        return Usage(
            stats.prompt_tokens, stats.cached_tokens, stats.generated_tokens, self.reasoning_tokens
        )

    def feed(self, token: int, logprob: object = None) -> list[Change]:
        """What one generated token changed. Its `logprob` (what the generation recorded for
        it, e.g. an `engine.logprobs.TokenLogprob`), if it is text the reply shows, goes with
        the text delta that shows it."""
        if self._plain is not None:
            text = "" if self._tokenizer.is_special(token) else self._decoder.push(token)
            changes = self._changes([Event("text", self._plain, text)])
        else:
            if self._parser.channel == "analysis":
                self.reasoning_tokens += 1
            early, self._early = self._early, []
            changes = early + self._changes(self._parser.feed(token))
        if logprob is not None and self._shows(token):
            self._unshown.append(logprob)
        return self._with_logprobs(changes)

    def finish(self) -> list[Change]:
        """The end of the generation: close whatever is open."""
        if self._plain is not None:
            text = self._decoder.flush()
            changes = self._changes([Event("text", self._plain, text), Event("end", self._plain)])
        else:
            changes = self._changes(self._parser.finish())
        return self._with_logprobs(changes)

    def _shows(self, token: int) -> bool:
        """Whether the token just fed is text of a message the reply shows (not cut off)."""
        if self.stopped or self._tokenizer.is_special(token):
            return False
        current = self._plain or self._parser.current
        return current is not None and self._kind(current) == "text"

    def _with_logprobs(self, changes: list[Change]) -> list[Change]:
        """`changes`, their last text delta given the logprobs of the tokens shown since the
        last one (a token's text may show later: a UTF-8 character or a possible stop string
        held back)."""
        for i in reversed(range(len(changes))):
            change = changes[i]
            if self._unshown and change.kind == "delta" and change.part.kind == "text":
                changes[i] = replace(change, logprobs=tuple(self._unshown))
                change.part.logprobs += self._unshown
                self._unshown = []
        return changes

    def _changes(self, events: list[Event]) -> list[Change]:
        changes: list[Change] = []
        for event in events:
            if self.stopped:
                break
            kind = self._kind(event.message)
            if event.kind == "start" and kind == "tool_call":
                message = event.message
                space, _, name = message.recipient.partition(".")
                namespace = None if f"{space}." == FUNCTIONS else space
                call = Part(kind, len(self.parts), name=name, namespace=namespace)
                call.call_id, call.content_type = new_id("call_"), message.content_type
                self._begin(call, changes)
            elif event.kind == "text":
                changes += self._add(
                    kind, self._stop.push(event.text) if kind == "text" else event.text
                )
            elif event.kind == "end":
                if kind == "text":
                    changes += self._add(kind, self._stop.flush())
                self._close(changes)
        return changes

    def _kind(self, message: Message) -> str:
        if message.role == "assistant" and message.recipient in self._tools:
            return "tool_call"
        return "reasoning" if message.channel == "analysis" else "text"

    def _add(self, kind: str, text: str) -> list[Change]:
        """Grow the open part by `text`, opening one of `kind` first; closed if a stop string
        was hit."""
        changes: list[Change] = []
        if text:
            if self._open is None:
                self._begin(Part(kind, len(self.parts)), changes)
            part = self._open
            joined = kind != "tool_call" and not part.text
            joined = joined and any(p.kind == kind and p.text for p in self.parts)
            part.text += text
            changes.append(Change("delta", part, text, SEPARATOR if joined else ""))
        if self.stopped:
            self._close(changes)
        return changes

    def _begin(self, part: Part, changes: list[Change]) -> None:
        self.parts.append(part)
        self._open = part
        changes.append(Change("open", part))

    def _close(self, changes: list[Change]) -> None:
        if self._open is not None:
            changes.append(Change("close", self._open))
            self._open = None


def read_reply(
    tokens: Iterable[int],
    tokenizer: Tokenizer,
    *,
    harmony: bool = True,
    tools: Collection[str] = (),
) -> Reply:
    """The reply of a whole generation's tokens."""
    reply = Reply(tokenizer, harmony=harmony, tools=tools)
    for token in tokens:
        reply.feed(token)
    reply.finish()
    return reply
