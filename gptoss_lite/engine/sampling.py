"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus).

`sample` is a pure function of the logits and an explicit `torch.Generator`, so a seed gives the
same tokens every time. Temperature 0 means argmax. gpt-oss recommends temperature 1, top_p 1.
"""

from __future__ import annotations

import torch


def sample(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token id (0-d long tensor) from logits [V]."""
    if temperature < 0 or not 0 < top_p <= 1 or (top_k is not None and top_k < 1):
        raise ValueError("sampling needs temperature >= 0, 0 < top_p <= 1 and top_k >= 1")
    if temperature == 0:
        return logits.argmax()
    scaled = logits.float() / temperature
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
    return torch.multinomial(probs, 1, generator=generator)[0]
