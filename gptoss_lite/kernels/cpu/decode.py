"""The whole CPU decode step in one compiled call (`decode_step.c`), and the times of its parts.

`decode_step(model, x, positions, rope, cache)` has the signature of `Kernels.fused_step`: the
logits [1, V] of one token through every layer and the head, its keys and values written into
the cache, or None where the step does not apply (several tokens, another device, a quantized
KV cache, fp16), and the model then runs its per-operation path. The pointers the C code reads
(every layer's weights, the cache buffers) are gathered once per model and cache and checked to
be the same tensors at every step. `phase_times()` adds up, while it is open, the seconds of
each part of the steps run (thread 0's view), for the per-step profile.
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ...model.cache import KVCache
from ...model.transformer import Transformer

# The parts decode_step.c times, in the order of its PH_* constants.
PHASES = ("norms", "qkv", "attention", "out", "router", "gate_up", "down", "head", "wait", "all")
_ACT = {torch.float32: 0, torch.bfloat16: 1}  # decode_step.c's ACT_* values

_ptr, _i64, _float = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_POINTERS = ("attn_norm", "sinks", "mlp_norm", "qkv_w", "qkv_b", "out_w", "out_b", "router_w")
_POINTERS += ("router_b", "gu_blocks", "gu_scales", "dn_blocks", "dn_scales", "gu_bias")
_POINTERS += ("dn_bias", "k_cache", "v_cache")
_SIZES = ("layers", "hidden", "heads", "kv_heads", "head_dim", "experts", "top_k")
_SIZES += ("intermediate", "vocab", "max_keys")


class _Layer(ctypes.Structure):  # gl_layer
    _fields_ = [*((name, _ptr) for name in _POINTERS), ("slots", _i64), ("window", _i64)]


class _Model(ctypes.Structure):  # gl_model
    _fields_ = [
        *((name, _i64) for name in _SIZES),
        *((name, _float) for name in ("eps", "alpha", "limit")),
        ("act", ctypes.c_int32),
        *((name, _ptr) for name in ("final_norm", "unembedding", "ring_pos")),
        ("layer", ctypes.POINTER(_Layer)),
    ]


def _layer_tensors(model: Transformer, cache: KVCache, n: int) -> tuple[torch.Tensor, ...]:
    """Layer n's tensors in the order of `_POINTERS`."""
    attn, mlp = model.attn[n], model.mlp[n]
    e = mlp.experts
    return (
        attn.norm, attn.sinks, mlp.norm, attn.qkv_weight, attn.qkv_bias, attn.out_weight,
        attn.out_bias, mlp.router_weight, mlp.router_bias, e.gate_up_blocks, e.gate_up_scales,
        e.down_blocks, e.down_scales, e.gate_up_bias, e.down_bias, cache.k[n], cache.v[n],
    )  # fmt: skip


def _tensors(model: Transformer, cache: KVCache) -> list[torch.Tensor]:
    """Every tensor the step reads or writes."""
    out = [model.norm, model.unembedding, cache.ring_pos]
    for n in range(model.config.num_layers):
        out += _layer_tensors(model, cache, n)
    return out


class _Plan:
    """The C structures for one model and cache, with the tensors they point into."""

    def __init__(self, model: Transformer, cache: KVCache):
        c = model.config
        self.tensors = _tensors(model, cache)
        if any(t.device.type != "cpu" or not t.is_contiguous() for t in self.tensors):
            raise ValueError("the compiled decode step takes contiguous CPU tensors")
        self.layers = (_Layer * c.num_layers)()
        for n, layer in enumerate(self.layers):
            for name, t in zip(_POINTERS, _layer_tensors(model, cache, n), strict=True):
                setattr(layer, name, t.data_ptr())
            layer.slots = cache.k[n].shape[0]
            layer.window = c.sliding_window if c.is_sliding(n) else 0
        sizes = (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim)
        sizes += (c.num_experts, c.experts_per_token, c.intermediate_size, c.vocab_size)
        sizes += (max(cache.context, cache.ring_slots),)
        self.model = _Model(
            *sizes,
            c.rms_norm_eps,
            c.swiglu_alpha,
            c.swiglu_limit,
            _ACT[model.dtype],
            model.norm.data_ptr(),
            model.unembedding.data_ptr(),
            cache.ring_pos.data_ptr(),
            self.layers,
        )
        self.work: torch.Tensor | None = None

    def scratch(self, lib: ctypes.CDLL, threads: int) -> torch.Tensor:
        floats = lib.gl_decode_work(ctypes.addressof(self.model), threads)
        if self.work is None or self.work.numel() < floats:
            self.work = torch.empty(floats, dtype=torch.float32)
        return self.work


_plans: weakref.WeakKeyDictionary[KVCache, tuple[Transformer, _Plan]] = weakref.WeakKeyDictionary()
_phases: list[ctypes.Array] = []  # the open `phase_times` accumulators


def decode_step(
    model: Transformer,
    x: torch.Tensor,
    positions: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    cache: KVCache,
) -> torch.Tensor | None:
    """Logits [1, V] of the one token x [1, H] at `positions` [1], or None where the compiled
    step does not apply (then nothing was written)."""
    from . import _isa, _library

    if x.shape[0] != 1 or x.device.type != "cpu" or not _supported(model, cache):
        return None
    plan = _plan(model, cache)
    lib, threads = _library(), torch.get_num_threads()
    work = plan.scratch(lib, threads)
    cos, sin = (t.contiguous() for t in rope)
    x = x.contiguous()
    logits = torch.empty(1, model.config.vocab_size, dtype=torch.float32)
    phases = ctypes.addressof(_phases[-1]) if _phases else None
    lib.gl_decode_step(
        ctypes.addressof(plan.model),
        _isa(None),
        x.data_ptr(),
        int(positions[0]),
        cos.data_ptr(),
        sin.data_ptr(),
        logits.data_ptr(),
        work.data_ptr(),
        phases,
        threads,
    )
    return logits


@contextmanager
def phase_times() -> Iterator[dict[str, float]]:
    """Seconds of each part (`PHASES`) summed over the compiled decode steps run inside the
    block; the dict is filled when the block ends."""
    times: dict[str, float] = {}
    acc = (ctypes.c_double * len(PHASES))()
    _phases.append(acc)
    try:
        yield times
    finally:
        _phases.remove(acc)
        times.update(zip(PHASES, acc, strict=True))


def _supported(model: Transformer, cache: KVCache) -> bool:
    c, dtype = model.config, model.dtype
    if dtype not in _ACT or c.head_dim % 2 or c.hidden_size % 32 or c.intermediate_size % 32:
        return False
    if model.device.type != "cpu" or model.embedding.device.type != "cpu":
        return False
    dense = [a.qkv_weight for a in model.attn] + [model.unembedding]
    cached = cache.k + cache.v
    return all(isinstance(t, torch.Tensor) and t.dtype == dtype for t in dense + cached)


def _plan(model: Transformer, cache: KVCache) -> _Plan:
    """The cached plan for (model, cache), rebuilt when any tensor it points into changed."""
    cached = _plans.get(cache)
    if cached is not None and cached[0] is model:
        plan = cached[1]
        if all(a is b for a, b in zip(plan.tensors, _tensors(model, cache), strict=True)):
            return plan
    plan = _Plan(model, cache)
    _plans[cache] = (model, plan)
    return plan
