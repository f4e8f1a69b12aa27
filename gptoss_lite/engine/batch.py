"""Continuous batching: several generations decoded together, each exactly as if it ran alone.

A `Batch` runs one sequence per cache of a `KVPool`. `add(request)` gives a request a free slot:
the one whose cached tokens share the longest prefix with its prompt when that covers at least
half of it (a client resending its history; llama.cpp picks its slots by the same 0.5 prompt
similarity), else the slot left longest ago, never used first; either way the prompt's common
prefix with the slot's cache is reused. `step()` advances every sequence once: the next chunk
(`prefill_chunk` tokens, or what is left) of the prompts with the fewest tokens left, as many as
fit in `prefill_chunk` tokens together (at least one), in one pass whose experts run once for all
of them, so a short request answers while a long prompt is still prefilling and requests
arriving together all start at the next step; then one forward pass over the sequences that
have a token to feed (`Transformer.decode`). So a request
joins at the next step, and the stall prompts add to the decoding sequences is bounded by one
chunk's tokens per step (`step_chunk`: the plan's chunk, on a CPU at most CPU_STEP_TOKENS).
A sequence leaves when it samples a stop token or reaches `max_new_tokens` (its last token is
never fed, as in `Runner.generate`), or is cancelled; its slot keeps its cache for the next
request.
Each sequence samples with its own settings, seeded generator and token mask (structured
output, `Request.mask`), and its arithmetic does not depend on the others: its prompt is chunked
from where its reused prefix ends, as `Runner.generate` does, and a decode row is computed as it
would be alone where the kernels compute rows independently (the CPU kernels), so a seeded
request gives the same tokens batched or alone. A sequence whose logits are broken (NaN) fails
alone; the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from ..chat.stats import ReplyStats
from ..errors import GptossError
from ..model.cache import KVCache
from ..model.transformer import Transformer
from .generate import TokenMask, check_fits, next_token, reusable_prefix
from .logprobs import TokenLogprob, token_logprobs
from .sampling import Sampling

SIMILAR = 0.5  # a slot whose cache holds at least this share of a prompt is that prompt's own
# On a CPU a prefill chunk of the plan's size takes seconds to minutes: with other sequences to
# decode, a step feeds at most this many prompt tokens (about 0.35 s on the 4-layer 20b geometry).
CPU_STEP_TOKENS = 64


def step_chunk(prefill_chunk: int, sequences: int, device: torch.device) -> int:
    """The prompt tokens a step of a batch of `sequences` feeds: the plan's `prefill_chunk`, but
    on a CPU no more than CPU_STEP_TOKENS when other sequences may be waiting to decode."""
    if sequences == 1 or device.type != "cpu":
        return prefill_chunk
    return min(prefill_chunk, CPU_STEP_TOKENS)


@dataclass(frozen=True)
class Request:
    """One generation: its prompt, how its tokens are drawn (`max_new_tokens` None: until the
    context is full), its stop tokens (one of them ends it and is the last token given), and the
    mask that limits each step's tokens (structured output), if any."""

    prompt: tuple[int, ...]
    sampling: Sampling
    stop: frozenset[int] = frozenset()
    mask: TokenMask | None = None


class Sequence:
    """A request running in a slot: its progress, its tokens and its numbers (`stats`: the
    prefill time is the wait from `add` to the first token)."""

    def __init__(
        self, request: Request, max_new_tokens: int, slot: int, reused: int, device: torch.device
    ) -> None:
        self.request, self.max_new_tokens, self.slot = request, max_new_tokens, slot
        self.fed = reused  # prompt tokens in the cache
        self.output: list[int] = []
        self.finish_reason: str | None = None  # "stop", "length", "interrupted" or "error"
        self.error: GptossError | None = None
        self.stats = ReplyStats(prompt_tokens=len(request.prompt), cached_tokens=reused)
        # Each token's log-probability, when the request asks for them (`Sampling.logprobs`).
        self.logprobs: list[TokenLogprob] | None = None
        if request.sampling.logprobs is not None:
            self.logprobs = []
        seed = request.sampling.seed
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(torch.seed() if seed is None else seed)
        self._started = self._last = time.perf_counter()

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.request.prompt)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _sample(self, logits: torch.Tensor) -> None:
        s, mask = self.request.sampling, self.request.mask
        try:
            allowed = None if mask is None else mask.allowed(logits)
            token = next_token(logits, s, self.generator, allowed)
        except GptossError as exc:
            self.error, self.finish_reason = exc, "error"
            return
        now = time.perf_counter()
        if self.output:
            self.stats.decode_seconds += now - self._last
        else:
            self.stats.prefill_seconds = now - self._started
        self._last = now
        self.output.append(token)
        self.stats.generated_tokens += 1
        if self.logprobs is not None:
            self.logprobs.append(token_logprobs(logits, token, s.logprobs))
        if token in self.request.stop:
            self.finish_reason = "stop"
        elif len(self.output) == self.max_new_tokens:
            self.finish_reason = "length"
        elif mask is not None:
            mask.request(token)  # the next mask is made while this token's pass runs


class Batch:
    """Sequences decoded together, one per cache of `caches` (slots of one `KVPool`). Every
    `add` and `step` runs inside `guard()` (e.g. the runner's hold on its caches)."""

    def __init__(
        self,
        model: Transformer,
        caches: Seq[KVCache],
        prefill_chunk: int,
        guard: Callable[[], AbstractContextManager] = nullcontext,
    ) -> None:
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be positive, got {prefill_chunk}")
        self.model, self.caches, self.prefill_chunk = model, list(caches), prefill_chunk
        self._guard = guard
        self.running: list[Sequence] = []
        self._tokens: list[list[int]] = [[] for _ in self.caches]  # each cache holds a prefix
        self._left_at = [-1] * len(self.caches)  # the step each slot was last left (-1: never)
        self._steps = 0

    @property
    def context(self) -> int:
        """The most tokens (prompt + generated) one sequence may hold."""
        return self.caches[0].capacity

    @property
    def free(self) -> int:
        """Slots no sequence runs in."""
        return len(self.caches) - len(self.running)

    def cached(self, slot: int) -> list[int]:
        """The tokens whose keys and values slot `slot` holds."""
        return self._tokens[slot][: self.caches[slot].length]

    def add(self, request: Request) -> Sequence:
        """Start `request` in a free slot (a `GptossError` if its length is refused, a
        `RuntimeError` if no slot is free); it runs from the next `step()`."""
        prompt = list(request.prompt)
        most = check_fits(len(prompt), request.sampling.max_new_tokens, self.context)
        if not self.free:
            raise RuntimeError("every slot is running a sequence")
        with self._guard():
            slot, reused = self._slot_for(prompt)
            self.caches[slot].rewind(reused)
        self._tokens[slot] = prompt
        sequence = Sequence(request, most, slot, reused, self.model.device)
        if request.mask is not None:
            request.mask.request(None)  # made while the prompt is prefilled
        self.running.append(sequence)
        return sequence

    def cancel(self, sequence: Sequence) -> None:
        """End `sequence` before the next step (nothing if it has ended)."""
        if sequence in self.running:
            sequence.finish_reason = "interrupted"
            self._leave(sequence)

    def step(self) -> list[Sequence]:
        """Advance every running sequence once; the sequences that got a token (the last of
        their `output`) or ended (`finish_reason` set) in this step."""
        with self._guard(), torch.inference_mode():
            return self._step()

    def _step(self) -> list[Sequence]:
        self._steps += 1
        decoding = [s for s in self.running if not s.prefilling]
        prefilling = [s for s in self.running if s.prefilling]
        chunked, budget = [], self.prefill_chunk
        # A prompt's chunks keep their bounds (a full chunk or its rest), as it would alone.
        for sequence in sorted(prefilling, key=lambda s: len(s.request.prompt) - s.fed):
            size = min(self.prefill_chunk, len(sequence.request.prompt) - sequence.fed)
            if size > budget:  # never the first: a chunk is at most prefill_chunk
                break
            budget -= size
            chunked.append(sequence)
        changed = self._prefill(chunked)
        if decoding:
            tokens = torch.tensor([s.output[-1] for s in decoding], device=self.model.device)
            logits = self.model.decode(tokens, [self.caches[s.slot] for s in decoding])
            for row, sequence in enumerate(decoding):
                sequence._sample(logits[row])
            changed += decoding
        for sequence in changed:
            if sequence.finished:
                self._leave(sequence)
        return changed

    def _prefill(self, sequences: list[Sequence]) -> list[Sequence]:
        """Feed the next chunk of each sequence's prompt, the chunks of more than one token in
        one pass when there are several (`Transformer.forward_parts`: their experts run once);
        the sequences whose chunk was the last, their first token sampled."""
        chunk, device = self.prefill_chunk, self.model.device
        part = {
            s: torch.tensor(s.request.prompt[s.fed : s.fed + chunk], device=device)
            for s in sequences
        }
        last = {s: s.fed + part[s].numel() == len(s.request.prompt) for s in sequences}
        joint = [s for s in sequences if part[s].numel() > 1]
        logits = {}
        if len(joint) > 1:
            caches = [self.caches[s.slot] for s in joint]
            out = self.model.forward_parts(
                [part[s] for s in joint], caches, [last[s] for s in joint]
            )
            logits = dict(zip(joint, out, strict=True))
        for s in sequences:
            if s not in logits:
                cache = self.caches[s.slot]
                logits[s] = self.model(part[s], cache, last_only=True, logits=last[s])
            s.fed += part[s].numel()
        done = [s for s in sequences if last[s]]
        for sequence in done:
            sequence._sample(logits[sequence][-1])
        return done

    def _leave(self, sequence: Sequence) -> None:
        self.running.remove(sequence)
        self._tokens[sequence.slot] += sequence.output
        self._left_at[sequence.slot] = self._steps

    def _slot_for(self, prompt: list[int]) -> tuple[int, int]:
        """(free slot, prompt tokens its cache already holds) for a new prompt."""
        busy = {s.slot for s in self.running}
        free = [i for i in range(len(self.caches)) if i not in busy]
        reuse = {i: reusable_prefix(prompt, self.cached(i), self.caches[i]) for i in free}
        best = max(free, key=lambda i: reuse[i])
        if reuse[best] < SIMILAR * len(prompt):
            best = min(free, key=lambda i: self._left_at[i])
        return best, reuse[best]
