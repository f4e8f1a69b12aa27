"""MXFP4 decoding on hand-built bytes: nibble order, sign, scale extremes, group axis."""

import pytest
import torch

from gptoss_lite.model.mxfp4 import FP4_VALUES, dequantize, packed_nbytes


def one_block(byte_values, scale):
    blocks = torch.zeros(1, 16, dtype=torch.uint8)
    blocks[0, : len(byte_values)] = torch.tensor(byte_values, dtype=torch.uint8)
    return blocks, torch.tensor([scale], dtype=torch.uint8)


def test_low_nibble_is_the_even_element():
    # 0x71: low nibble 1 (+0.5) is element 0, high nibble 7 (+6.0) is element 1.
    out = dequantize(*one_block([0x71], 127), torch.float32)
    assert out[:2].tolist() == [0.5, 6.0]
    assert out[2:].abs().sum() == 0


def test_every_code_decodes_to_its_table_value():
    codes = torch.arange(16, dtype=torch.uint8)
    blocks = (codes[0::2] | (codes[1::2] << 4)).view(1, 8)
    blocks = torch.cat([blocks, torch.zeros(1, 8, dtype=torch.uint8)], dim=1)
    out = dequantize(blocks, torch.tensor([127], dtype=torch.uint8), torch.float32)
    assert out[:16].tolist() == list(FP4_VALUES)
    assert torch.signbit(out[8]) and not torch.signbit(out[0])  # code 8 is negative zero


def test_sign_bit_and_scale_exponent():
    # Code 0xF = -6.0; scale 130 = 2**3.
    out = dequantize(*one_block([0xF0 | 0x3], 130), torch.float32)
    assert out[:2].tolist() == [1.5 * 8, -6.0 * 8]


@pytest.mark.parametrize(
    ("scale", "factor"),
    [(0, 2.0**-127), (1, 2.0**-126), (127, 1.0), (254, 2.0**127)],
)
def test_scale_extremes(scale, factor):
    # 0x22: both elements are +1.0, so the output is exactly 2**(scale-127).
    out = dequantize(*one_block([0x22], scale), torch.float32)
    assert out[0].item() == factor and out[1].item() == factor


def test_scale_extremes_survive_bf16():
    out = dequantize(*one_block([0x22], 254), torch.bfloat16)
    assert out[0].item() == 2.0**127


def test_groups_run_along_the_last_axis():
    # Two rows, two groups each: group g of row r has scale 127 + 2r + g, all elements +1.
    blocks = torch.full((2, 2, 16), 0x22, dtype=torch.uint8)
    scales = torch.tensor([[127, 128], [129, 130]], dtype=torch.uint8)
    out = dequantize(blocks, scales, torch.float32)
    assert out.shape == (2, 64)
    assert out[0, :32].unique().tolist() == [1.0] and out[0, 32:].unique().tolist() == [2.0]
    assert out[1, :32].unique().tolist() == [4.0] and out[1, 32:].unique().tolist() == [8.0]


def test_leading_axes_are_kept():
    blocks = torch.randint(0, 256, (3, 5, 4, 16), dtype=torch.uint8)
    scales = torch.randint(120, 135, (3, 5, 4), dtype=torch.uint8)
    whole = dequantize(blocks, scales, torch.float32)
    assert whole.shape == (3, 5, 128)
    assert torch.equal(whole[1], dequantize(blocks[1], scales[1], torch.float32))


def test_bad_inputs_are_refused():
    with pytest.raises(TypeError):
        dequantize(torch.zeros(1, 16), torch.zeros(1, dtype=torch.uint8))
    with pytest.raises(ValueError):
        dequantize(torch.zeros(2, 16, dtype=torch.uint8), torch.zeros(3, dtype=torch.uint8))


def test_packed_nbytes_matches_published_20b_expert_sizes():
    # The published 20b shards: per layer, gate_up blocks 265,420,800 B + scales 16,588,800 B.
    assert 32 * packed_nbytes(5760, 2880) == 265_420_800 + 16_588_800
    assert 32 * packed_nbytes(2880, 2880) == 132_710_400 + 8_294_400
