"""Static KV cache: full buffers for full-attention layers, rings for sliding layers.

Full-attention layers get `[context, kv_heads, head_dim]` buffers for k and v. Sliding layers
only ever look `sliding_window` positions back, so they get a ring of `ring_slots` slots
(at least the window); position p lives in slot p % ring_slots. A ring larger than the window
lets the cache be rolled back by `ring_slots - window` tokens (used to reuse a conversation's
cache after its last reply is re-rendered differently). Keys are cached after RoPE.
K and V are stored in the formats of `kv_dtypes` (kv_quant.py); new keys and values are quantized
before attention reads them, so a token is seen the same whether it is new or cached.
A `KVPool` holds the caches of several sequences decoded together in one allocation per layer,
`[sequences, slots, kv_heads, head_dim]`: fixed slots, each with the same context, so a slot's
cache is a contiguous view (`KVCache.in_pool`) that every single-sequence path reads unchanged,
and a batched kernel finds sequence i's keys at one stride from the pool's start.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..config import ModelConfig
from ..errors import GptossError
from . import kv_quant
from .kv_quant import UNQUANTIZED, KVDtypes, Quantized


class KVPool:
    """The K and V buffers of `sequences` caches of `context` tokens, and their rings' positions."""

    def __init__(
        self,
        config: ModelConfig,
        sequences: int,
        context: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        ring_slots: int | None = None,
        kv_dtypes: KVDtypes = UNQUANTIZED,
    ):
        if sequences < 1:
            raise ValueError(f"a pool holds at least one sequence, got {sequences}")
        self.config, self.sequences, self.context = config, sequences, context
        self.kv_dtypes = kv_dtypes
        self.ring_slots = max(ring_slots or 0, config.sliding_window)
        shape_kv = (config.num_kv_heads, config.head_dim)
        self.k: list[torch.Tensor | Quantized] = []  # per layer: (sequences, slots, Hkv, D)
        self.v: list[torch.Tensor | Quantized] = []
        where = dict(device=device, dtype=dtype)
        for layer in range(config.num_layers):
            slots = self.ring_slots if config.is_sliding(layer) else context
            self.k.append(kv_quant.empty(kv_dtypes.k, sequences, slots, *shape_kv, **where))
            self.v.append(kv_quant.empty(kv_dtypes.v, sequences, slots, *shape_kv, **where))
        # Absolute position held by each ring slot (-1: empty); shared by all sliding layers.
        self.ring_pos = torch.full(
            (sequences, self.ring_slots), -1, dtype=torch.long, device=device
        )

    def caches(self) -> list[KVCache]:
        """One cache per sequence, each a view of its slot."""
        return [KVCache.in_pool(self, i) for i in range(self.sequences)]

    @property
    def nbytes(self) -> int:
        """Bytes of K and V (codes and scales) of every sequence."""
        tensors = [t for x in self.k + self.v for t in kv_quant.storage(x)]
        return sum(t.numel() * t.element_size() for t in tensors)


class KVCache:
    """One sequence's cache: its slot of a `KVPool` (of its own, unless made by `in_pool`)."""

    def __init__(
        self,
        config: ModelConfig,
        context: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        ring_slots: int | None = None,
        kv_dtypes: KVDtypes = UNQUANTIZED,
    ):
        where = dict(device=device, dtype=dtype, ring_slots=ring_slots, kv_dtypes=kv_dtypes)
        self._view(KVPool(config, 1, context, **where), 0)

    @classmethod
    def in_pool(cls, pool: KVPool, index: int) -> KVCache:
        """The cache of sequence `index` of `pool`."""
        cache = cls.__new__(cls)
        cache._view(pool, index)
        return cache

    def _view(self, pool: KVPool, index: int) -> None:
        self.pool, self.index = pool, index
        self.config, self.context = pool.config, pool.context
        self.kv_dtypes, self.ring_slots = pool.kv_dtypes, pool.ring_slots
        self.k: list[torch.Tensor | Quantized] = [k[index] for k in pool.k]
        self.v: list[torch.Tensor | Quantized] = [v[index] for v in pool.v]
        self.ring_pos = pool.ring_pos[index]
        # How far before a chunk's first token its keys reach back: the window less the token.
        w = self.config.sliding_window
        self._reach = torch.arange(w - 1, 0, -1, device=self.ring_pos.device)
        self.length = 0  # tokens whose keys and values are in the cache
        self.slot_pos: torch.Tensor | None = None  # set by `use_whole_buffers`

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the cache holds: K and V (codes and scales), and the ring positions."""
        kv = [t for x in self.k + self.v for t in kv_quant.storage(x)]
        return [*kv, self.ring_pos]

    @property
    def nbytes(self) -> int:
        """Bytes of K and V (codes and scales)."""
        return sum(t.numel() * t.element_size() for t in self.tensors()[:-1])

    @property
    def capacity(self) -> int:
        """The most tokens (prompt + generated) this cache can hold."""
        return self.context

    def reserve(self, new_tokens: int) -> None:
        """Fail clearly if `new_tokens` more tokens would not fit."""
        if self.length + new_tokens > self.context:
            raise GptossError(
                f"{self.length + new_tokens} tokens do not fit in the context of "
                f"{self.context} tokens; use a larger --context or a shorter prompt"
            )

    def can_rewind_to(self, length: int) -> bool:
        """Whether the cache can be cut back to its first `length` tokens."""
        back = self.length - length
        return length == 0 or 0 <= back <= self.ring_slots - self.config.sliding_window

    def rewind(self, length: int) -> None:
        if not self.can_rewind_to(length):
            raise ValueError(f"cannot rewind a cache of {self.length} tokens to {length}")
        self.ring_pos[self.ring_pos >= length] = -1
        self.length = length

    def use_whole_buffers(self) -> None:
        """From now on full-attention layers attend over their whole buffer, slot s holding
        position s, masked by position (slots past the query are in its future): the same
        shapes at every step, as a CUDA graph needs."""
        if self.slot_pos is None:
            self.slot_pos = torch.arange(self.context, device=self.ring_pos.device)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor | Quantized, torch.Tensor | Quantized, torch.Tensor]:
        """Store k/v [T, Hkv, D] at `positions` (consecutive from `self.length`).

        Returns the keys, values (in the cache's formats) and key positions the new queries
        attend to.
        """
        start, t = self.length, k.shape[0]
        k, v = kv_quant.quantize(k, self.kv_dtypes.k), kv_quant.quantize(v, self.kv_dtypes.v)
        if not self.config.is_sliding(layer) and self.slot_pos is not None:
            self.k[layer].index_copy_(0, positions, k)  # no host-side offset: graph-safe
            self.v[layer].index_copy_(0, positions, v)
            return self.k[layer], self.v[layer], self.slot_pos
        if not self.config.is_sliding(layer):
            self.k[layer][start : start + t] = k
            self.v[layer][start : start + t] = v
            keys = torch.arange(start + t, device=positions.device)
            return self.k[layer][: start + t], self.v[layer][: start + t], keys
        # Sliding: attend over the ring slots of the window-1 positions before the new tokens (a
        # ring larger than the window holds older ones too, never visible) plus the new tokens,
        # then write the newest back. Slot numbers come from the positions tensor, so the shapes
        # and the host-side values are the same at every decode step.
        recent = (positions[:1] - self._reach) % self.ring_slots
        ring_k, ring_v = self.k[layer][recent], self.v[layer][recent]
        keys = kv_quant.cat(ring_k, k), kv_quant.cat(ring_v, v)
        key_pos = torch.cat([self.ring_pos[recent], positions])
        keep = min(t, self.ring_slots)
        slots = positions[-keep:] % self.ring_slots
        self.k[layer][slots] = k[-keep:]
        self.v[layer][slots] = v[-keep:]
        return keys[0], keys[1], key_pos

    def advance(self, positions: torch.Tensor) -> None:
        """Mark the tokens at `positions` as cached (after every layer was updated)."""
        self.record_ring(positions)
        self.length += positions.shape[0]

    def record_ring(self, positions: torch.Tensor) -> None:
        """The device-side half of `advance`: the ring slots now hold `positions`."""
        keep = min(positions.shape[0], self.ring_slots)
        self.ring_pos[positions[-keep:] % self.ring_slots] = positions[-keep:]


class PoolKeys(NamedTuple):
    """What a batched attention reads for one decode step of several sequences (`store_rows`)."""

    k: torch.Tensor | Quantized  # the pool's keys [sequences, slots, Hkv, D]
    v: torch.Tensor | Quantized
    positions: torch.Tensor  # what each slot holds: [slots] for every sequence, or [seqs, slots]
    seq: torch.Tensor  # per query row [B]: its sequence,
    first: torch.Tensor  # the first slot it reads,
    lengths: torch.Tensor  # and how many (wrapping around a ring)
    most: int  # the most slots any row reads


def store_rows(
    caches: list[KVCache], layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
) -> PoolKeys:
    """Store row i's key and value [B, Hkv, D] at positions[i] of caches[i] (slots of one pool)
    and say what a batched attention over the pool reads: a full layer's positions 0..p, a
    sliding layer's window. The rings' positions are recorded now, before `advance`: the slot a
    token takes is none that the tokens of its window read."""
    pool = caches[0].pool
    if any(c.pool is not pool for c in caches):
        raise ValueError("a batched attention reads the caches of one pool")
    seq = torch.tensor([c.index for c in caches], device=positions.device)
    sliding = pool.config.is_sliding(layer)
    rows = positions % pool.ring_slots if sliding else positions
    pool.k[layer][seq, rows] = kv_quant.quantize(k, pool.kv_dtypes.k)
    pool.v[layer][seq, rows] = kv_quant.quantize(v, pool.kv_dtypes.v)
    if sliding:
        pool.ring_pos[seq, rows] = positions
        window = pool.config.sliding_window
        first = (positions - (window - 1)) % pool.ring_slots
        lengths = torch.full_like(positions, window)
        return PoolKeys(pool.k[layer], pool.v[layer], pool.ring_pos, seq, first, lengths, window)
    slot_pos = torch.arange(pool.context, device=positions.device)
    most = max(c.length for c in caches) + 1
    first = torch.zeros_like(positions)
    return PoolKeys(pool.k[layer], pool.v[layer], slot_pos, seq, first, positions + 1, most)
