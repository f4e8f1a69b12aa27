"""Mixture of experts with the expert weights kept packed in MXFP4.

Routing: the router's logits (bias included) pick the top-k experts per token (equal logits: the
lower expert id first), and the weights are a softmax over those k logits only. Each routed
expert is dequantized once per call, used for all of its tokens, and dropped before the next one:
the transient memory is one expert, not a layer.

Expert math (per token, per expert): h = W1·x + b1, with gate and up INTERLEAVED along h
(even = gate, odd = up); gate is clamped from above only, up on both sides; the activation is
gate·sigmoid(alpha·gate)·(up + 1); y = W2·a + b2, the bias added per expert before weighting.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from . import mxfp4


@dataclass
class PackedExperts:
    """One layer's experts: MXFP4 blocks/scales in [out, in] orientation, biases in bf16/fp32."""

    gate_up_blocks: torch.Tensor  # (E, 2I, H/32, 16) uint8
    gate_up_scales: torch.Tensor  # (E, 2I, H/32) uint8
    gate_up_bias: torch.Tensor  # (E, 2I)
    down_blocks: torch.Tensor  # (E, H, I/32, 16) uint8
    down_scales: torch.Tensor  # (E, H, I/32) uint8
    down_bias: torch.Tensor  # (E, H)

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


def route(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int, linear=F.linear
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k expert ids [T, k] and their weights [T, k] (softmax over the k selected logits);
    `linear` computes the router's logits (F.linear or a kernel with its signature)."""
    logits = linear(x, weight, bias)  # (T, E)
    # Equal logits go in expert-id order (torch.topk leaves ties open; bf16 logits do tie), the
    # rule every implementation of the routing follows.
    top, idx = torch.sort(logits, dim=-1, descending=True, stable=True)
    return idx[:, :k], torch.softmax(top[:, :k], dim=-1)


def swiglu(h: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """Clamped SwiGLU on interleaved gate/up h [..., 2I] → [..., I]."""
    gate, up = h[..., ::2], h[..., 1::2]
    gate = gate.clamp(max=limit)  # no lower bound on the gate
    up = up.clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (up + 1)


def experts_forward(
    x: torch.Tensor,
    expert_idx: torch.Tensor,
    expert_weight: torch.Tensor,
    experts: PackedExperts,
    alpha: float,
    limit: float,
) -> torch.Tensor:
    """Σ_e w_e·expert_e(x) for x [T, H]; dequantizes each routed expert once."""
    out = torch.zeros(x.shape[0], experts.down_bias.shape[1], dtype=torch.float32, device=x.device)
    for e in torch.unique(expert_idx).tolist():
        tokens, slots = torch.nonzero(expert_idx == e, as_tuple=True)
        w1 = mxfp4.dequantize(experts.gate_up_blocks[e], experts.gate_up_scales[e], x.dtype)
        h = F.linear(x[tokens], w1, experts.gate_up_bias[e].to(x.dtype))
        del w1
        a = swiglu(h, alpha, limit)
        w2 = mxfp4.dequantize(experts.down_blocks[e], experts.down_scales[e], x.dtype)
        y = F.linear(a, w2, experts.down_bias[e].to(x.dtype))
        del w2
        out.index_add_(0, tokens, y.float() * expert_weight[tokens, slots, None].float())
    return out.to(x.dtype)
