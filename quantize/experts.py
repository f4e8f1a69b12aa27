"""One layer's dense Hugging Face experts → the published MXFP4 tensors, in one call.

The per-weight conversion (transpose to [out, in], then MXFP4 along `in`) lives with the dense
checkpoint reader in `gptoss_lite.checkpoint.dense`; this pairs the two projections of a layer,
as the quantization-error tools hold them.
"""

from __future__ import annotations

import torch

from gptoss_lite.checkpoint.dense import quantize_dense

PROJECTIONS = ("gate_up_proj", "down_proj")


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
