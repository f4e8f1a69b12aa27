"""MXFP4 decoding: packed uint8 blocks + E8M0 scales → dense weights.

Layout (OCP Microscaling, as published for gpt-oss; the same bytes in both checkpoint formats):
- `blocks[..., G, 16]` uint8: each byte holds two FP4 (E2M1) codes, element 2j in the LOW nibble
  and element 2j+1 in the HIGH nibble; bit 3 of a code is the sign.
- `scales[..., G]` uint8: one E8M0 exponent per block of 32 elements, value 2**(s - 127).
- Block g holds elements g*32 .. g*32+31 of the LAST (input, reduction) axis, so the result has
  shape `[..., G * 32]`: a weight in nn.Linear orientation [out, in].

Decoding is exact in bf16: every value is ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}·2^k. (Scale 255, NaN in
the OCP spec, decodes as 2^128 = inf, as no published checkpoint uses it.)
`dequantize` is the one decode in the project; fast kernels are tested against it.
"""

from __future__ import annotations

import torch

FP4_VALUES = (
    +0.0,
    +0.5,
    +1.0,
    +1.5,
    +2.0,
    +3.0,
    +4.0,
    +6.0,
    -0.0,
    -0.5,
    -1.0,
    -1.5,
    -2.0,
    -3.0,
    -4.0,
    -6.0,
)
BLOCK = 32  # elements per scale
BYTES_PER_BLOCK = BLOCK // 2

# Both nibbles of every byte value at once: _PAIRS[b] = (value of low nibble, value of high nibble).
_LUT = torch.tensor(FP4_VALUES, dtype=torch.float32)
_PAIRS = torch.stack([_LUT[torch.arange(256) & 0x0F], _LUT[torch.arange(256) >> 4]], dim=-1)


def dequantize(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """Decode MXFP4 `blocks [..., G, 16]` and `scales [..., G]` into `[..., G*32]` of `dtype`."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise TypeError(f"MXFP4 blocks and scales must be uint8, got {blocks.dtype}/{scales.dtype}")
    if blocks.shape[-1] != BYTES_PER_BLOCK or blocks.shape[:-1] != scales.shape:
        raise ValueError(
            f"MXFP4 shapes do not match: blocks {tuple(blocks.shape)}, scales {tuple(scales.shape)}"
        )
    values = _PAIRS.to(blocks.device, dtype)[blocks.int()]  # (..., G, 16, 2): low nibble first
    values = values.view(*scales.shape, BLOCK)  # (..., G, 32)
    # Powers of two multiply exactly in float32 and bf16 (same exponent range, subnormals kept).
    factors = torch.exp2(scales.to(torch.float32) - 127).to(dtype)
    return (values * factors.unsqueeze(-1)).view(*scales.shape[:-1], scales.shape[-1] * BLOCK)


def packed_nbytes(out_features: int, in_features: int) -> int:
    """Bytes of one packed [out, in] MXFP4 matrix: half a byte per weight plus a scale per 32."""
    return out_features * in_features // 2 + out_features * in_features // BLOCK
