"""Attention with learned sinks, GQA and an optional sliding window, in bounded memory.

Keys carry their absolute positions, so the same function serves prefill chunks, single-token
decode, and the ring buffer of sliding layers (whose slots are in no particular order; an empty
slot has position -1). Key j is visible to query i iff 0 <= pos_j <= pos_i and, with a window W,
pos_j > pos_i - W (W keys including the query itself).

The softmax runs online over key blocks in float32 (never a full [heads, T, S] score tensor
beyond one block). Each head's sink is an extra logit in the denominator with no value vector,
and is NOT multiplied by the 1/sqrt(head_dim) scale. k and v may be a quantized cache
(`kv_quant.Quantized`): each key block is dequantized to fp32 as it is reached, never the whole.
"""

from __future__ import annotations

import torch

from .kv_quant import Quantized

KEY_BLOCK = 1024  # keys per step of the online softmax


def attention(
    q: torch.Tensor,
    k: torch.Tensor | Quantized,
    v: torch.Tensor | Quantized,
    sinks: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    window: int | None,
    key_block: int = KEY_BLOCK,
) -> torch.Tensor:
    """q [T, Hq, D], k/v [S, Hkv, D], sinks [Hq], q_pos [T], k_pos [S] → [T, Hq, D] in q's dtype."""
    t, hq, d = q.shape
    hkv, g = k.shape[1], hq // k.shape[1]
    # Rows (g, t) of each kv head side by side, so one batched matmul per kv head, no broadcast.
    qg = (q.float() * d**-0.5).view(t, hkv, g, d).permute(1, 2, 0, 3).reshape(hkv, g * t, d)
    # Running max starts at the sink; the denominator starts with exp(sink - max) = 1.
    m = sinks.float().view(hkv, g, 1).expand(hkv, g, t).reshape(hkv, g * t).clone()
    denom = torch.ones_like(m)
    acc = torch.zeros(hkv, g * t, d, dtype=torch.float32, device=q.device)
    for start in range(0, k.shape[0], key_block):
        kb = k[start : start + key_block].float().permute(1, 2, 0)  # (Hkv, D, B)
        vb = v[start : start + key_block].float().transpose(0, 1)  # (Hkv, B, D)
        scores = torch.bmm(qg, kb)  # (Hkv, G*T, B)
        visible = _visible(q_pos, k_pos[start : start + key_block], window)  # (T, B)
        scores.view(hkv, g, t, -1).masked_fill_(~visible, float("-inf"))
        m_new = torch.maximum(m, scores.amax(dim=-1))
        p = scores.sub_(m_new.unsqueeze(-1)).exp_()  # in place: one score-sized tensor per block
        rescale = torch.exp(m - m_new)
        denom.mul_(rescale).add_(p.sum(dim=-1))
        acc.mul_(rescale.unsqueeze(-1)).baddbmm_(p, vb)
        m = m_new
        del scores, p  # free before the next block's scores are made
    out = acc.div_(denom.unsqueeze(-1)).view(hkv, g, t, d)
    return out.permute(2, 0, 1, 3).reshape(t, hq, d).to(q.dtype)


def _visible(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    qp, kp = q_pos[:, None], k_pos[None, :]
    ok = (kp >= 0) & (kp <= qp)
    if window is not None:
        ok &= kp > qp - window  # the window includes the query
    return ok
