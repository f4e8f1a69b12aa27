"""Printing a reply while it streams: harmony reasoning apart from the answer, or plain text.

`show_harmony` feeds any iterable of token ids to a `StreamParser` and prints its events as they
come: the analysis channel dim under "Thinking...", closed by "...done thinking." and a blank
line, then the answer; a tool call as a dim `-> functions.name arguments` line. `show_text` prints
a plain completion. Every piece is flushed at once; the output always ends at the start of a
line, also when Ctrl-C stops the stream, and each function returns what the tokens said.
Colours go only to a terminal (click strips them from pipes and files).
"""

from __future__ import annotations

from collections.abc import Iterable

import click

from ..chat.harmony_parser import Completion, Event, StreamParser, message_kind
from ..chat.tokenizer import Tokenizer
from ..chat.tokens import ENDOFTEXT

THINKING = "Thinking..."
DONE_THINKING = "...done thinking."


class Writer:
    """Streams text to stdout, remembering whether the cursor is at the start of a line."""

    def __init__(self) -> None:
        self.at_line_start = True

    def write(self, text: str, dim: bool = False) -> None:
        if text:
            click.echo(click.style(text, dim=True) if dim else text, nl=False)
            self.at_line_start = text.endswith("\n")

    def end_line(self) -> None:
        """Go to the start of a line unless already there."""
        if not self.at_line_start:
            self.write("\n")


class HarmonyPrinter:
    """Turns parser events into terminal output: reasoning (optional), tool calls, the answer."""

    def __init__(self, writer: Writer, show_reasoning: bool = True) -> None:
        self.out, self.show_reasoning = writer, show_reasoning
        self._thinking = False  # inside a reasoning block that was shown
        self._answered = False  # an answer message was started

    def show(self, events: Iterable[Event]) -> None:
        """Print what each event adds."""
        for event in events:
            kind = message_kind(event.message)
            if kind == "reasoning" and not self.show_reasoning:
                continue
            if event.kind == "start":
                self._start(kind, event)
            elif event.kind == "text":
                self.out.write(event.text, dim=kind != "answer")
            elif kind == "call":
                self.out.end_line()

    def _start(self, kind: str, event: Event) -> None:
        if kind == "reasoning":
            self.out.end_line()
            self.out.write("\n" if self._thinking else f"{THINKING}\n", dim=True)
            self._thinking = True
            return
        if self._thinking:
            self.out.end_line()
            self.out.write(f"{DONE_THINKING}\n\n", dim=True)
            self._thinking = False
        elif kind == "answer" and self._answered:  # a blank line between answer messages
            self.out.end_line()
            self.out.write("\n")
        if kind == "call":
            self.out.end_line()
            self.out.write(f"-> {event.message.recipient} ", dim=True)
        self._answered = self._answered or kind == "answer"


def show_harmony(
    tokens: Iterable[int], tokenizer: Tokenizer, show_reasoning: bool = True
) -> Completion:
    """Print a harmony reply as its tokens arrive; return it parsed."""
    parser, writer = StreamParser(tokenizer), Writer()
    printer = HarmonyPrinter(writer, show_reasoning)
    try:
        for token in tokens:
            printer.show(parser.feed(token))
        printer.show(parser.finish())
    finally:
        writer.end_line()
    return parser.completion


def show_text(
    tokens: Iterable[int], tokenizer: Tokenizer, stop: Iterable[int] = (ENDOFTEXT,)
) -> str:
    """Print a plain completion as its tokens arrive (stop tokens left out); return its text."""
    stop, decoder, writer, pieces = set(stop), tokenizer.stream(), Writer(), []
    try:
        for token in tokens:
            pieces.append("" if token in stop else decoder.push(token))
            writer.write(pieces[-1])
        pieces.append(decoder.flush())
        writer.write(pieces[-1])
    finally:
        writer.end_line()
    return "".join(pieces)
