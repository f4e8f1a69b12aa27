"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus).

`Sampling` holds how the tokens of a reply are chosen, for the CLI, the server and the Python API
alike, and checks its values when it is made (a one-line `GptossError`, before anything loads).
`sample` is a pure function of the logits and an explicit `torch.Generator`, so a seed gives the
same tokens every time. Temperature 0 means argmax. gpt-oss recommends temperature 1, top_p 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import torch

from ..errors import GptossError

SEEDS = 2**64  # torch.Generator.manual_seed takes a seed in [0, 2**64)


@dataclass(frozen=True)
class Sampling:
    """How the tokens of one reply are chosen, and what is kept of them; `max_new_tokens` None
    means until the context is full, `seed` None a random one. A value the sampler cannot use is
    a one-line `GptossError`."""

    max_new_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    logprobs: int | None = None  # None: none; k: each token's and the k likeliest (logprobs.py)

    def __post_init__(self) -> None:
        t, p, k, seed, n = self.temperature, self.top_p, self.top_k, self.seed, self.max_new_tokens
        if not _number(t) or not t >= 0:
            raise GptossError(f"temperature {t!r}: use a finite number >= 0 (0 is greedy)")
        if not _number(p) or not 0 < p <= 1:
            raise GptossError(f"top_p {p!r}: use a number in (0, 1]")
        if k is not None and not (_integer(k) and k >= 1):
            raise GptossError(f"top_k {k!r}: use an integer >= 1")
        if seed is not None and not (_integer(seed) and 0 <= seed < SEEDS):
            raise GptossError(f"seed {seed!r}: use an integer in [0, 2**64)")
        if n is not None and not (_integer(n) and n >= 1):
            raise GptossError(f"max_new_tokens {n!r}: use an integer >= 1")
        if self.logprobs is not None and not (_integer(self.logprobs) and self.logprobs >= 0):
            raise GptossError(f"logprobs {self.logprobs!r}: use an integer >= 0")


def _number(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x: object) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


GREEDY = Sampling(temperature=0)  # argmax: what benchmarks and reports decode with


def sample(
    logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The next token id (0-d long tensor) from logits [V], drawn as `sampling` says.

    No host sync: the draw is the argmax of p / E with E ~ Exponential(1), which picks token i
    with probability p_i, like a multinomial draw. A NaN logit is drawn (argmax prefers NaN),
    so the caller can tell a broken model from the sampled token's logit.
    """
    temperature, top_p, top_k = sampling.temperature, sampling.top_p, sampling.top_k
    if temperature == 0:
        return logits.argmax()
    # Shifted by the max and in float64, so a tiny temperature such as 1e-300 stays finite.
    scaled = (logits.double() - logits.max()) / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1:
        ordered, order = torch.sort(scaled, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        # Drop a token once the tokens before it already reach top_p (the first always stays).
        drop = cumulative - torch.softmax(ordered, dim=-1) >= top_p
        scaled = scaled.scatter(0, order, ordered.masked_fill(drop, float("-inf")))
    probs = torch.softmax(scaled, dim=-1)
    noise = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / noise).argmax()
