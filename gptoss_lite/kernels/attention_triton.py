"""Attention with learned sinks and an optional sliding window, by online softmax in Triton.

Layout: q [T, Hq, D], k and v [S, Hkv, D], sinks [Hq], q_pos [T] and k_pos [S] absolute positions;
a key with k_pos < 0 is an empty cache slot. q head h reads kv head h // (Hq / Hkv) (GQA).
Math per head: s_j = (q·k_j)/sqrt(D) for visible keys (k_pos_j <= q_pos, and on a sliding layer
q_pos - window < k_pos_j: the window includes the query), m = max(sink, max_j s_j),
out = Σ_j exp(s_j - m)·v_j / (Σ_j exp(s_j - m) + exp(sink - m)). The sink is an unscaled logit with
no value, so the running max starts at it and the denominator at 1. One program takes a block of
(query, head) rows of one kv group, so a decode step reads each key and value once per kv head;
key blocks that no row sees are skipped, and no [heads, T, S] tensor is formed. The scores and
softmax are fp32; p is rounded to the value dtype for the p·V `tl.dot`, as flash kernels do.
`attention_reference` is the naive torch oracle with the same signature.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import dot_dtype

BLOCK_M = 64  # (query, head) rows per program; fewer for small decode batches
BLOCK_N = 64  # keys per step
_LOG2E = tl.constexpr(1.4426950408889634)  # scores and sink go through exp2


@triton.jit
def _attention_kernel(
    q_ptr, k_ptr, v_ptr, sink_ptr, q_pos_ptr, k_pos_ptr, out_ptr, T, S, window, qk_scale,
    sq_t, sq_h, sk_s, sk_h, sv_s, sv_h, so_t, so_h,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, SLIDING: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    kv = tl.program_id(1)
    r = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # row = token * GROUP + head in group
    r_mask = r < T * GROUP
    t = r // GROUP
    h = kv * GROUP + r % GROUP
    d = tl.arange(0, HEAD_DIM)
    q_offs = t[:, None] * sq_t + h[:, None] * sq_h + d[None, :]
    q = tl.load(q_ptr + q_offs, mask=r_mask[:, None], other=0.0).to(DOT)
    q_pos = tl.load(q_pos_ptr + t, mask=r_mask, other=-1)
    # log2 domain: exp2(x·log2 e) = exp(x). The running max starts at the sink, so l starts at 1.
    m_i = tl.load(sink_ptr + h, mask=r_mask, other=0.0).to(tl.float32) * _LOG2E
    l_i = tl.full([BLOCK_M], 1.0, tl.float32)
    acc = tl.full([BLOCK_M, HEAD_DIM], 0.0, tl.float32)
    for n0 in range(0, S, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        k_pos = tl.load(k_pos_ptr + n, mask=n < S, other=-1)
        visible = (k_pos[None, :] >= 0) & (k_pos[None, :] <= q_pos[:, None]) & r_mask[:, None]
        if SLIDING:  # the window includes the query
            visible = visible & (k_pos[None, :] > q_pos[:, None] - window)
        if tl.max(visible.to(tl.int32)) > 0:  # skip key blocks no row sees
            k_t = tl.load(k_ptr + n[None, :] * sk_s + kv * sk_h + d[:, None], mask=n[None, :] < S)
            s = tl.dot(q, k_t.to(DOT)) * qk_scale  # (BLOCK_M, BLOCK_N), times log2 e / sqrt(D)
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            rescale = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * rescale + tl.sum(p, axis=1)
            v = tl.load(v_ptr + n[:, None] * sv_s + kv * sv_h + d[None, :], mask=n[:, None] < S)
            p = p.to(v_ptr.dtype.element_ty).to(DOT)  # p·V in the value dtype, as flash kernels
            acc = tl.dot(p, v.to(DOT), acc * rescale[:, None])
            m_i = m_new
    out = (acc / l_i[:, None]).to(out_ptr.dtype.element_ty)
    tl.store(
        out_ptr + t[:, None] * so_t + h[:, None] * so_h + d[None, :], out, mask=r_mask[:, None]
    )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    window: int | None,
) -> torch.Tensor:
    """Attention output [T, Hq, D]; `window` None for a full layer, else the sliding window."""
    t, hq, dim = q.shape
    s, hkv, _ = k.shape
    if hq % hkv or k.shape != v.shape or k.shape[2] != dim:
        raise ValueError(
            f"attention shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if dim < 16 or dim & (dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16, got {dim}")
    if q.stride(2) != 1 or k.stride(2) != 1 or v.stride(2) != 1:
        raise ValueError("q, k and v need a contiguous last (head_dim) axis")
    group = hq // hkv
    out = torch.empty_like(q)
    block_m = min(BLOCK_M, max(16, triton.next_power_of_2(t * group)))
    grid = (triton.cdiv(t * group, block_m), hkv)
    strides = (*q.stride()[:2], *k.stride()[:2], *v.stride()[:2], *out.stride()[:2])
    meta = dict(GROUP=group, HEAD_DIM=dim, SLIDING=window is not None, BLOCK_M=block_m)
    _attention_kernel[grid](
        q, k, v, sinks.contiguous(), q_pos.contiguous(), k_pos.contiguous(), out, t, s,
        window or 0, _LOG2E.value / math.sqrt(dim), *strides,
        BLOCK_N=BLOCK_N, DOT=dot_dtype(q.device, q.dtype), **meta,
    )  # fmt: skip
    return out


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    window: int | None,
) -> torch.Tensor:
    """`attention` the naive way in fp32: full score matrix, sink column, softmax, drop the sink."""
    group = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(group, dim=1)  # (S, Hq, D): q head h reads kv head h // group
    vf = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", q.float(), kf) / math.sqrt(q.shape[-1])  # (Hq, T, S)
    visible = (k_pos[None, :] >= 0) & (k_pos[None, :] <= q_pos[:, None])  # (T, S)
    if window is not None:
        visible &= k_pos[None, :] > q_pos[:, None] - window  # the window includes the query
    scores = scores.masked_fill(~visible, float("-inf"))
    sink = sinks.float()[:, None, None].expand(-1, q.shape[0], 1)  # unscaled logit, no value
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    return torch.einsum("hts,shd->thd", probs, vf).to(q.dtype)
