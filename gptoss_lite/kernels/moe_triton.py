"""Fused MXFP4 expert kernels: the gpt-oss MoE computed from packed weights, never a bf16 copy.

Weights stay as published (see `gptoss_lite.model.mxfp4`): `gate_up_blocks [E, 2I, H/32, 16]` and
`gate_up_scales [E, 2I, H/32]` (gate/up interleaved on the out axis: row 2j = gate j, 2j+1 = up j),
`down_blocks [E, H, I/32, 16]`, `down_scales [E, H, I/32]`, biases `gate_up_bias [E, 2I]` and
`down_bias [E, H]`, all in a `PackedExperts`; the entry points have `experts_forward`'s signature. A
row's bytes are contiguous, so byte c of row n holds elements 2c (low nibble) and 2c+1 (high
nibble), scaled by `scales[n, c // 16]`; kernels decode tiles in registers and multiply the even
and odd activations separately. Per token t and routed expert e with weight w:
h = W1[e]·x + b1[e]; gate = min(h[0::2], limit); up = clamp(h[1::2], ±limit);
a = gate·sigmoid(alpha·gate)·(up + 1); out += w·(W2[e]·a + b2[e]).
Decode (few tokens) runs matrix-vector programs per (token, expert) pair and block of output rows,
fp32 math throughout, many small programs so that the weight reads spread over every SM; prefill
groups the pairs by expert and runs tiled `tl.dot`s on bf16-rounded operands with fp32
accumulation (the activation a is rounded to bf16 between the two matmuls). Neither syncs with
the host, so both can be captured in a CUDA graph for a fixed token count.
`moe_forward_reference` is the slow oracle, built on `dequantize`, one expert at a time.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..model.moe import PackedExperts, experts_forward
from ..model.mxfp4 import BYTES_PER_BLOCK
from .triton_dtypes import dot_dtype

DECODE_MAX_TOKENS = 8  # up to this many tokens use the per-pair decode kernels (untuned)
DECODE_BLOCK_N = 16  # output rows per decode program: 180 programs per pair at the 20b width
DECODE_BLOCK_KB = 128  # packed bytes (256 weights) per row per decode step
PREFILL_BLOCK_M = 64  # (token, expert) pairs per prefill tile
PREFILL_BLOCK_N = 64
PREFILL_BLOCK_KB = 64  # packed bytes per row per prefill step (128 weights of K)
PREFILL_WARPS = 8  # a 64x64 fp32 tile and its decoded weights: 4 warps spill on sm_80


# ------------------------------------------------------------------ device helpers


@triton.jit
def _fp4_value(code):
    """E2M1 code (bit 3 = sign) → fp32 value: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}."""
    mag = code & 7
    twice = tl.where(mag < 4, mag, tl.where(mag < 6, 2 * mag - 4, 4 * mag - 16)).to(tl.float32)
    return tl.where(code >= 8, -0.5 * twice, 0.5 * twice)


@triton.jit
def _mxfp4_decode(packed, scale):
    """Packed bytes and their E8M0 scales (same shape) → (even, odd) element values in fp32."""
    packed = packed.to(tl.int32)
    s = scale.to(tl.int32)
    # 2**(s - 127) from its bits, as `dequantize` scales: normal for 1 <= s <= 254, the subnormal
    # 2**-127 for s = 0, and inf for s = 255 (NaN in the OCP spec; no checkpoint uses it).
    factor = tl.where(s > 0, s << 23, 0x00400000).to(tl.float32, bitcast=True)
    return _fp4_value(packed & 15) * factor, _fp4_value(packed >> 4) * factor


@triton.jit
def _load_mxfp4(blk_ptr, scl_ptr, rows, row_mask, c, c_mask, KB):
    """Decode bytes c of the given weight rows: tiles shaped like rows[:, None] + c[None, :]."""
    offs = rows[:, None] * KB + c[None, :]
    mask = row_mask[:, None] & c_mask[None, :]
    packed = tl.load(blk_ptr + offs, mask=mask, other=0)
    scale = tl.load(scl_ptr + rows[:, None] * (KB // 16) + c[None, :] // 16, mask=mask, other=127)
    return _mxfp4_decode(packed, scale)


@triton.jit
def _swiglu(gate, up, limit, alpha):
    gate = tl.minimum(gate, limit)  # gate: clamped from above only
    up = tl.minimum(tl.maximum(up, -limit), limit)
    return gate / (1.0 + tl.exp(-alpha * gate)) * (up + 1.0)  # gate·sigmoid(alpha·gate), +1 on up


@triton.jit
def _matvec(x_ptr, blk_ptr, scl_ptr, rows, row_mask, KB, BLOCK_KB: tl.constexpr):
    """fp32, shaped like rows: weight rows (global row ids) times the activation row at x_ptr."""
    acc = tl.full([rows.shape[0]], 0.0, tl.float32)
    for c0 in range(0, KB, BLOCK_KB):
        c = c0 + tl.arange(0, BLOCK_KB)
        c_mask = c < KB
        even, odd = _load_mxfp4(blk_ptr, scl_ptr, rows, row_mask, c, c_mask, KB)
        x_even = tl.load(x_ptr + 2 * c, mask=c_mask, other=0.0).to(tl.float32)
        x_odd = tl.load(x_ptr + 2 * c + 1, mask=c_mask, other=0.0).to(tl.float32)
        acc += tl.sum(even * x_even[None, :] + odd * x_odd[None, :], axis=1)
    return acc


@triton.jit
def _as_operand(t, DOT: tl.constexpr):
    """A bf16-rounded `tl.dot` operand (held in fp32 under the interpreter)."""
    return t.to(tl.bfloat16).to(DOT)


@triton.jit
def _matmul(
    x_ptrs, m_mask, blk_ptr, scl_ptr, rows, row_mask, KB, BLOCK_KB: tl.constexpr, DOT: tl.constexpr
):
    """fp32 [len(x_ptrs), len(rows)]: activation rows (pointers) times weight rows, transposed."""
    acc = tl.full([x_ptrs.shape[0], rows.shape[0]], 0.0, tl.float32)
    for c0 in range(0, KB, BLOCK_KB):
        c = c0 + tl.arange(0, BLOCK_KB)
        c_mask = c < KB
        even, odd = _load_mxfp4(blk_ptr, scl_ptr, rows, row_mask, c, c_mask, KB)  # (N, KB)
        x_mask = m_mask[:, None] & c_mask[None, :]
        x_even = tl.load(x_ptrs[:, None] + 2 * c[None, :], mask=x_mask, other=0.0)
        x_odd = tl.load(x_ptrs[:, None] + 2 * c[None, :] + 1, mask=x_mask, other=0.0)
        acc = tl.dot(_as_operand(x_even, DOT), _as_operand(tl.trans(even), DOT), acc)
        acc = tl.dot(_as_operand(x_odd, DOT), _as_operand(tl.trans(odd), DOT), acc)
    return acc


@triton.jit
def _tile(sched_ptr, BLOCK_M: tl.constexpr):
    """This program's tile of the expert-sorted pair list: (expert, rows, row mask, live)."""
    tile = sched_ptr + 3 * tl.program_id(0)
    row0, row_end = tl.load(tile + 1), tl.load(tile + 2)
    m = row0 + tl.arange(0, BLOCK_M)
    return tl.load(tile).to(tl.int64), m, m < row_end, row0 < row_end


# ------------------------------------------------------------------ kernels


@triton.jit
def _dequantize_kernel(
    blk_ptr, scl_ptr, out_ptr, R, KB, BLOCK_R: tl.constexpr, BLOCK_KB: tl.constexpr
):
    """out [R, 2*KB] = the decoded rows; the bit-exactness check of the in-register decode."""
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    c = tl.program_id(1) * BLOCK_KB + tl.arange(0, BLOCK_KB)
    row_mask, c_mask = rows < R, c < KB
    even, odd = _load_mxfp4(blk_ptr, scl_ptr, rows, row_mask, c, c_mask, KB)
    offs = rows[:, None] * (2 * KB) + 2 * c[None, :]
    mask = row_mask[:, None] & c_mask[None, :]
    tl.store(out_ptr + offs, even.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + offs + 1, odd.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gate_up_decode_kernel(
    x_ptr, idx_ptr, blk_ptr, scl_ptr, b_ptr, act_ptr, hidden, inter, TOPK, limit, alpha,
    BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr,
):  # fmt: skip
    pair = tl.program_id(0)  # token * TOPK + slot
    j = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # intermediate units
    j_mask = j < inter
    expert = tl.load(idx_ptr + pair).to(tl.int64)
    x_row = x_ptr + (pair // TOPK).to(tl.int64) * hidden
    gate_rows = expert * 2 * inter + 2 * j  # interleaved: gate 2j, up 2j + 1
    gate = _matvec(x_row, blk_ptr, scl_ptr, gate_rows, j_mask, hidden // 2, BLOCK_KB)
    up = _matvec(x_row, blk_ptr, scl_ptr, gate_rows + 1, j_mask, hidden // 2, BLOCK_KB)
    gate += tl.load(b_ptr + gate_rows, mask=j_mask, other=0.0).to(tl.float32)
    up += tl.load(b_ptr + gate_rows + 1, mask=j_mask, other=0.0).to(tl.float32)
    tl.store(act_ptr + pair * inter + j, _swiglu(gate, up, limit, alpha), mask=j_mask)


@triton.jit
def _down_decode_kernel(
    act_ptr, idx_ptr, wt_ptr, blk_ptr, scl_ptr, b_ptr, y_ptr, hidden, inter,
    BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr,
):  # fmt: skip
    pair = tl.program_id(0)  # token * TOPK + slot: each pair's rows in programs of their own
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # hidden units
    n_mask = n < hidden
    expert = tl.load(idx_ptr + pair).to(tl.int64)
    rows = expert * hidden + n
    y = _matvec(act_ptr + pair * inter, blk_ptr, scl_ptr, rows, n_mask, inter // 2, BLOCK_KB)
    y += tl.load(b_ptr + rows, mask=n_mask, other=0.0).to(tl.float32)  # bias, then weight
    tl.store(y_ptr + pair * hidden + n, tl.load(wt_ptr + pair).to(tl.float32) * y, mask=n_mask)


@triton.jit
def _gate_up_grouped_kernel(
    x_ptr, pair_ptr, sched_ptr, blk_ptr, scl_ptr, b_ptr, act_ptr, hidden, inter, TOPK, limit, alpha,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    expert, m, m_mask, live = _tile(sched_ptr, BLOCK_M)
    if not live:  # a spare tile: the grid is sized without reading the expert counts
        return
    token = tl.load(pair_ptr + m, mask=m_mask, other=0) // TOPK
    x_ptrs = x_ptr + token.to(tl.int64) * hidden
    j = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    j_mask = j < inter
    gate_rows = expert * 2 * inter + 2 * j
    kb = hidden // 2
    gate = _matmul(x_ptrs, m_mask, blk_ptr, scl_ptr, gate_rows, j_mask, kb, BLOCK_KB, DOT)
    up = _matmul(x_ptrs, m_mask, blk_ptr, scl_ptr, gate_rows + 1, j_mask, kb, BLOCK_KB, DOT)
    gate += tl.load(b_ptr + gate_rows, mask=j_mask, other=0.0).to(tl.float32)[None, :]
    up += tl.load(b_ptr + gate_rows + 1, mask=j_mask, other=0.0).to(tl.float32)[None, :]
    act = _swiglu(gate, up, limit, alpha).to(act_ptr.dtype.element_ty)
    tl.store(act_ptr + m[:, None] * inter + j[None, :], act, mask=m_mask[:, None] & j_mask[None, :])


@triton.jit
def _down_grouped_kernel(
    act_ptr, pair_ptr, wt_ptr, sched_ptr, blk_ptr, scl_ptr, b_ptr, y_ptr, hidden, inter,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    expert, m, m_mask, live = _tile(sched_ptr, BLOCK_M)
    if not live:
        return
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < hidden
    rows = expert * hidden + n
    a_ptrs = act_ptr + m.to(tl.int64) * inter
    y = _matmul(a_ptrs, m_mask, blk_ptr, scl_ptr, rows, n_mask, inter // 2, BLOCK_KB, DOT)
    y += tl.load(b_ptr + rows, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    pair = tl.load(pair_ptr + m, mask=m_mask, other=0).to(tl.int64)
    weight = tl.load(wt_ptr + pair, mask=m_mask, other=0.0).to(tl.float32)
    mask = m_mask[:, None] & n_mask[None, :]
    tl.store(y_ptr + pair[:, None] * hidden + n[None, :], y * weight[:, None], mask=mask)


# ------------------------------------------------------------------ host side


def mxfp4_dequantize(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """`dequantize` done by the kernels' in-register decode: [..., G, 16] → [..., G*32]."""
    _check_packed(blocks, scales, "blocks")
    rows = scales.numel() // scales.shape[-1]
    kb = scales.shape[-1] * BYTES_PER_BLOCK
    out = torch.empty(*scales.shape[:-1], 2 * kb, dtype=dtype, device=blocks.device)
    grid = (triton.cdiv(rows, 16), triton.cdiv(kb, 64))
    _dequantize_kernel[grid](blocks, scales, out, rows, kb, BLOCK_R=16, BLOCK_KB=64)
    return out


def moe_forward(
    x: torch.Tensor,
    expert_idx: torch.Tensor,
    expert_weight: torch.Tensor,
    experts: PackedExperts,
    alpha: float,
    limit: float,
) -> torch.Tensor:
    """`moe.experts_forward` on the kernels: MoE output [T, H] for x [T, H] routed to
    `expert_idx [T, k]` with `expert_weight`; the decode kernels for up to DECODE_MAX_TOKENS
    tokens, the grouped prefill kernels beyond."""
    forward = moe_decode if x.shape[0] <= DECODE_MAX_TOKENS else moe_prefill
    return forward(x, expert_idx, expert_weight, experts, alpha, limit)


def moe_decode(
    x: torch.Tensor,
    expert_idx: torch.Tensor,
    expert_weight: torch.Tensor,
    experts: PackedExperts,
    alpha: float,
    limit: float,
) -> torch.Tensor:
    """`moe_forward` by matrix-vector kernels, one program per (token, expert) pair; fp32 math."""
    t, h, i, k = _check(x, expert_idx, expert_weight, experts)
    e = experts
    idx, wt = expert_idx.contiguous(), expert_weight.contiguous()
    act = torch.empty(t * k, i, dtype=torch.float32, device=x.device)  # (T·k, I)
    blocks = dict(BLOCK_N=DECODE_BLOCK_N, BLOCK_KB=DECODE_BLOCK_KB)
    _gate_up_decode_kernel[(t * k, triton.cdiv(i, DECODE_BLOCK_N))](
        x, idx, e.gate_up_blocks, e.gate_up_scales, e.gate_up_bias, act, h, i, k,
        float(limit), float(alpha), **blocks,
    )  # fmt: skip
    y = torch.empty(t * k, h, dtype=torch.float32, device=x.device)  # (T·k, H), weighted
    _down_decode_kernel[(t * k, triton.cdiv(h, DECODE_BLOCK_N))](
        act, idx, wt, e.down_blocks, e.down_scales, e.down_bias, y, h, i, **blocks
    )
    return y.view(t, k, h).sum(dim=1).to(x.dtype)  # the weighted sum over experts, slot order


def moe_prefill(
    x: torch.Tensor,
    expert_idx: torch.Tensor,
    expert_weight: torch.Tensor,
    experts: PackedExperts,
    alpha: float,
    limit: float,
    *,
    block_m: int = PREFILL_BLOCK_M,
) -> torch.Tensor:
    """`moe_forward` by grouped matmuls over the (token, expert) pairs sorted by expert:
    each expert's weight tiles are read once per `block_m` of its pairs."""
    t, h, i, k = _check(x, expert_idx, expert_weight, experts)
    e = experts
    pairs, sched = _tile_schedule(expert_idx, e.gate_up_blocks.shape[0], block_m)
    tiles = sched.shape[0]
    blocks = dict(
        BLOCK_M=block_m,
        BLOCK_N=PREFILL_BLOCK_N,
        BLOCK_KB=PREFILL_BLOCK_KB,
        DOT=dot_dtype(x.device),
        num_warps=PREFILL_WARPS,
    )
    act = torch.empty(t * k, i, dtype=torch.bfloat16, device=x.device)  # (T·k, I), sorted rows
    y = torch.empty(t * k, h, dtype=torch.float32, device=x.device)  # (T·k, H), pair order
    _gate_up_grouped_kernel[(tiles, triton.cdiv(i, PREFILL_BLOCK_N))](
        x, pairs, sched, e.gate_up_blocks, e.gate_up_scales, e.gate_up_bias, act, h, i, k,
        float(limit), float(alpha), **blocks,
    )  # fmt: skip
    _down_grouped_kernel[(tiles, triton.cdiv(h, PREFILL_BLOCK_N))](
        act, pairs, expert_weight.contiguous(), sched, e.down_blocks, e.down_scales, e.down_bias,
        y, h, i, **blocks,
    )  # fmt: skip
    return y.view(t, k, h).sum(dim=1).to(x.dtype)


def _tile_schedule(
    expert_idx: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair ids (token·k + slot) sorted by expert, and per tile (expert, first row, end row) in
    that list. Computed on the device without a sync: the grid has room for the most tiles
    possible, and the spare tiles are empty (first row == end row)."""
    flat = expert_idx.reshape(-1).long()
    pairs = torch.argsort(flat, stable=True)
    counts = torch.zeros(num_experts, dtype=torch.long, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))  # bincount would sync on a GPU
    tiles = (counts + block_m - 1) // block_m
    tile_stop = torch.cumsum(tiles, 0)  # one past each expert's last tile
    group_end = torch.cumsum(counts, 0)
    most = triton.cdiv(flat.numel(), block_m) + min(num_experts, flat.numel())
    tile = torch.arange(most, device=flat.device)
    expert = torch.searchsorted(tile_stop, tile, right=True).clamp_(max=num_experts - 1)
    row_end = group_end[expert]
    row0 = row_end - counts[expert] + (tile - tile_stop[expert] + tiles[expert]) * block_m
    row0 = torch.where(tile < tile_stop[-1], row0, row_end)
    return pairs, torch.stack([expert, row0, row_end], dim=1)  # (tiles, 3)


def _check_packed(blocks: torch.Tensor, scales: torch.Tensor, name: str) -> None:
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise TypeError(f"{name}: MXFP4 blocks and scales must be uint8")
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BYTES_PER_BLOCK:
        raise ValueError(f"{name}: shapes {tuple(blocks.shape)}, {tuple(scales.shape)} differ")
    if not (blocks.is_contiguous() and scales.is_contiguous()):
        raise ValueError(f"{name}: must be contiguous (the kernels never copy weights)")


def _check(x, expert_idx, expert_weight, experts: PackedExperts) -> tuple[int, int, int, int]:
    """Validate shapes and layout; return (T, H, I, k)."""
    e = experts
    _check_packed(e.gate_up_blocks, e.gate_up_scales, "gate_up")
    _check_packed(e.down_blocks, e.down_scales, "down")
    t, h = x.shape
    num, two_i, g1, _ = e.gate_up_blocks.shape
    i = two_i // 2
    if g1 * 32 != h or tuple(e.down_blocks.shape[:3]) != (num, h, i // 32):
        raise ValueError(
            f"expert weights {tuple(e.gate_up_blocks.shape)}, {tuple(e.down_blocks.shape)}"
        )
    if tuple(e.gate_up_bias.shape) != (num, two_i) or tuple(e.down_bias.shape) != (num, h):
        raise ValueError(f"expert biases {tuple(e.gate_up_bias.shape)}, {tuple(e.down_bias.shape)}")
    if expert_idx.shape != expert_weight.shape or expert_idx.shape[0] != t:
        raise ValueError(f"routing {tuple(expert_idx.shape)}, {tuple(expert_weight.shape)}")
    if not (x.is_contiguous() and e.gate_up_bias.is_contiguous() and e.down_bias.is_contiguous()):
        raise ValueError("x and the expert biases must be contiguous")
    return t, h, i, expert_idx.shape[1]


# ------------------------------------------------------------------ reference


def moe_forward_reference(
    x: torch.Tensor,
    expert_idx: torch.Tensor,
    expert_weight: torch.Tensor,
    experts: PackedExperts,
    alpha: float,
    limit: float,
) -> torch.Tensor:
    """`moe_forward` in fp32 torch: the model's own `moe.experts_forward`, one routed expert
    at a time with weights from `dequantize`."""
    out = experts_forward(x.float(), expert_idx, expert_weight, experts, alpha, limit)
    return out.to(x.dtype)
