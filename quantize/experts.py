"""gpt-oss MoE experts: dense Hugging Face layout → the published MXFP4 layout.

A dense HF checkpoint (what `GptOssForCausalLM.save_pretrained` writes without quantization) holds
`mlp.experts.gate_up_proj [E, H, 2I]` and `down_proj [E, I, H]`, used as `x @ W` (gate and up
interleaved on the last axis of gate_up). The published checkpoints hold instead, per projection,
`*_blocks [E, out, in/32, 16]` and `*_scales [E, out, in/32]` in nn.Linear orientation [out, in]:
so each dense weight is transposed, then encoded in blocks along `in`. Row order, and so the
gate/up interleave, is unchanged. Biases (`*_bias`) stay dense bf16 under their own names.
"""

from __future__ import annotations

import re

import torch

from .mxfp4 import quantize_mxfp4

PROJECTIONS = ("gate_up_proj", "down_proj")
# Names of the dense expert weights in a HF gpt-oss checkpoint.
DENSE_EXPERT = re.compile(r"^model\.layers\.\d+\.mlp\.experts\.(gate_up_proj|down_proj)$")


def quantize_dense_experts(
    gate_up_proj: torch.Tensor, down_proj: torch.Tensor
) -> dict[str, torch.Tensor]:
    """MXFP4 tensors for one layer's experts, from the dense HF `x @ W` weights.

    `gate_up_proj [..., H, 2I]` and `down_proj [..., I, H]` (any float dtype; usually [E, ...])
    give `gate_up_proj_blocks [..., 2I, H/32, 16]`, `gate_up_proj_scales [..., 2I, H/32]`,
    `down_proj_blocks [..., H, I/32, 16]` and `down_proj_scales [..., H, I/32]`, all uint8,
    byte-identical to what `quantize` writes into a checkpoint.
    """
    hidden, intermediate = down_proj.shape[-1], down_proj.shape[-2]
    if gate_up_proj.shape[-2:] != (hidden, 2 * intermediate):
        raise ValueError(
            f"expert shapes disagree: gate_up_proj {tuple(gate_up_proj.shape)} should end in "
            f"({hidden}, {2 * intermediate}) for down_proj {tuple(down_proj.shape)}"
        )
    out: dict[str, torch.Tensor] = {}
    for name, weight in zip(PROJECTIONS, (gate_up_proj, down_proj), strict=True):
        out.update(quantize_dense(name, weight))
    return out


def quantize_dense(name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """`{name}_blocks`, `{name}_scales` of one dense `x @ W` weight `[..., in, out]`."""
    blocks, scales = quantize_mxfp4(weight.transpose(-1, -2))  # encoded along `in`
    return {f"{name}_blocks": blocks, f"{name}_scales": scales}


def packed_shapes(dense_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the blocks and scales made from a dense `x @ W` weight of `dense_shape`."""
    *lead, k, n = dense_shape
    return (*lead, n, k // 32, 16), (*lead, n, k // 32)
