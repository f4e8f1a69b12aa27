"""The MXFP4 format: packed uint8 blocks + E8M0 scales ⇄ dense weights (decode and encode).

Layout (OCP Microscaling, as published for gpt-oss; the same bytes in both checkpoint formats):
- `blocks[..., G, 16]` uint8: each byte holds two FP4 (E2M1) codes, element 2j in the LOW nibble
  and element 2j+1 in the HIGH nibble; bit 3 of a code is the sign.
- `scales[..., G]` uint8: one E8M0 exponent per block of 32 elements, value 2**(s - 127).
- Block g holds elements g*32 .. g*32+31 of the LAST (input, reduction) axis, so the result has
  shape `[..., G * 32]`: a weight in nn.Linear orientation [out, in].

Decoding is exact in bf16: every value is ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}·2^k. (Scale 255, NaN in
the OCP spec, decodes as 2^128 = inf, as no published checkpoint uses it.)
`dequantize` is the one decode in the project; fast kernels are tested against it.

`quantize_mxfp4` is its exact inverse (OCP Microscaling v1.0). Per block: s = floor(log2(amax))
- 2 + 127 (2 is the largest E2M1 exponent), clamped to [0, 254], and an all-zero block gets
s = 0. Each element x/2**(s-127) is rounded to nearest, ties to even code, onto the E2M1
magnitudes, saturating at 6 (magnitudes in (6, 8) occur because amax/scale lies in [4, 8)). The
sign bit is copied, so -0.0 and negatives that round to zero become code 8 (-0.0), as IEEE
rounding would. The work is done in float32 (exact for bf16 and fp16 inputs), a bounded chunk of
rows at a time; NaN or Inf raises `GptossError`.
"""

from __future__ import annotations

import torch

from ..errors import GptossError

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


# ---------------------------------------------------------------------------- encoding

_EMAX_E2M1 = 2  # 6 = 1.5 * 2**2
_SCALE_MAX = 254  # E8M0: 255 is NaN
CHUNK_ELEMENTS = 1 << 22  # float32 working set per chunk: 16 MiB, plus a few temporaries


def quantize_mxfp4(
    w: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode `w [..., K]` (K % 32 == 0) as MXFP4 `blocks [..., K/32, 16]`, `scales [..., K/32]`.

    Blocks run along the last axis, so pass weights in nn.Linear orientation [out, in]. `w` may be
    a non-contiguous view (e.g. a transpose); it is read a chunk of rows at a time.
    """
    if not w.is_floating_point():
        raise TypeError(f"MXFP4 encoding needs a floating-point tensor, got {w.dtype}")
    if w.dim() == 0 or w.shape[-1] % BLOCK:
        raise ValueError(f"MXFP4 needs a last axis that is a multiple of 32, got {list(w.shape)}")
    k = w.shape[-1]
    lead = w.shape[:-1]
    groups = k // BLOCK
    rows3 = w.reshape(-1, 1, k) if w.dim() == 1 else w.reshape(-1, w.shape[-2], k)  # (M, R, K)
    n_rows = rows3.shape[0] * rows3.shape[1]
    blocks = torch.empty(n_rows * groups, BYTES_PER_BLOCK, dtype=torch.uint8, device=w.device)
    scales = torch.empty(n_rows * groups, dtype=torch.uint8, device=w.device)
    step = max(1, chunk_elements // k)
    for m in range(rows3.shape[0]):
        for r0 in range(0, rows3.shape[1], step):
            chunk = rows3[m, r0 : r0 + step].float()  # (r, K)
            first_row = m * rows3.shape[1] + r0
            _check_finite(chunk, first_row, lead)  # after .float(): catches float64 overflow too
            b0, b1 = first_row * groups, (first_row + chunk.shape[0]) * groups
            blocks[b0:b1], scales[b0:b1] = encode_blocks(chunk.reshape(-1, BLOCK))
    return blocks.reshape(*lead, groups, BYTES_PER_BLOCK), scales.reshape(*lead, groups)


def encode_blocks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode finite float32 blocks `x [N, 32]` → packed bytes `[N, 16]` and E8M0 scales `[N]`."""
    magnitude = x.abs()
    scales = shared_exponent(magnitude.amax(dim=-1))
    scaled = torch.ldexp(magnitude, 127 - scales.to(torch.int32).unsqueeze(-1))  # exact: 2**k
    codes = e2m1_code(scaled) | (torch.signbit(x).to(torch.uint8) << 3)  # (N, 32)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)  # low nibble = even element
    return packed, scales


def shared_exponent(amax: torch.Tensor) -> torch.Tensor:
    """E8M0 scale per block from its largest magnitude: floor(log2(amax)) - 2 + 127, clamped."""
    _, exp = torch.frexp(amax)  # amax = mant * 2**exp, mant in [0.5, 1): floor(log2) = exp - 1
    s = exp - 1 - _EMAX_E2M1 + 127
    s = torch.where(amax == 0, 0, s)  # all-zero block: any scale decodes to zeros; take the least
    return s.clamp(0, _SCALE_MAX).to(torch.uint8)


def e2m1_code(y: torch.Tensor) -> torch.Tensor:
    """Nearest E2M1 magnitude code (0..7) for `y` in [0, 8), ties to the even code, saturating at 6.

    The grid step is 0.5 below 2 (codes 0..4), 1 in [2, 4) (codes 4..6) and 2 from 4 (codes 6, 7),
    so code = round(y / step) + offset; torch.round is half-to-even, and an even multiple of the
    step is an even code.
    """
    step_exp = (y >= 2).to(torch.int32) + (y >= 4).to(torch.int32) - 1  # -1, 0 or 1
    n = torch.round(torch.ldexp(y, -step_exp))
    return (n + 2 * (step_exp + 1)).clamp_(max=7).to(torch.uint8)


def _check_finite(chunk: torch.Tensor, first_row: int, lead: torch.Size) -> None:
    bad = ~torch.isfinite(chunk)
    if not bad.any():
        return
    row, col = (int(i) for i in bad.nonzero()[0])
    index = (*_unravel(first_row + row, lead), col)
    raise GptossError(
        f"cannot encode MXFP4: {int(bad.sum())} NaN/Inf value(s), the first at index {index}"
    )


def _unravel(flat: int, shape: torch.Size) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        flat, rem = divmod(flat, size)
        out.append(rem)
    return tuple(reversed(out))
