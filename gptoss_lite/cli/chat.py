"""`gptoss-lite chat`: an interactive conversation, one user message per line.

Each reply streams like `run`'s. The conversation's KV cache is kept between turns, so a turn
prefills only its new tokens (`--verbose` shows how many were cached). Lines starting with `/`
are commands: /reset, /effort low|medium|high, /help, /exit (or EOF). On a terminal the input has
a `>>> ` prompt and line editing; from a pipe nothing but the replies reaches stdout. On a
terminal Ctrl-C stops a reply (the turn is then forgotten) or clears the line being typed; from a
pipe it ends the chat with status 130. An error in one turn (e.g. the context is full) is printed
and the chat goes on. With `--tools`, a reply that calls a tool is shown as `-> functions.name
arguments`; the next line (`result of name> ` on a terminal) is the tool's output, and the
reply goes on from it, until the model answers. Without a result (EOF, Ctrl-C) the turn is
forgotten. With `--json-schema FILE` or `--json-object` every answer is JSON (constrained
decoding), printed alone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import click

from ..chat.reply import Part, Reply
from ..engine.session import ChatSession, Generation
from ..errors import GptossError
from .common import Model, open_model, stats_lines
from .display import show_reply
from .options import Options, model_options

PROMPT = ">>> "
INCOMPLETE = "the reply reached --max-tokens before its JSON was complete"
HELP = "commands: /reset (forget the conversation), /effort low|medium|high, /help, /exit"


@click.command()
@model_options
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="After each reply, print token counts (cached / new), tok/s and peak memory on stderr.",
)
def chat(verbose: bool, **kwargs) -> None:
    """Chat with the model, reusing the conversation's KV cache from turn to turn.

    Every option can also be set with the environment variable shown beside it.
    """
    options = Options.take(kwargs)
    conversation = options.conversation()  # a bad --tools file fails before the load
    reply = options.reply_format(conversation)  # and so does a bad --json-schema file
    model = open_model(
        options.model,
        options.opening,
        max_tokens=options.sampling.max_new_tokens,
        chat=True,
        reply=reply,
    )
    session = ChatSession(
        model.runner, model.tokenizer, conversation, options.sampling, model.grammar
    )
    show_reasoning = options.show_reasoning and reply is None  # the JSON alone on stdout
    loop = ChatLoop(session, model, show_reasoning, verbose, is_terminal())
    if loop.interactive:
        click.echo(f"{HELP}; Ctrl-D also exits", err=True)
    for line in loop.lines():
        if not loop.handle(line):
            return


def is_terminal() -> bool:
    """Whether a person types the input (prompt, line editing) rather than a pipe."""
    return sys.stdin.isatty()


@dataclass
class ChatLoop:
    """Reads lines, runs commands and turns, prints replies (and stats when verbose)."""

    session: ChatSession
    model: Model
    show_reasoning: bool
    verbose: bool
    interactive: bool

    def lines(self) -> Iterator[str]:
        """Non-empty input lines until EOF; on a terminal with a prompt and line editing, where
        Ctrl-C drops the line being typed, like a shell."""
        if self.interactive:
            import readline  # noqa: F401  (gives input() history and line editing)
        while True:
            try:
                line = input(PROMPT) if self.interactive else sys.stdin.readline()
            except EOFError:
                return
            except KeyboardInterrupt:
                if not self.interactive:
                    raise
                click.echo()
                continue
            if not line:
                return
            if line.strip():
                yield line.strip()

    def handle(self, line: str) -> bool:
        """Run a /command or a turn; False means leave the chat. Errors are printed and the
        chat goes on."""
        try:
            if line.startswith("/"):
                return self.command(line)
            self.turn(line)
        except GptossError as exc:
            click.echo(f"error: {exc}", err=True)
        if self.interactive:
            click.echo()
        return True

    def command(self, line: str) -> bool:
        """Run a /command; False means leave the chat."""
        name, _, argument = line.partition(" ")
        session = self.session
        if name in ("/exit", "/quit", "/bye"):
            return False
        if name == "/reset":
            session.reset()
            click.echo("(conversation forgotten)", err=True)
        elif name == "/effort":
            if argument.strip():
                session.set_effort(argument)
            click.echo(f"(reasoning effort: {session.conversation.reasoning_effort})", err=True)
        elif name == "/help":
            click.echo(HELP, err=True)
        else:
            raise GptossError(f"unknown command {name}; {HELP}")
        return True

    def turn(self, text: str) -> None:
        """One user message and its streamed reply; while the reply calls a tool (and tools were
        declared), the tool's result is read and the reply goes on. Ctrl-C stops the reply and
        forgets the turn; from a pipe it then also ends the chat (status 130)."""
        session = self.session
        start = len(session.conversation.messages)
        try:
            reply = self.reply(session.send(text))
            while reply is not None and (call := self.pending_call(reply)):
                output = self.tool_result(call)
                if output is None:
                    click.echo("(no tool result; this turn is forgotten)", err=True)
                    break
                reply = self.reply(session.send_tool_result(call.name, output))
        except BaseException:
            session.truncate(start)
            raise
        if reply is None or self.pending_call(reply):
            session.truncate(start)

    def reply(self, generation: Generation) -> Reply | None:
        """Stream one reply and keep it in the history; None when Ctrl-C stopped it."""
        tools = [tool.name for tool in self.session.conversation.tools]
        try:
            reply = show_reply(
                generation, self.model.tokenizer, tools=tools, show_reasoning=self.show_reasoning
            )
        except KeyboardInterrupt:
            click.echo("(interrupted; this turn is forgotten)", err=True)
            if not self.interactive:
                raise
            return None
        finally:
            if self.verbose:
                device = self.model.runner.device
                for line in stats_lines(generation.stats, generation.finish_reason, device):
                    click.echo(line, err=True)
        if self.session.grammar is not None and generation.finish_reason == "length":
            click.echo(f"({INCOMPLETE})", err=True)
        self.session.commit(reply.messages)
        return reply

    def pending_call(self, reply: Reply) -> Part | None:
        """The call of a declared tool that a reply stopped on."""
        return reply.tool_calls[-1] if reply.called_tool else None

    def tool_result(self, call: Part) -> str | None:
        """The tool's output, one line of input; None at EOF (or Ctrl-C on a terminal)."""
        try:
            line = input(f"result of {call.name}> ") if self.interactive else sys.stdin.readline()
        except EOFError:
            return None
        except KeyboardInterrupt:
            if not self.interactive:
                raise
            click.echo()
            return None
        return line.strip() if line else None
