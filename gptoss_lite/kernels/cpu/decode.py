"""The whole CPU decode step in one compiled call (`decode_step.c`), and the times of its parts.

`decode_step(model, x, positions, rope, caches)` has the signature of `Kernels.fused_step`: the
logits [B, V] of B tokens, token i fed to caches[i] (one sequence's token, or one token of each
of B sequences), through every layer and the head, their keys and values written into the
caches; or None where the step does not apply (another device, a quantized KV cache, fp16), and
the model then runs its per-operation path. A token's row comes out the same whatever tokens
share the step. The pointers the C code reads are gathered once per model (the weights) and per
cache (its buffers) and checked to be the same tensors at every step. `phase_times()` adds up,
while it is open, the seconds of each part of the steps run (thread 0's view), for the per-step
profile.
"""

from __future__ import annotations

import ctypes
import math
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from ...model.cache import KVCache
from ...model.transformer import Transformer
from .host_memory import HostArena, arena_bytes

# The parts decode_step.c times, in the order of its PH_* constants.
PHASES = ("norms", "qkv", "attention", "out", "router", "gate_up", "down", "head", "wait", "all")
_ACT = {torch.float32: 0, torch.bfloat16: 1}  # decode_step.c's ACT_* values

_ptr, _i64, _float = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_WEIGHTS = ("attn_norm", "sinks", "mlp_norm", "qkv_w", "qkv_b", "out_w", "out_b", "router_w")
_WEIGHTS += ("router_b", "gu_blocks", "gu_scales", "dn_blocks", "dn_scales", "gu_bias", "dn_bias")
_Q8 = ("qkv_q", "out_q", "qkv_s", "out_s")  # the q8 forms, NULL where there are none
DENSE = ("bf16", "q8")  # the forms the dense decode matrices are read in
_SIZES = ("layers", "hidden", "heads", "kv_heads", "head_dim", "experts", "top_k")
_SIZES += ("intermediate", "vocab")


class _Layer(ctypes.Structure):  # gl_layer
    _fields_ = [*((name, _ptr) for name in _WEIGHTS + _Q8), ("window", _i64)]


class _Model(ctypes.Structure):  # gl_model
    _fields_ = [
        *((name, _i64) for name in _SIZES),
        *((name, _float) for name in ("eps", "alpha", "limit")),
        ("act", ctypes.c_int32),
        *((name, _ptr) for name in ("final_norm", "unembedding", "head_q", "head_s")),
        ("layer", ctypes.POINTER(_Layer)),
    ]


class _Cache(ctypes.Structure):  # gl_cache
    _fields_ = [(name, _ptr) for name in ("k", "v", "slots", "ring_pos")] + [("pos", _i64)]


def _layer_tensors(model: Transformer, n: int) -> tuple[torch.Tensor, ...]:
    """Layer n's weights in the order of `_WEIGHTS`."""
    attn, mlp = model.attn[n], model.mlp[n]
    e = mlp.experts
    return (
        attn.norm, attn.sinks, mlp.norm, attn.qkv_weight, attn.qkv_bias, attn.out_weight,
        attn.out_bias, mlp.router_weight, mlp.router_bias, e.gate_up_blocks, e.gate_up_scales,
        e.down_blocks, e.down_scales, e.gate_up_bias, e.down_bias,
    )  # fmt: skip


def _model_tensors(model: Transformer) -> list[torch.Tensor]:
    out = [model.norm, model.unembedding]
    for n in range(model.config.num_layers):
        out += _layer_tensors(model, n)
    return out


def _cache_tensors(cache: KVCache) -> list[torch.Tensor]:
    return [*cache.k, *cache.v, cache.ring_pos]


def _check(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    if any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors):
        raise ValueError("the compiled decode step takes contiguous CPU tensors")
    return tensors


class _ModelPlan:
    """The C structures for a model's weights, with the tensors they point into; with `dense`
    "q8", also the q8 forms of the attention projections and the head, made here."""

    def __init__(self, model: Transformer, dense: str = "bf16"):
        c = model.config
        self.tensors = _check(_model_tensors(model))
        self.layers = (_Layer * c.num_layers)()
        q8 = _q8_forms(model) if dense == "q8" else {}
        for n, layer in enumerate(self.layers):
            for name, t in zip(_WEIGHTS, _layer_tensors(model, n), strict=True):
                setattr(layer, name, t.data_ptr())
            for name, weight in (
                ("qkv", model.attn[n].qkv_weight),
                ("out", model.attn[n].out_weight),
            ):
                if weight in q8:
                    codes, scales = q8[weight]
                    setattr(layer, f"{name}_q", codes.data_ptr())
                    setattr(layer, f"{name}_s", scales.data_ptr())
            layer.window = c.sliding_window if c.is_sliding(n) else 0
        sizes = (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim)
        sizes += (c.num_experts, c.experts_per_token, c.intermediate_size, c.vocab_size)
        self.struct = _Model(
            *sizes,
            eps=c.rms_norm_eps,
            alpha=c.swiglu_alpha,
            limit=c.swiglu_limit,
            act=_ACT[model.dtype],
            final_norm=model.norm.data_ptr(),
            unembedding=model.unembedding.data_ptr(),
            layer=self.layers,
        )
        if model.unembedding in q8:
            codes, scales = q8[model.unembedding]
            self.struct.head_q, self.struct.head_s = codes.data_ptr(), scales.data_ptr()
        self.q8 = q8  # keeps the q8 forms alive
        self.work = torch.empty(0)


def q8_form(
    w: torch.Tensor, codes: torch.Tensor | None = None, scales: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The q8 form of a bf16 or fp32 matrix W [R, K]: int8 codes [R, K] and fp32 scales [R],
    scale = max|row| / 127 and code = the nearest integer to w · (127 / max|row|), ties to even
    (`codes`, `scales`: where to write them)."""
    from . import _library

    if w.dtype not in _ACT or w.dim() != 2 or not w.is_contiguous() or w.device.type != "cpu":
        raise ValueError("q8_form takes a contiguous bf16 or fp32 CPU matrix")
    codes = torch.empty(w.shape, dtype=torch.int8) if codes is None else codes
    scales = torch.empty(w.shape[0], dtype=torch.float32) if scales is None else scales
    _library().gl_quantize_q8(
        w.data_ptr(),
        _ACT[w.dtype],
        *w.shape,
        codes.data_ptr(),
        scales.data_ptr(),
        torch.get_num_threads(),
    )
    return codes, scales


def _q8_forms(model: Transformer) -> dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Each attention projection and the head in q8 form, in one arena: {weight: (codes,
    scales)}."""
    weights = [w for a in model.attn for w in (a.qkv_weight, a.out_weight)]
    weights.append(model.unembedding)
    arena = HostArena(arena_bytes([s for w in weights for s in q8_shapes(*w.shape)]))
    forms = {w: q8_form(w, *(arena.empty(*s) for s in q8_shapes(*w.shape))) for w in weights}
    arena.collapse()
    return forms


def q8_shapes(rows: int, cols: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """The q8 form of a [rows, cols] matrix: int8 codes, and an fp32 scale a row."""
    return [((rows, cols), torch.int8), ((rows,), torch.float32)]


def q8_nbytes(rows: int, cols: int) -> int:
    """Bytes of the q8 form of a [rows, cols] matrix."""
    return sum(math.prod(shape) * dtype.itemsize for shape, dtype in q8_shapes(rows, cols))


class _CachePlan:
    """The C structure for one KV cache, with the tensors it points into."""

    def __init__(self, cache: KVCache):
        self.tensors = _check(_cache_tensors(cache))
        layers = len(cache.k)
        self.k = (_ptr * layers)(*(t.data_ptr() for t in cache.k))
        self.v = (_ptr * layers)(*(t.data_ptr() for t in cache.v))
        self.slots = (_i64 * layers)(*(t.shape[0] for t in cache.k))
        self.struct = _Cache(
            ctypes.addressof(self.k),
            ctypes.addressof(self.v),
            ctypes.addressof(self.slots),
            cache.ring_pos.data_ptr(),
            0,
        )


_models: dict[str, weakref.WeakKeyDictionary[Transformer, _ModelPlan]] = {
    dense: weakref.WeakKeyDictionary() for dense in DENSE
}
_caches: weakref.WeakKeyDictionary[KVCache, _CachePlan] = weakref.WeakKeyDictionary()
_phases: list[ctypes.Array] = []  # the open `phase_times` accumulators


def decode_step(
    model: Transformer,
    x: torch.Tensor,
    positions: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    caches: Sequence[KVCache],
    dense: str = "bf16",
) -> torch.Tensor | None:
    """Logits [B, V] of tokens x [B, H] at `positions` [B], token i fed to caches[i] (distinct
    caches), or None where the compiled step does not apply (then nothing was written). With
    `dense` "q8" the attention projections and the head are read in their q8 form (made at the
    first step, kept with the model): half their bytes, not exact."""
    from . import _isa, _library

    if x.device.type != "cpu" or not _supported(model, caches):
        return None
    plan = _plan(_models[dense], model, lambda m: _ModelPlan(m, dense), _model_tensors)
    seqs = [_plan(_caches, cache, _CachePlan, _cache_tensors) for cache in caches]
    for seq, pos in zip(seqs, positions.tolist(), strict=True):
        seq.struct.pos = pos
    table = (_ptr * len(seqs))(*(ctypes.addressof(s.struct) for s in seqs))
    lib, threads = _library(), torch.get_num_threads()
    table_at = ctypes.addressof(table)
    floats = lib.gl_decode_work(ctypes.addressof(plan.struct), table_at, len(seqs), threads)
    if plan.work.numel() < floats:
        plan.work = torch.empty(floats, dtype=torch.float32)
    cos, sin = (t.contiguous() for t in rope)
    x = x.contiguous()
    logits = torch.empty(len(seqs), model.config.vocab_size, dtype=torch.float32)
    lib.gl_decode_step(
        ctypes.addressof(plan.struct),
        _isa(None),
        len(seqs),
        x.data_ptr(),
        table_at,
        cos.data_ptr(),
        sin.data_ptr(),
        logits.data_ptr(),
        plan.work.data_ptr(),
        ctypes.addressof(_phases[-1]) if _phases else None,
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


def _supported(model: Transformer, caches: Sequence[KVCache]) -> bool:
    c, dtype = model.config, model.dtype
    if dtype not in _ACT or c.head_dim % 2 or c.hidden_size % 32 or c.intermediate_size % 32:
        return False
    if model.device.type != "cpu" or model.embedding.device.type != "cpu":
        return False
    dense = [a.qkv_weight for a in model.attn] + [model.unembedding]
    cached = [t for cache in caches for t in cache.k + cache.v]
    return all(isinstance(t, torch.Tensor) and t.dtype == dtype for t in dense + cached)


def _plan(plans: weakref.WeakKeyDictionary, key, make, tensors):
    """The cached plan of `key`, rebuilt when any tensor it points into changed."""
    plan = plans.get(key)
    if plan is None or any(a is not b for a, b in zip(plan.tensors, tensors(key), strict=True)):
        plan = plans[key] = make(key)
    return plan
