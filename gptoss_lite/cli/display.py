"""Printing a reply while it streams: harmony reasoning apart from the answer, or plain text.

`show_reply` feeds any iterable of token ids to a `chat.reply.Reply` and prints its changes as
they come: the reasoning dim under "Thinking...", closed by "...done thinking." and a blank line,
then the answer; a tool call as a dim `-> functions.name arguments` line. Plain text (`run
--raw`) goes through the same `Reply`. Every piece is flushed at once; the output always ends at
the start of a line, also when Ctrl-C stops the stream, and the function returns the `Reply`.
Colours go only to a terminal (click strips them from pipes and files).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import click

from ..chat.harmony import FUNCTIONS
from ..chat.reply import Change, Part, Reply
from ..chat.tokenizer import Tokenizer

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


class ReplyPrinter:
    """Turns a reply's changes into terminal output: reasoning (optional), tool calls, the
    answer."""

    def __init__(self, writer: Writer, show_reasoning: bool = True) -> None:
        self.out, self.show_reasoning = writer, show_reasoning
        self._thinking = False  # inside a reasoning block that was shown
        self._answered = False  # an answer part was started

    def show(self, changes: Iterable[Change]) -> None:
        """Print what each change adds."""
        for change in changes:
            part = change.part
            if part.kind == "reasoning" and not self.show_reasoning:
                continue
            if change.kind == "open":
                self._open(part)
            elif change.kind == "delta":
                self.out.write(change.text, dim=part.kind != "text")
            elif part.kind == "tool_call":
                self.out.end_line()

    def _open(self, part: Part) -> None:
        if part.kind == "reasoning":
            self.out.end_line()
            self.out.write("\n" if self._thinking else f"{THINKING}\n", dim=True)
            self._thinking = True
            return
        if self._thinking:
            self.out.end_line()
            self.out.write(f"{DONE_THINKING}\n\n", dim=True)
            self._thinking = False
        elif part.kind == "text" and self._answered:  # a blank line between answer parts
            self.out.end_line()
            self.out.write("\n")
        if part.kind == "tool_call":
            self.out.end_line()
            self.out.write(f"-> {FUNCTIONS}{part.name} ", dim=True)
        self._answered = self._answered or part.kind == "text"


def show_reply(
    tokens: Iterable[int],
    tokenizer: Tokenizer,
    *,
    harmony: bool = True,
    tools: Collection[str] = (),
    show_reasoning: bool = True,
) -> Reply:
    """Print a reply as its tokens arrive (`harmony=False`: as plain text); return it."""
    reply, writer = Reply(tokenizer, harmony=harmony, tools=tools), Writer()
    printer = ReplyPrinter(writer, show_reasoning)
    try:
        for token in tokens:
            printer.show(reply.feed(token))
        printer.show(reply.finish())
    finally:
        writer.end_line()
    return reply
