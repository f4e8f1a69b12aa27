"""YaRN frequencies and concentration, against the reference implementation's values and HF's."""

import math

import torch

from gptoss_lite.config import preset
from gptoss_lite.model.rope import Rotary, apply_rotary, yarn_inv_freq

# gpt-oss-20b's inverse frequencies, read from the reference implementation (gpt_oss/torch
# RotaryEmbedding; HF's YaRN with truncate=false gives the same).
REFERENCE_INV_FREQ = [
    1.0,
    6.890443e-01,
    4.747821e-01,
    3.271459e-01,
    2.254180e-01,
    1.553230e-01,
    1.070244e-01,
    7.374457e-02,
    5.081327e-02,
    3.170570e-02,
    1.933500e-02,
    1.159205e-02,
    6.794959e-03,
    3.860359e-03,
    2.093792e-03,
    1.052602e-03,
    4.564839e-04,
    1.293187e-04,
    3.830881e-05,
    2.639647e-05,
    1.818834e-05,
    1.253257e-05,
    8.635496e-06,
    5.950239e-06,
    4.099978e-06,
    2.825067e-06,
    1.946596e-06,
    1.341291e-06,
    9.242090e-07,
    6.368209e-07,
    4.387978e-07,
    3.023511e-07,
]


def test_inv_freq_matches_spec_values():
    inv_freq, concentration = yarn_inv_freq(preset("gpt-oss-20b"))
    # The spec lists 7 significant digits.
    torch.testing.assert_close(inv_freq, torch.tensor(REFERENCE_INV_FREQ), rtol=1e-6, atol=0)
    assert concentration == 0.1 * math.log(32) + 1


def test_inv_freq_matches_transformers_yarn():
    from transformers import GptOssConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = preset("gpt-oss-20b")
    fields = {k: v for k, v in config.to_hf().items() if k != "quantization_config"}
    hf_config = GptOssConfig(**fields)
    hf_inv_freq, hf_scaling = ROPE_INIT_FUNCTIONS["yarn"](hf_config, "cpu")
    inv_freq, concentration = yarn_inv_freq(config)
    # Both compute in float32 from the same formula; allow one float32 ulp of difference.
    torch.testing.assert_close(inv_freq, hf_inv_freq.float(), rtol=2e-7, atol=0)
    assert math.isclose(concentration, hf_scaling, rel_tol=1e-12)


def test_truncation_changes_the_boundaries():
    exact, _ = yarn_inv_freq(preset("gpt-oss-20b"))
    rounded, _ = yarn_inv_freq(preset("gpt-oss-20b").with_(rope_truncate=True))
    assert not torch.equal(exact, rounded)  # the published config asks for no truncation


def test_rotation_is_half_split_and_scaled_by_concentration():
    config = preset("gpt-oss-20b")
    rotary = Rotary(config)
    x = torch.zeros(1, 1, 64)
    x[0, 0, 0] = 1.0  # dimension 0 pairs with dimension 32
    pos = torch.tensor([3])
    cos, sin = rotary.cos_sin(pos, torch.float32)
    out = apply_rotary(x, cos, sin)
    angle = 3 * rotary.inv_freq[0].item()
    c = rotary.concentration
    assert math.isclose(out[0, 0, 0].item(), math.cos(angle) * c, rel_tol=1e-6)
    assert math.isclose(out[0, 0, 32].item(), math.sin(angle) * c, rel_tol=1e-6)
    assert out[0, 0, 1:32].abs().sum() == 0 and out[0, 0, 33:].abs().sum() == 0
