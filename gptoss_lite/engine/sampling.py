"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus).

`sample` is a pure function of the logits and an explicit `torch.Generator`, so a seed gives the
same tokens every time. Temperature 0 means argmax. gpt-oss recommends temperature 1, top_p 1.
`check_sampling` is the one check of the settings, used by the CLI before loading and by
`Runner.generate`; `Sampling` holds them for one reply.
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
    """How replies are sampled; `max_new_tokens` None means until the context is full."""

    max_new_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    logprobs: int | None = None  # None: none; k: each token's and the k likeliest (logprobs.py)


def check_sampling(
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    max_new_tokens: int | None = None,
) -> None:
    """A one-line `GptossError` for a sampling setting the sampler cannot use."""
    if not _number(temperature) or not temperature >= 0:
        raise GptossError(f"temperature {temperature!r}: use a finite number >= 0 (0 is greedy)")
    if not _number(top_p) or not 0 < top_p <= 1:
        raise GptossError(f"top_p {top_p!r}: use a number in (0, 1]")
    if top_k is not None and not (_integer(top_k) and top_k >= 1):
        raise GptossError(f"top_k {top_k!r}: use an integer >= 1")
    if seed is not None and not (_integer(seed) and 0 <= seed < SEEDS):
        raise GptossError(f"seed {seed!r}: use an integer in [0, 2**64)")
    if max_new_tokens is not None and not (_integer(max_new_tokens) and max_new_tokens >= 1):
        raise GptossError(f"max_new_tokens {max_new_tokens!r}: use an integer >= 1")


def _number(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x: object) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def sample(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token id (0-d long tensor) from logits [V] (settings as `check_sampling` allows).

    No host sync: the draw is the argmax of p / E with E ~ Exponential(1), which picks token i
    with probability p_i, like a multinomial draw. A NaN logit is drawn (argmax prefers NaN),
    so the caller can tell a broken model from the sampled token's logit.
    """
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
