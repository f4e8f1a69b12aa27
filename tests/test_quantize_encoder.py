"""MXFP4 encoder: hand-computed blocks, exact round trips with the decoder, the error bound."""

from __future__ import annotations

import math

import pytest
import torch

from gptoss_lite.errors import GptossError
from gptoss_lite.model.mxfp4 import FP4_VALUES, dequantize, quantize_mxfp4
from quantize.experts import quantize_dense_experts

GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def block(values: list[float], fill: float = 0.0) -> torch.Tensor:
    """A float32 block of 32: `values`, then `fill`."""
    return torch.tensor(values + [fill] * (32 - len(values)), dtype=torch.float32)


def codes(blocks: torch.Tensor) -> list[int]:
    """The 32 4-bit codes of one packed block, element order (low nibble first)."""
    out = []
    for byte in blocks.reshape(-1).tolist():
        out += [byte & 0x0F, byte >> 4]
    return out


def oracle(x: list[float]) -> tuple[list[int], int]:
    """Slow reference encoder of one block: OCP scale, nearest grid value, ties to even code."""
    amax = max(abs(v) for v in x)
    s = 0 if amax == 0 else min(max(math.floor(math.log2(amax)) - 2 + 127, 0), 254)
    out = []
    for v in x:
        y = abs(v) / 2.0 ** (s - 127)
        best = min(range(8), key=lambda c: (abs(GRID[c] - y), c % 2))  # nearest, then even
        out.append(best | (8 if math.copysign(1.0, v) < 0 else 0))
    return out, s


# ------------------------------------------------------------------ hand-computed blocks


@pytest.mark.parametrize(
    ("amax", "scale"),
    [(6.0, 127), (4.0, 127), (7.99, 127), (8.0, 128), (1.0, 125), (0.3, 123), (3.9, 126)],
)
def test_scale_is_floor_log2_amax_minus_2(amax, scale):
    _, scales = quantize_mxfp4(block([amax, -amax / 3]))
    assert scales.tolist() == [scale]


def test_nibble_order_and_hand_encoded_bytes():
    # Scale 2**0 (amax 6): element 2j is the low nibble of byte j.
    blocks, scales = quantize_mxfp4(block([0.5, 6.0, -1.0, 1.5, -0.0, 4.0]))
    assert scales.tolist() == [127]
    assert blocks.tolist() == [[0x71, 0x3A, 0x68] + [0] * 13]


def test_ties_go_to_the_even_code_at_every_midpoint():
    # amax 6 fixes the scale at 1; midpoints 0.25 .. 5 sit between codes (0,1) .. (6,7).
    mids = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    got = codes(quantize_mxfp4(block([*mids, 6.0]))[0])[:8]
    assert got == [0, 2, 2, 4, 4, 6, 6, 7]
    negative = codes(quantize_mxfp4(block([-m for m in mids] + [6.0]))[0])[:7]
    assert negative == [8 | c for c in (0, 2, 2, 4, 4, 6, 6)]


def test_just_off_the_midpoints_rounds_to_the_nearest():
    mids = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    mid32 = torch.tensor(mids)
    above = torch.nextafter(mid32, torch.tensor(9.0)).tolist()  # the next float32 up
    below = torch.nextafter(mid32, torch.tensor(0.0)).tolist()
    up = codes(quantize_mxfp4(block([*above, 6.0]))[0])[:7]
    down = codes(quantize_mxfp4(block([*below, 6.0]))[0])[:7]
    assert up == [1, 2, 3, 4, 5, 6, 7]
    assert down == [0, 1, 2, 3, 4, 5, 6]


def test_saturates_at_six_times_the_scale():
    # amax 7.9 keeps scale 1 (floor(log2 7.9) = 2), so 6.5 .. 7.9 clamp to ±6.
    blocks, scales = quantize_mxfp4(block([7.9, -7.9, 6.5, -7.0]))
    assert scales.tolist() == [127]
    assert codes(blocks)[:4] == [7, 15, 7, 15]
    assert dequantize(blocks, scales, torch.float32)[:4].tolist() == [6.0, -6.0, 6.0, -6.0]


def test_negative_zero_keeps_its_sign():
    blocks, scales = quantize_mxfp4(block([6.0, -0.0, 0.0, -0.1, 0.1]))
    assert codes(blocks)[1:5] == [8, 0, 8, 0]
    decoded = dequantize(blocks, scales, torch.float32)
    assert torch.signbit(decoded[1:5]).tolist() == [True, False, True, False]


def test_all_zero_blocks_get_the_least_scale():
    blocks, scales = quantize_mxfp4(torch.zeros(2, 64))
    assert scales.tolist() == [[0, 0], [0, 0]]
    assert blocks.eq(0).all()
    blocks, scales = quantize_mxfp4(torch.full((32,), -0.0))
    assert scales.tolist() == [0] and blocks.eq(0x88).all()


def test_tiny_values_at_the_bottom_of_e8m0():
    # amax 3·2**-127 → floor(log2) - 2 + 127 = -1, clamped to 0: scale 2**-127 (an fp32 subnormal).
    u = 2.0**-127
    x = block([3 * u, 0.5 * u, u, 1.5 * u, 0.125 * u, 0.25 * u, 0.75 * u, 2.0**-149])
    blocks, scales = quantize_mxfp4(x)
    assert scales.tolist() == [0]
    assert codes(blocks)[:8] == [5, 1, 2, 3, 0, 0, 2, 0]
    assert dequantize(blocks, scales, torch.float32)[:4].tolist() == [3 * u, 0.5 * u, u, 1.5 * u]
    assert quantize_mxfp4(block([2.0**-125]))[1].tolist() == [0]  # exactly at the bottom, unclamped


def test_largest_float32_uses_scale_252():
    big = torch.finfo(torch.float32).max  # floor(log2) = 127
    blocks, scales = quantize_mxfp4(block([big, 2.0**127, -(2.0**125)]))
    assert scales.tolist() == [252]
    decoded = dequantize(blocks, scales, torch.float32)
    assert decoded[:3].tolist() == [6 * 2.0**125, 4 * 2.0**125, -(2.0**125)]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_are_refused_with_their_index(bad):
    w = torch.randn(2, 3, 64)
    w[1, 2, 40] = bad
    with pytest.raises(GptossError, match=r"NaN/Inf.*\(1, 2, 40\)"):
        quantize_mxfp4(w.to(torch.bfloat16))


def test_float64_beyond_float32_range_is_refused():
    with pytest.raises(GptossError, match="NaN/Inf"):
        quantize_mxfp4(torch.full((32,), 1e300, dtype=torch.float64))


def test_shape_and_dtype_errors():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_mxfp4(torch.zeros(4, 48))
    with pytest.raises(TypeError):
        quantize_mxfp4(torch.zeros(4, 32, dtype=torch.int32))


# ------------------------------------------------------------------ round trips and bounds


def random_packed(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random MXFP4 bytes and scales (0..252, finite in fp32) whose blocks each hold a ±6."""
    gen = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (n, 16), generator=gen, dtype=torch.uint8)
    blocks[:, 0] = (blocks[:, 0] & 0xF0) | torch.where(torch.rand(n, generator=gen) < 0.5, 7, 15)
    scales = torch.randint(0, 253, (n,), generator=gen, dtype=torch.uint8)
    return blocks, scales


def test_every_code_at_every_scale_round_trips_bit_exactly():
    # Each block: all 16 codes twice, so ±6 sets the scale; every scale from 0 to 252.
    pair_bytes = [lo | (hi << 4) for lo, hi in zip(range(0, 16, 2), range(1, 16, 2), strict=True)]
    blocks = torch.tensor(pair_bytes * 2, dtype=torch.uint8).repeat(253, 1)  # (253, 16)
    scales = torch.arange(253, dtype=torch.uint8)
    for dtype in (torch.float32, torch.bfloat16):
        again = quantize_mxfp4(dequantize(blocks, scales, dtype))
        assert torch.equal(again[0], blocks) and torch.equal(again[1], scales)


def test_random_representable_blocks_round_trip():
    blocks, scales = random_packed(20_000, seed=1)
    again = quantize_mxfp4(dequantize(blocks, scales, torch.float32))
    assert torch.equal(again[0], blocks) and torch.equal(again[1], scales)
    # Blocks without a ±6 re-encode at a finer scale: other bytes, the same values.
    gen = torch.Generator().manual_seed(2)
    any_blocks = torch.randint(0, 256, (20_000, 16), generator=gen, dtype=torch.uint8)
    values = dequantize(any_blocks, scales, torch.float32)
    decoded = dequantize(*quantize_mxfp4(values), torch.float32)
    assert torch.equal(decoded, values) and torch.equal(
        torch.signbit(decoded), torch.signbit(values)
    )


def test_matches_the_slow_oracle_on_random_blocks():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(300, 32, generator=gen) * torch.logspace(-30, 30, 300).unsqueeze(1)
    x[::7, ::5] = 0.0
    blocks, scales = quantize_mxfp4(x)
    for row in range(x.shape[0]):
        want_codes, want_scale = oracle(x[row].tolist())
        assert codes(blocks[row]) == want_codes and scales[row].item() == want_scale


def test_error_is_at_most_half_a_grid_step_or_the_saturation():
    """Bound: with y = |x| / scale, |decode - x| <= step(y)/2 · scale for y <= 6, where the grid
    step is 0.5 below 2, 1 in [2, 4), 2 in [4, 6]; y in (6, 8) saturates, error (y - 6) · scale."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4096, 64, generator=gen) * torch.exp(4 * torch.randn(4096, 1, generator=gen))
    blocks, scales = quantize_mxfp4(x)
    err = (dequantize(blocks, scales, torch.float32) - x).abs().reshape(4096, 2, 32)
    scale = torch.ldexp(torch.ones(4096, 2), scales.to(torch.int32) - 127).unsqueeze(-1)
    y = x.abs().reshape(4096, 2, 32) / scale
    step = torch.where(y < 2, 0.5, torch.where(y < 4, 1.0, 2.0))
    bound = torch.where(y <= 6, step / 2, y - 6) * scale
    assert (err <= bound * (1 + 1e-6)).all()
    assert (y < 8).all() and (y.amax(-1) >= 4).all()  # OCP scale: block max lands in [4, 8)


def test_chunked_strided_input_gives_the_same_bytes():
    w = torch.randn(3, 64, 96, dtype=torch.bfloat16)  # a dense x @ W layout [E, in, out]
    whole = quantize_mxfp4(w.transpose(1, 2).contiguous())
    chunked = quantize_mxfp4(w.transpose(1, 2), chunk_elements=100)
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked, strict=True))
    assert whole[0].shape == (3, 96, 2, 16) and whole[1].shape == (3, 96, 2)


def test_quantize_dense_experts_transposes_to_out_in():
    e, h, i = 2, 64, 96
    gate_up, down = torch.randn(e, h, 2 * i), torch.randn(e, i, h)
    out = quantize_dense_experts(gate_up, down)
    assert out["gate_up_proj_blocks"].shape == (e, 2 * i, h // 32, 16)
    assert out["gate_up_proj_scales"].shape == (e, 2 * i, h // 32)
    assert out["down_proj_blocks"].shape == (e, h, i // 32, 16)
    assert out["down_proj_scales"].shape == (e, h, i // 32)
    decoded = dequantize(out["gate_up_proj_blocks"], out["gate_up_proj_scales"], torch.float32)
    assert torch.equal(
        decoded.transpose(1, 2), dequantize(*quantize_mxfp4(gate_up.mT), torch.float32).mT
    )
    with pytest.raises(ValueError, match="expert shapes disagree"):
        quantize_dense_experts(down, gate_up)


def test_fp4_table_is_the_one_decoded():
    assert [abs(v) for v in FP4_VALUES[:8]] == list(GRID)
