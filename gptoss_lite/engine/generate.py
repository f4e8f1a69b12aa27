"""Prefill and cached decode as plain functions over a model and its KV cache.

`check_fits` is the one context-fit rule: a prompt and the tokens asked to follow it must fit the
context, or a `GptossError` gives the numbers (the CLI, the chat session, the memory report and
the runner all ask it, before any forward pass). `prefill` runs the prompt through the model in
chunks (bounded activation memory whatever the prompt length), telling `progress(done, total)`
after each; `decode_step` feeds one token; `next_token` samples (among the `allowed` ids only,
when a `TokenMask` constrains the reply) and refuses a broken model (NaN or infinite logits) in
the same host transfer that reads the token. `reusable_prefix` is the one rule of how much of a
cache a new prompt keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from ..errors import GptossError
from ..model.cache import KVCache
from ..model.transformer import Transformer
from .sampling import Sampling, sample

PREFILL_CHUNK = 512  # tokens per prefill step unless the memory profile says otherwise

Progress = Callable[[int, int], None]  # (done, total), called as work advances


class TokenMask(Protocol):
    """Which tokens may come next, step by step (e.g. a grammar's): `request(token)` as the
    forward pass of `token` starts (None before the prompt's), `allowed(logits)` once it ends,
    in either form `next_token` takes."""

    def request(self, token: int | None) -> None: ...

    def allowed(self, logits: torch.Tensor) -> torch.Tensor: ...


def check_fits(prompt_tokens: int, new_tokens: int | None, context: int) -> int:
    """How many tokens may follow a prompt of `prompt_tokens` in `context`: `new_tokens`, or
    all the room left when it is None; a one-line `GptossError` with the numbers otherwise."""
    if prompt_tokens == 0:
        raise GptossError("the prompt is empty")
    if new_tokens is None:
        if prompt_tokens >= context:
            raise GptossError(
                f"the prompt is {prompt_tokens:,} tokens but the context holds {context:,}; "
                "use a larger --context or a shorter prompt"
            )
        return context - prompt_tokens
    if prompt_tokens + new_tokens > context:
        raise GptossError(
            f"the prompt ({prompt_tokens:,} tokens) + {new_tokens:,} new tokens exceed the "
            f"context of {context:,} tokens; use a larger --context, a shorter prompt or fewer "
            "new tokens"
        )
    return new_tokens


def reusable_prefix(prompt: list[int], cached: list[int], cache: KVCache) -> int:
    """How many leading tokens of `prompt` the cache holding `cached` can keep: their longest
    common prefix, leaving at least one prompt token to feed (for its logits), if the cache can
    be cut back to it; else 0."""
    common, limit = 0, min(len(prompt) - 1, len(cached))
    while common < limit and prompt[common] == cached[common]:
        common += 1
    return common if cache.can_rewind_to(common) else 0


@torch.inference_mode()
def prefill(
    model: Transformer,
    cache: KVCache,
    tokens: torch.Tensor,
    chunk: int = PREFILL_CHUNK,
    all_logits: bool = False,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Feed tokens [T] after the cache's contents; logits [1, V] (or [T, V] with all_logits)."""
    total = tokens.shape[0]
    outputs = []
    for start in range(0, total, chunk):
        part = tokens[start : start + chunk]
        last = start + chunk >= total
        logits = model(part, cache, last_only=not all_logits, logits=all_logits or last)
        if logits is not None:
            outputs.append(logits)
        if progress is not None:
            progress(min(start + chunk, total), total)
    return torch.cat(outputs)


@torch.inference_mode()
def decode_step(model: Transformer, cache: KVCache, token: int) -> torch.Tensor:
    """Feed one token after the cache's contents; its logits [1, V]."""
    return model(torch.tensor([token], device=model.device), cache, last_only=True)


def next_token(
    logits: torch.Tensor,
    sampling: Sampling,
    generator: torch.Generator | None = None,
    allowed: torch.Tensor | None = None,
) -> int:
    """The next token id sampled from logits [V], among the ids `allowed` if given (a bool mask
    [V], or the ids themselves [k]: then only those k logits are read); a `GptossError` if the
    logits are not finite."""
    if allowed is not None and allowed.dtype != torch.bool:
        token = allowed[sample(logits[allowed], sampling, generator)]  # the same distribution
    else:
        scores = logits if allowed is None else torch.where(allowed, logits, float("-inf"))
        token = sample(scores, sampling, generator)
    # One transfer for both: the token and whether the row's max is finite (NaN propagates).
    token_id, finite = torch.stack((token, logits.max().isfinite().long())).tolist()
    if not finite:
        raise GptossError(
            "the model's logits are NaN or infinite: its weights are broken, or overflow the "
            "activation dtype"
        )
    return token_id
