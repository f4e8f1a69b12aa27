"""Conversations on a `Runner`: a prompt in, a stream of reply tokens out, history between turns.

`ChatSession.send(text)` renders the harmony conversation plus a new user message and returns a
`Generation`: an iterator over the reply's token ids that counts and times them (`ReplyStats`).
The caller reads the reply as it streams (`chat.reply.Reply`) and hands its messages back with
`commit(messages)` to keep the turn; a reply that called a tool is followed by
`send_tool_result(name, output)`, which continues the chain (whose reasoning is kept). Each new
prompt begins with the tokens already cached, so the runner prefills only what is new; but
harmony drops the last reply's analysis when it re-renders it, so the cache must rewind over a
whole reply: load the runner with `ring_slots=chat_ring_slots(config)`. A `Generation` also
serves any other prompt, e.g. plain text stopping at <|endoftext|>, and keeps each token's
log-probability (`logprobs`) when its `Sampling` asks for them. Given a compiled `Grammar`
(`constraint.compile_reply`), every token it makes is one the grammar allows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import torch

from ..chat.harmony import FUNCTIONS, Conversation, Message, check_effort, render_prompt
from ..chat.stats import ReplyStats
from ..chat.tokenizer import Tokenizer
from ..chat.tokens import STOP_TOKENS
from ..config import ModelConfig
from ..errors import GptossError
from .generate import check_fits
from .grammar import Grammar, GrammarMask
from .logprobs import TokenLogprob, token_logprobs
from .runner import Runner
from .sampling import Sampling

REWIND_TOKENS = 4096  # a longer reply makes the next turn prefill the whole conversation again


class Generation:
    """The token ids of one reply as the runner makes them, counted and timed on the way."""

    def __init__(
        self,
        runner: Runner,
        prompt: list[int],
        sampling: Sampling,
        stop: Sequence[int],
        grammar: Grammar | None = None,
        prefix: Sequence[int] = (),
    ) -> None:
        """`prefix`: the tokens at the end of `prompt` that already belong to the reply (a
        forced call's header), which the grammar reads before the first generated token."""
        self.max_new_tokens = check_fits(len(prompt), sampling.max_new_tokens, runner.context)
        self.stop = tuple(stop)
        self.output: list[int] = []
        self.stats = ReplyStats(prompt_tokens=len(prompt))
        self.logprobs: list[TokenLogprob] | None = None if sampling.logprobs is None else []
        self._runner = runner
        self._tokens = runner.generate(
            prompt,
            replace(sampling, max_new_tokens=self.max_new_tokens),
            stop=self.stop,
            mask=None if grammar is None else GrammarMask(grammar, prefix, runner.device),
            observe=None if self.logprobs is None else self._observe(sampling.logprobs),
        )

    def __iter__(self) -> Iterator[int]:
        while True:
            start = time.perf_counter()
            token = next(self._tokens, None)
            elapsed = time.perf_counter() - start
            if token is None:
                return
            if self.output:
                self.stats.decode_seconds += elapsed
            else:
                self.stats.prefill_seconds = elapsed
                self.stats.cached_tokens = self.stats.prompt_tokens - self._runner.prefilled
            self.output.append(token)
            self.stats.generated_tokens += 1
            yield token

    def _observe(self, top: int) -> Callable[[torch.Tensor, int], None]:
        def record(logits: torch.Tensor, token: int) -> None:
            self.logprobs.append(token_logprobs(logits, token, top))

        return record

    def close(self) -> None:
        """Abandon the reply: the runner's generator ends here (its cache keeps what was made)."""
        self._tokens.close()

    @property
    def finish_reason(self) -> str:
        """ "stop" (a stop token), "length" (the token limit) or "interrupted" (neither, yet)."""
        if self.output and self.output[-1] in self.stop:
            return "stop"
        return "length" if len(self.output) == self.max_new_tokens else "interrupted"


class ChatSession:
    """A harmony conversation with one runner, reusing the KV cache from turn to turn."""

    def __init__(
        self,
        runner: Runner,
        tokenizer: Tokenizer,
        conversation: Conversation | None = None,
        sampling: Sampling | None = None,
        grammar: Grammar | None = None,
    ) -> None:
        self.runner, self.tokenizer = runner, tokenizer
        self.conversation = conversation or Conversation()
        self.sampling = sampling or Sampling()
        self.grammar = grammar  # every reply held to it
        self._pending: Message | None = None

    def send(self, text: str) -> Generation:
        """Start the reply to user message `text`; iterate the result for its token ids."""
        return self._reply_to(Message.user(text))

    def send_tool_result(self, name: str, output: str) -> Generation:
        """After a reply that ended in a call of function `name` (kept with `commit`), give the
        tool's `output` and start the reply that continues the chain."""
        return self._reply_to(Message.tool_result(f"{FUNCTIONS}{name}", output))

    def commit(self, messages: list[Message]) -> None:
        """Keep the last message sent and its reply's `messages` in the history (skip this to
        drop them)."""
        if self._pending is None:
            raise GptossError("commit() needs a send() first")
        self.conversation.messages += [self._pending, *messages]
        self._pending = None

    def truncate(self, length: int) -> None:
        """Keep only the first `length` messages of the history (to drop an abandoned turn)."""
        del self.conversation.messages[length:]
        self._pending = None

    def _reply_to(self, message: Message) -> Generation:
        self._pending = message
        prompt = next_prompt(self.conversation, message, self.tokenizer)
        return Generation(self.runner, prompt, self.sampling, STOP_TOKENS, self.grammar)

    def reset(self) -> None:
        """Forget every turn; the settings (effort, instructions, identity) stay."""
        self.conversation.messages.clear()
        self._pending = None

    def set_effort(self, effort: str) -> None:
        """Reasoning effort for the next turns: low, medium or high."""
        self.conversation.reasoning_effort = check_effort(effort)


def user_prompt(conversation: Conversation, text: str, tokenizer: Tokenizer) -> list[int]:
    """The prompt asking for the reply to user message `text` after `conversation`."""
    return next_prompt(conversation, Message.user(text), tokenizer)


def next_prompt(conversation: Conversation, message: Message, tokenizer: Tokenizer) -> list[int]:
    """The prompt asking for the reply to `message` (a user turn, a tool result) after
    `conversation`."""
    turns = [*conversation.messages, message]
    return render_prompt(replace(conversation, messages=turns), tokenizer)


def chat_ring_slots(config: ModelConfig, reply_tokens: int | None = None) -> int:
    """Ring slots that let the cache rewind over a reply of `reply_tokens` (default
    REWIND_TOKENS), as it must when the next turn re-renders that reply without its analysis."""
    return config.sliding_window + (reply_tokens or REWIND_TOKENS)
