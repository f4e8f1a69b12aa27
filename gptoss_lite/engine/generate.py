"""Prefill and cached decode as plain functions over a model and its KV cache.

`prefill` runs the prompt through the model in chunks (bounded activation memory whatever the
prompt length) and returns the last position's logits; `decode` is a generator that samples a
token, yields it, and feeds it back, one cached step at a time, until a stop token or the limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ..model.cache import KVCache
from ..model.transformer import Transformer
from .sampling import sample

PREFILL_CHUNK = 512  # tokens per prefill step unless the memory profile says otherwise


@torch.inference_mode()
def prefill(
    model: Transformer,
    cache: KVCache,
    tokens: torch.Tensor,
    chunk: int = PREFILL_CHUNK,
    all_logits: bool = False,
) -> torch.Tensor:
    """Feed tokens [T] after the cache's contents; logits [1, V] (or [T, V] with all_logits)."""
    cache.reserve(tokens.shape[0])
    outputs = []
    for start in range(0, tokens.shape[0], chunk):
        part = tokens[start : start + chunk]
        last = start + chunk >= tokens.shape[0]
        logits = model(part, cache, last_only=not all_logits)
        if all_logits or last:
            outputs.append(logits)
    return torch.cat(outputs)


@torch.inference_mode()
def decode(
    model: Transformer,
    cache: KVCache,
    logits: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    stop: Iterable[int] = (),
) -> Iterator[int]:
    """Yield up to `max_new_tokens` sampled ids, starting from the prompt's last logits [1, V].

    A stop token is yielded and ends the generation; it is not fed back into the cache.
    """
    stop = set(stop)
    for n in range(max_new_tokens):
        token = sample(
            logits[-1], temperature=temperature, top_p=top_p, top_k=top_k, generator=generator
        )
        token_id = int(token)
        yield token_id
        if token_id in stop or n == max_new_tokens - 1:
            return
        logits = model(token.view(1).to(model.device), cache, last_only=True)
