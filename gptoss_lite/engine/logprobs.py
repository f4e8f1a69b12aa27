"""Log-probabilities of generated tokens, as the OpenAI APIs report them.

`token_logprobs(logits, token, top)` reads one step of a generation: the log-softmax of the
model's own logits [V] in float32, before temperature, top-p, top-k or any mask (the model's
distribution, which is what OpenAI reports, whatever the sampling settings), the value of the
token chosen, and the `top` most likely tokens, most likely first. It costs one host transfer,
so a generation asks for it only when a client wants logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_TOP = 20  # the most alternatives the OpenAI APIs let a client ask for


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the `top` most likely tokens at its step."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token, log-probability), most likely first


def token_logprobs(logits: torch.Tensor, token: int, top: int = 0) -> TokenLogprob:
    """The log-probability of `token` under `logits` [V], with the `top` most likely tokens."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best = torch.topk(logprobs, top)  # sorted, most likely first
    values = torch.cat((logprobs[token].view(1), best.values)).tolist()
    top_pairs = zip(best.indices.tolist(), values[1:], strict=True)
    return TokenLogprob(token, values[0], tuple(top_pairs))
