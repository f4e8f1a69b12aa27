"""Constrained decoding with llguidance: grammars compiled once, each step's mask made beside the
forward pass.

`GrammarCompiler(encoding, end_token)` turns Lark grammars (llguidance's dialect, with special
tokens by name) into `Grammar`s for one tiktoken vocabulary, the last `CACHE_SIZE` of them kept,
so a schema is compiled once; `end_token` must be an id the model never writes (llguidance's own
end of grammar: a grammar here ends on tokens it names). `GrammarMask(grammar, prefix, device)`
is the `TokenMask` of one generation: `request(token)` hands the token just sampled to a worker
thread, which advances the matcher and fills the next step's bitmask while the model runs the
forward pass of that token; `allowed(logits)` waits for it. On the CPU the worker also unpacks
the bits (numpy), and where at most `FEW` ids are allowed (inside JSON's structure, most steps)
hands over those ids, so sampling reads only their logits: on two busy cores every op over the
whole vocabulary costs milliseconds, as its two threads wait for each other. On CUDA the bitmask
lives in pinned memory, goes over in one non-blocking copy a step and is unpacked there (two
buffers take turns: the sampled token's read ends each step, so a buffer is free when reused).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import llguidance
import numpy as np
import torch

from ..errors import GptossError

CACHE_SIZE = 64  # compiled grammars kept per vocabulary
FEW = 16_384  # allowed ids handed over as ids: below torch's grain (32,768), one thread samples
# llguidance's own bounds on a grammar's cost, which bound its compile time (measured worst
# cases in the README): lexer fuel at ~50k/ms, grammar symbols, lexer states.
LIMITS = {"initial_lexer_fuel": 1_000_000, "max_grammar_size": 200_000, "max_lexer_states": 100_000}

_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptoss-lite-mask")


class GrammarError(GptossError):
    """A grammar (or a schema in it) that llguidance refuses, in one line; `rule` names the
    grammar rule the refusal points at, when it points at one."""

    def __init__(self, message: str, rule: str | None = None) -> None:
        super().__init__(message)
        self.rule = rule


def _refusal(error: str, lark: str) -> GrammarError:
    """llguidance's error (a first line "at LINE(COLUMN): reason", then the grammar around it)
    as one line, with the rule of that line."""
    first = error.splitlines()[0] if error else "the grammar is refused"
    at = re.match(r"at (\d+)\(\d+\): ", first)
    lines = lark.splitlines()
    if at is None or not 0 < int(at.group(1)) <= len(lines):
        return GrammarError(first)
    rule = lines[int(at.group(1)) - 1].partition(":")[0].strip()
    return GrammarError(first[at.end() :], rule)


@dataclass(frozen=True)
class Grammar:
    """A compiled grammar: a matcher at its start, copied for each generation."""

    matcher: llguidance.LLMatcher
    vocab: int
    compile_seconds: float


class GrammarCompiler:
    """Compiles and caches grammars for one tiktoken vocabulary of `n_vocab` ids."""

    def __init__(self, encoding, end_token: int, n_vocab: int) -> None:
        self._encoding, self._end, self.n_vocab = encoding, end_token, n_vocab
        self._tokenizer: llguidance.LLTokenizer | None = None  # ~2 s to build: on first use
        self._cache: OrderedDict[str, Grammar] = OrderedDict()
        self._lock = threading.RLock()

    def compile(self, lark: str) -> Grammar:
        """The grammar of `lark`, compiled (or from the cache); a `GrammarError` if refused."""
        with self._lock:
            if lark in self._cache:
                self._cache.move_to_end(lark)
                return self._cache[lark]
            start = time.perf_counter()
            limits = llguidance.LLParserLimits(**LIMITS, verbose_errors=False)
            matcher = llguidance.LLMatcher(self.tokenizer(), lark, log_level=0, limits=limits)
            if matcher.is_error():
                raise _refusal(matcher.get_error(), lark)
            grammar = Grammar(matcher, self.n_vocab, time.perf_counter() - start)
            self._cache[lark] = grammar
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return grammar

    def tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's view of the vocabulary, built once."""
        with self._lock:
            return self._tokenizer or self._build()

    def _build(self) -> llguidance.LLTokenizer:
        names: dict[int, str] = {}
        for name, token in self._encoding._special_tokens.items():
            if token not in names or names[token].startswith("<|reserved"):
                names[token] = name  # one name an id: a format token's, not its alias
        self._tokenizer = llguidance.LLTokenizer.from_tiktoken(
            encoder=self._encoding._mergeable_ranks,
            special_tokens={name: token for token, name in names.items()},
            pattern=self._encoding._pat_str,
            eos_token=self._end,
            n_vocab=self.n_vocab,
        )
        return self._tokenizer


class GrammarMask:
    """The per-step token mask of one generation held to `grammar`, after the `prefix` tokens
    (a reply's start already in the prompt)."""

    def __init__(
        self, grammar: Grammar, prefix: Sequence[int] = (), device: torch.device | None = None
    ) -> None:
        self._matcher = grammar.matcher.deep_copy()
        if not self._matcher.consume_tokens(list(prefix)):
            raise GrammarError(f"the reply's start does not fit its grammar: {self._error()}")
        words = (grammar.vocab + 31) // 32
        self._cuda = device is not None and device.type == "cuda"
        pinned = self._cuda
        self._buffers = [torch.zeros(words, dtype=torch.int32, pin_memory=pinned) for _ in range(2)]
        self._step = 0
        self._pending: Future | None = None

    def request(self, token: int | None) -> None:
        """Start making the mask that follows `token` (None: the first token's)."""
        buffer = self._buffers[self._step % 2]
        self._step += 1
        self._pending = _worker.submit(self._advance, token, buffer)

    def allowed(self, logits: torch.Tensor) -> torch.Tensor:
        """Which of the logits' ids [V] the grammar allows next, on their device: a bool mask
        [V], or (on the CPU, when few) the ids themselves."""
        found = self._pending.result()
        if self._cuda:
            found = unpack_bits(found.to(logits.device, non_blocking=True))
        return _fit(found, logits.shape[-1])

    def _advance(self, token: int | None, buffer: torch.Tensor) -> torch.Tensor:
        if token is not None and not self._matcher.consume_token(token):
            raise GrammarError(f"token {token} does not fit the grammar: {self._error()}")
        self._matcher.unsafe_compute_mask_ptr(buffer.data_ptr(), buffer.numel() * 4)
        if self._matcher.is_error():
            raise GrammarError(f"the grammar allows no next token: {self._error()}")
        if self._cuda:
            return buffer
        words = buffer.numpy()
        used = np.flatnonzero(words)  # the words with an allowed id
        if len(used) * 32 <= FEW:
            bits = np.unpackbits(words[used].view(np.uint8), bitorder="little").reshape(-1, 32)
            return torch.from_numpy((used[:, None] * 32 + np.arange(32))[bits.view(bool)])
        bits = np.unpackbits(words.view(np.uint8), bitorder="little")
        return torch.from_numpy(bits).view(torch.bool)

    def _error(self) -> str:
        return self._matcher.get_error() or "no token can follow"


def unpack_bits(words: torch.Tensor) -> torch.Tensor:
    """Bool [32 * len(words)] from a bitmask of int32 words: bit j of word i is id 32*i + j."""
    shifts = torch.arange(32, dtype=torch.int32, device=words.device)
    return ((words.unsqueeze(-1) >> shifts) & 1).view(-1).bool()


def _fit(allowed: torch.Tensor, vocab: int) -> torch.Tensor:
    """`allowed` (ids, or a mask cut or padded: ids past the bitmask are not allowed) for logits
    of `vocab` ids."""
    if allowed.dtype != torch.bool:
        return allowed if not len(allowed) or allowed[-1] < vocab else allowed[allowed < vocab]
    if allowed.numel() < vocab:
        return torch.cat((allowed, allowed.new_zeros(vocab - allowed.numel())))
    return allowed[:vocab]
