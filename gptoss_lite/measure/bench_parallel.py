"""Aggregate decode speed of several sequences decoded together, against one alone.

`bench_parallel` runs rounds of one stream alone and rounds of `streams` streams together on a
runner's `Batch`, alternated in one run (so a shared machine's drift hits both alike), after a
warm-up round of each. Every stream is a fresh random prompt (no cached prefix) decoded greedily
for `gen_tokens`. A round's decode speed counts the tokens made from the moment every stream has
its first token (the prompts' chunks no longer interleave then) to the last, per second of wall
time; the figures are the medians of the rounds, and the ratio is the batching's gain.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from itertools import count

from ..engine.batch import Batch, Request
from ..engine.runner import Runner
from ..engine.sampling import Sampling
from .bench import clock, random_prompt


@dataclass
class ParallelResult:
    """Decode tok/s of one stream and of `streams` together, per round."""

    streams: int
    kernels: str
    prompt_tokens: int
    gen_tokens: int
    solo_runs: list[float]
    batch_runs: list[float]  # all streams' tokens together, per second

    @property
    def solo_tok_s(self) -> float:
        return statistics.median(self.solo_runs)

    @property
    def batch_tok_s(self) -> float:
        return statistics.median(self.batch_runs)

    @property
    def speedup(self) -> float:
        """The aggregate's median over the single stream's."""
        return self.batch_tok_s / self.solo_tok_s

    def to_dict(self) -> dict:
        derived = {name: getattr(self, name) for name in ("solo_tok_s", "batch_tok_s", "speedup")}
        return asdict(self) | derived


def bench_parallel(
    runner: Runner,
    streams: int,
    prompt_tokens: int,
    gen_tokens: int,
    repeats: int = 3,
    seed: int = 0,
) -> ParallelResult:
    """Warm up, then `repeats` times a round of one stream and a round of `streams` (the runner
    must have that many caches: `load(parallel=...)`)."""
    batch = runner.batch()
    seeds = count(seed)

    def round_rate(n: int) -> float:
        sampling = Sampling(max_new_tokens=gen_tokens, temperature=0)
        prompts = [random_prompt(runner.config, prompt_tokens, next(seeds)) for _ in range(n)]
        sequences = [batch.add(Request(tuple(p.tolist()), sampling)) for p in prompts]
        _step_until(batch, lambda: all(s.output for s in sequences))
        made = sum(len(s.output) for s in sequences)
        start = clock(runner.device)
        _step_until(batch, lambda: not batch.running)
        seconds = clock(runner.device) - start
        return (sum(len(s.output) for s in sequences) - made) / seconds

    for n in (1, streams):  # warm-up: kernels, allocator, page faults
        round_rate(n)
    solo, together = [], []
    for _ in range(repeats):
        solo.append(round_rate(1))
        together.append(round_rate(streams))
    kernels = runner.model.kernel_name
    return ParallelResult(streams, kernels, prompt_tokens, gen_tokens, solo, together)


def _step_until(batch: Batch, done) -> None:
    while not done():
        batch.step()
