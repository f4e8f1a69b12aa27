"""Attention with learned sinks, GQA and an optional sliding window, in bounded memory.

Keys carry their absolute positions, so the same function serves prefill chunks, single-token
decode, and the ring buffer of sliding layers (whose slots are in no particular order; an empty
slot has position -1). Key j is visible to query i iff 0 <= pos_j <= pos_i and, with a window W,
pos_j > pos_i - W (W keys including the query itself).

The softmax runs online over key blocks in float32 (never a full [heads, T, S] score tensor
beyond one block). Each head's sink is an extra logit in the denominator with no value vector,
and is NOT multiplied by the 1/sqrt(head_dim) scale.
"""

from __future__ import annotations

import torch

KEY_BLOCK = 1024  # keys per step of the online softmax


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    window: int | None,
    key_block: int = KEY_BLOCK,
) -> torch.Tensor:
    """q [T, Hq, D], k/v [S, Hkv, D], sinks [Hq], q_pos [T], k_pos [S] → [T, Hq, D] in q's dtype."""
    t, hq, d = q.shape
    hkv = k.shape[1]
    qg = q.float().view(t, hkv, hq // hkv, d).permute(1, 2, 0, 3) * d**-0.5  # (Hkv, G, T, D)
    # Running max starts at the sink; the denominator starts with exp(sink - max) = 1.
    m = sinks.float().view(hkv, hq // hkv, 1).expand(hkv, hq // hkv, t).clone()
    denom = torch.ones_like(m)
    acc = torch.zeros(hkv, hq // hkv, t, d, dtype=torch.float32, device=q.device)
    for start in range(0, k.shape[0], key_block):
        kb = k[start : start + key_block].float().permute(1, 2, 0)  # (Hkv, D, B)
        vb = v[start : start + key_block].float().transpose(0, 1)  # (Hkv, B, D)
        scores = torch.matmul(qg, kb.unsqueeze(1))  # (Hkv, G, T, B)
        visible = _visible(q_pos, k_pos[start : start + key_block], window)  # (T, B)
        scores = scores.masked_fill(~visible, float("-inf"))
        m_new = torch.maximum(m, scores.amax(dim=-1))
        p = torch.exp(scores - m_new.unsqueeze(-1))
        rescale = torch.exp(m - m_new)
        denom = denom * rescale + p.sum(dim=-1)
        acc = acc * rescale.unsqueeze(-1) + torch.matmul(p, vb.unsqueeze(1))
        m = m_new
    out = acc / denom.unsqueeze(-1)  # (Hkv, G, T, D)
    return out.permute(2, 0, 1, 3).reshape(t, hq, d).to(q.dtype)


def _visible(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    qp, kp = q_pos[:, None], k_pos[None, :]
    ok = (kp >= 0) & (kp <= qp)
    if window is not None:
        ok &= kp > qp - window  # the window includes the query
    return ok
