"""Attention with learned sinks and an optional sliding window, by online softmax in Triton.

Layout: q [T, Hq, D], k and v [S, Hkv, D], sinks [Hq], q_pos [T] and k_pos [S] absolute positions;
a key with k_pos < 0 is an empty cache slot. q head h reads kv head h // (Hq / Hkv) (GQA).
Math per head: s_j = (q·k_j)/sqrt(D) for visible keys (k_pos_j <= q_pos, and on a sliding layer
q_pos - window < k_pos_j: the window includes the query), m = max(sink, max_j s_j),
out = Σ_j exp(s_j - m)·v_j / (Σ_j exp(s_j - m) + exp(sink - m)). The sink is an unscaled logit with
no value. One program takes a block of (query, head) rows of one kv group and one split of the
keys, so each key and value is read once per kv head and split, and no [heads, T, S] tensor is
formed. With one split (prefill) the program finishes the rows itself: its running max starts at
the sink and its denominator at 1. With several (decode, flash-decoding style: a few query rows
would otherwise occupy one block per kv head) each split writes its partial state (max, sum,
unnormalized output) and `_combine_kernel` merges the splits and adds the sink once. The key
loop has no branch around its loads, so Triton can software-pipeline them; keys no row of the
block sees are masked out of the loads (no memory traffic), not skipped. The scores and softmax
are fp32; p is rounded to the value dtype for the p·V `tl.dot`, as flash kernels do. k and v may
be a quantized cache (`kv_quant.Quantized`: int8 or e4m3 codes and fp16 scales per block of
head_dim): each loaded block of codes is multiplied by its scales in registers, and p is then
rounded to the query's dtype. `attention_reference` is the naive torch oracle with the same
signature.
`batch_attention` is the decode step of several sequences (continuous batching): query row b
reads the cache of its own sequence, a slot of a pool `[sequences, slots, Hkv, D]`, from its own
first slot for its own number of keys (a full layer's positions 0..p, a sliding layer's window,
wrapping around the ring). The same kernel runs it (VARLEN): one set of programs per sequence,
kv head and key split, the splits sized for the longest sequence (a shorter one's extra splits
read nothing and leave an empty partial state, which the combine weighs zero).
`batch_attention_reference` gathers each row's keys and calls `attention_reference`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..model.kv_quant import Quantized
from .triton_dtypes import dot_dtype

BLOCK_M = 64  # (query, head) rows per program; fewer (down to 16, tl.dot's least) in decode
BLOCK_N = 64  # keys per step
STAGES = 3  # software-pipeline depth of the key loop
SPLIT_PROGRAMS = 256  # split the keys until about this many programs run (2 per SM or more)
SPLIT_MIN_KEYS = 256  # but give each split at least this many keys
COMBINE_ROWS = 16  # (query, head) rows per program of the split reduction
_LOG2E = tl.constexpr(1.4426950408889634)  # scores and sink go through exp2


@triton.jit
def _attention_kernel(
    q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, sink_ptr, q_pos_ptr, k_pos_ptr, out_ptr, m_ptr, l_ptr,
    seq_ptr, first_ptr, len_ptr,
    T, S, window, qk_scale, split_keys, sq_t, sq_h, sk_s, sk_h, sv_s, sv_h, sks_s, sks_h, svs_s,
    svs_h, so_t, so_h, sk_n, sv_n, sks_n, svs_n, skp_n,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, SLIDING: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr, DOT: tl.constexpr,
    K_BLOCK: tl.constexpr, V_BLOCK: tl.constexpr, K_FP8: tl.constexpr, V_FP8: tl.constexpr,
    VARLEN: tl.constexpr,
):  # fmt: skip
    """Rows of one kv group over one split of the keys. Without SPLIT, writes out [T, Hq, D];
    with it, the fp32 partial outputs [splits, T, Hq, D] at out_ptr and the partial maxima and
    sums [splits, T, Hq] at m_ptr and l_ptr. K_BLOCK / V_BLOCK: head_dim values per scale of a
    quantized K / V (scales at ks_ptr / vs_ptr), 0 where it is not quantized; K_FP8 / V_FP8: its
    codes are e4m3 bytes (uint8), not int8. VARLEN: query t = program_id(0) reads sequence
    seq[t] of the pool (the `*_n` strides; key positions at skp_n per sequence, 0 if shared),
    len[t] of its S slots from slot first[t] on, wrapping."""
    kv = tl.program_id(1)
    if VARLEN:  # one query: the rows are the heads of its kv group
        b = tl.program_id(0)
        r = tl.arange(0, BLOCK_M)
        r_mask = r < GROUP
        t = tl.zeros([BLOCK_M], tl.int32) + b
        seq = tl.load(seq_ptr + b).to(tl.int64)
        k_ptr += seq * sk_n
        v_ptr += seq * sv_n
        ks_ptr += seq * sks_n
        vs_ptr += seq * svs_n
        k_pos_ptr += seq * skp_n
        first = tl.load(first_ptr + b).to(tl.int32)
        keys = tl.load(len_ptr + b).to(tl.int32)
    else:
        r = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # row = token * GROUP + head
        r_mask = r < T * GROUP
        t = r // GROUP
        first = 0
        keys = S
    h = kv * GROUP + r % GROUP
    d = tl.arange(0, HEAD_DIM)
    q_offs = t[:, None] * sq_t + h[:, None] * sq_h + d[None, :]
    q = tl.load(q_ptr + q_offs, mask=r_mask[:, None], other=0.0).to(DOT)
    q_pos = tl.load(q_pos_ptr + t, mask=r_mask, other=-1).to(tl.int32)  # int32: fewer registers
    # log2 domain: exp2(x·log2 e) = exp(x). The running max starts at the sink, a floor that keeps
    # it finite; the sink's own term exp(sink - m) is 1 here, or added once by the combine.
    m_i = tl.load(sink_ptr + h, mask=r_mask, other=0.0).to(tl.float32) * _LOG2E
    l_i = tl.full([BLOCK_M], 0.0 if SPLIT else 1.0, tl.float32)
    acc = tl.full([BLOCK_M, HEAD_DIM], 0.0, tl.float32)
    lo = tl.program_id(2) * split_keys
    hi = tl.minimum(lo + split_keys, keys)
    for n0 in tl.range(lo, hi, BLOCK_N, num_stages=STAGES):
        n = n0 + tl.arange(0, BLOCK_N)  # the n-th key of the row's range, then its slot
        if VARLEN:
            n = first + n
            n = tl.where(n >= S, n - S, n)
        k_pos = tl.load(k_pos_ptr + n, mask=n0 + tl.arange(0, BLOCK_N) < hi, other=-1).to(tl.int32)
        back = q_pos[:, None] - k_pos[None, :]  # how far back each key is from each query
        # sliding: 0 <= back < window in one unsigned compare (the window includes the query)
        visible = back.to(tl.uint32, bitcast=True) < window if SLIDING else back >= 0
        visible = visible & (k_pos >= 0)[None, :] & r_mask[:, None]
        seen = tl.max(visible.to(tl.int32), axis=0) > 0  # keys some row of the block sees
        k_t = tl.load(
            k_ptr + n[None, :] * sk_s + kv * sk_h + d[:, None], mask=seen[None, :], other=0.0
        )
        if K_BLOCK:  # codes times their block's scale
            ks_offs = n[None, :] * sks_s + kv * sks_h + (d // K_BLOCK)[:, None]
            k_scale = tl.load(ks_ptr + ks_offs, mask=seen[None, :], other=0.0)
            k_t = _code_values(k_t, K_FP8) * k_scale.to(tl.float32)
        s = tl.dot(q, k_t.to(DOT)) * qk_scale  # (BLOCK_M, BLOCK_N), times log2 e / sqrt(D)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        rescale = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * rescale + tl.sum(p, axis=1)
        v = tl.load(
            v_ptr + n[:, None] * sv_s + kv * sv_h + d[None, :], mask=seen[:, None], other=0.0
        )
        if V_BLOCK:
            vs_offs = n[:, None] * svs_s + kv * svs_h + (d // V_BLOCK)[None, :]
            v_scale = tl.load(vs_ptr + vs_offs, mask=seen[:, None], other=0.0)
            v = _code_values(v, V_FP8) * v_scale.to(tl.float32)
            p = p.to(q_ptr.dtype.element_ty).to(DOT)  # p·V in the activation dtype
        else:
            p = p.to(v_ptr.dtype.element_ty).to(DOT)  # p·V in the value dtype, as flash kernels
        acc = tl.dot(p, v.to(DOT), acc * rescale[:, None])
        m_i = m_new
    if SPLIT:  # partial state of this split: [splits, T, Hq] maxima and sums, outputs alongside
        heads = GROUP * tl.num_programs(1)
        part = (tl.program_id(2) * T + t) * heads + h
        tl.store(m_ptr + part, m_i, mask=r_mask)
        tl.store(l_ptr + part, l_i, mask=r_mask)
        tl.store(out_ptr + part[:, None] * HEAD_DIM + d[None, :], acc, mask=r_mask[:, None])
    else:
        out = (acc / l_i[:, None]).to(out_ptr.dtype.element_ty)
        o_offs = t[:, None] * so_t + h[:, None] * so_h + d[None, :]
        tl.store(out_ptr + o_offs, out, mask=r_mask[:, None])


@triton.jit
def _code_values(codes, FP8: tl.constexpr):
    """Codes as fp32: int8 as they are; float8 e4m3fn bytes decoded by hand (sm_80 and sm_86 have
    no e4m3 type): its 7 low bits, shifted into an fp16's exponent and mantissa fields, are the
    value times 2**-8 (fp16's exponent bias is 8 more, and e4m3's subnormals land on fp16's)."""
    if FP8:
        magnitude = ((codes & 0x7F).to(tl.int16) << 7).to(tl.float16, bitcast=True)
        x = magnitude.to(tl.float32) * 256.0
        return tl.where((codes & 0x80) != 0, -x, x)
    return codes.to(tl.float32)


@triton.jit
def _combine_kernel(
    part_ptr, m_ptr, l_ptr, sink_ptr, out_ptr, rows, heads, splits, so_t, so_h,
    HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """Merge the splits' partial states of rows (t, h) and count the sink once."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # row = t * heads + h
    r_mask = r < rows
    d = tl.arange(0, HEAD_DIM)
    sink = tl.load(sink_ptr + r % heads, mask=r_mask, other=0.0).to(tl.float32) * _LOG2E
    m = sink  # every split's max starts at the sink, so the overall max is among theirs
    for split in range(splits):
        m = tl.maximum(m, tl.load(m_ptr + split * rows + r, mask=r_mask, other=0.0))
    l_sum = tl.exp2(sink - m)
    acc = tl.full([BLOCK_R, HEAD_DIM], 0.0, tl.float32)
    for split in range(splits):
        offs = split * rows + r
        weight = tl.exp2(tl.load(m_ptr + offs, mask=r_mask, other=0.0) - m)
        l_sum += weight * tl.load(l_ptr + offs, mask=r_mask, other=0.0)
        part = tl.load(part_ptr + offs[:, None] * HEAD_DIM + d[None, :], mask=r_mask[:, None])
        acc += weight[:, None] * part
    out = (acc / l_sum[:, None]).to(out_ptr.dtype.element_ty)
    t, h = r // heads, r % heads
    tl.store(
        out_ptr + t[:, None] * so_t + h[:, None] * so_h + d[None, :], out, mask=r_mask[:, None]
    )


def attention(
    q: torch.Tensor,
    k: torch.Tensor | Quantized,
    v: torch.Tensor | Quantized,
    sinks: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    window: int | None,
) -> torch.Tensor:
    """Attention output [T, Hq, D]; `window` None for a full layer, else the sliding window."""
    return _launch(q, k, v, sinks, q_pos, k_pos, window, k.shape[0])


def batch_attention(
    q: torch.Tensor,
    k: torch.Tensor | Quantized,
    v: torch.Tensor | Quantized,
    sinks: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    seq: torch.Tensor,
    first: torch.Tensor,
    lengths: torch.Tensor,
    most_keys: int,
    window: int | None,
) -> torch.Tensor:
    """Attention output [B, Hq, D] of one query per sequence: q [B, Hq, D] at q_pos [B] over the
    pool k, v [N, S, Hkv, D] whose slots hold positions k_pos ([S] for all, or [N, S]); row b
    reads lengths[b] slots of sequence seq[b] from slot first[b] on (wrapping at S), and no row
    reads more than `most_keys`."""
    varlen = (seq.contiguous(), first.contiguous(), lengths.contiguous(), k_pos.dim() == 2)
    return _launch(q, k, v, sinks, q_pos, k_pos, window, most_keys, varlen)


def _launch(q, k, v, sinks, q_pos, k_pos, window, most_keys, varlen=None) -> torch.Tensor:
    """Run `_attention_kernel` (and the combine), for `attention` or, given `varlen` (seq,
    first, lengths, whether each sequence has its key positions), `batch_attention`."""
    (k, k_scales, k_block, k_fp8), (v, v_scales, v_block, v_fp8) = _codes(k), _codes(v)
    t, hq, dim = q.shape
    s, hkv, _ = k.shape[-3:]
    if hq % hkv or k.shape != v.shape or k.shape[-1] != dim:
        raise ValueError(
            f"attention shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if dim < 16 or dim & (dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16, got {dim}")
    if q.stride(2) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("q, k and v need a contiguous last (head_dim) axis")
    group = hq // hkv
    out = torch.empty_like(q)
    if varlen is None:
        block_m = min(BLOCK_M, max(16, triton.next_power_of_2(t * group)))
        row_blocks = triton.cdiv(t * group, block_m)
        seq = first = lengths = q_pos  # unused
        pool_strides = (0, 0, 0, 0, 0)
    else:
        seq, first, lengths, own_positions = varlen
        block_m, row_blocks = max(16, triton.next_power_of_2(group)), t
        pool_strides = (k.stride(0), v.stride(0), k_scales.stride(0), v_scales.stride(0))
        pool_strides += (k_pos.stride(0) if own_positions else 0,)
    split_keys, splits = _key_splits(most_keys, row_blocks * hkv)
    sinks = sinks.contiguous()
    if splits > 1:
        m = torch.empty(splits, t, hq, dtype=torch.float32, device=q.device)
        l_sum = torch.empty_like(m)
        part = torch.empty(splits, t, hq, dim, dtype=torch.float32, device=q.device)
    else:
        m = l_sum = part = out  # unused
    strides = (*q.stride()[:2], *k.stride()[-3:-1], *v.stride()[-3:-1])
    strides += (*k_scales.stride()[-3:-1], *v_scales.stride()[-3:-1], *out.stride()[:2])
    meta = dict(GROUP=group, HEAD_DIM=dim, SLIDING=window is not None, SPLIT=splits > 1)
    _attention_kernel[(row_blocks, hkv, splits)](
        q, k, v, k_scales, v_scales, sinks, q_pos.contiguous(), k_pos.contiguous(), part, m,
        l_sum, seq, first, lengths, t, s, window or 0, _LOG2E.value / math.sqrt(dim), split_keys,
        *strides, *pool_strides,
        BLOCK_M=block_m, BLOCK_N=BLOCK_N, STAGES=STAGES, DOT=dot_dtype(q.device, q.dtype),
        K_BLOCK=k_block, V_BLOCK=v_block, K_FP8=k_fp8, V_FP8=v_fp8, VARLEN=varlen is not None,
        **meta,
    )  # fmt: skip
    if splits > 1:
        _combine_kernel[(triton.cdiv(t * hq, COMBINE_ROWS),)](
            part, m, l_sum, sinks, out, t * hq, hq, splits, *out.stride()[:2],
            HEAD_DIM=dim, BLOCK_R=COMBINE_ROWS,
        )  # fmt: skip
    return out


def _codes(x: torch.Tensor | Quantized) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """(codes or values, scales, values per scale, whether the codes are e4m3 bytes); the values
    themselves, 0 and False unquantized."""
    if not isinstance(x, Quantized):
        return x, x, 0, False
    fp8 = x.codes.dtype == torch.float8_e4m3fn
    codes = x.codes.view(torch.uint8) if fp8 else x.codes
    return codes, x.scales, x.codes.shape[-1] // x.scales.shape[-1], fp8


def _key_splits(keys: int, programs: int) -> tuple[int, int]:
    """(keys per split, a multiple of BLOCK_N; number of splits) for `programs` without splits."""
    most = max(1, keys // SPLIT_MIN_KEYS)
    splits = max(1, min(most, triton.cdiv(SPLIT_PROGRAMS, programs)))
    split_keys = triton.cdiv(triton.cdiv(keys, splits), BLOCK_N) * BLOCK_N
    return split_keys, triton.cdiv(keys, split_keys)


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


def batch_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor | Quantized,
    v: torch.Tensor | Quantized,
    sinks: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    seq: torch.Tensor,
    first: torch.Tensor,
    lengths: torch.Tensor,
    most_keys: int,
    window: int | None,
) -> torch.Tensor:
    """`batch_attention` as `attention_reference` row by row, over each row's gathered keys."""
    rows = []
    for b in range(q.shape[0]):
        n, slots = int(seq[b]), k.shape[1]
        taken = (int(first[b]) + torch.arange(int(lengths[b]))) % slots
        positions = (k_pos[n] if k_pos.dim() == 2 else k_pos)[taken]
        one = slice(b, b + 1)
        keys, values = k[n][taken].float(), v[n][taken].float()
        rows.append(attention_reference(q[one], keys, values, sinks, q_pos[one], positions, window))
    return torch.cat(rows)
