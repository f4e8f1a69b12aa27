"""A bf16 fine-tune (dense experts, as transformers saves it) loads with MXFP4 experts directly.

Loading it must give exactly the model that `gptoss-lite quantize` would have written: the same
bytes, so the same logits to the bit, and both agree with HF transformers reading the converted
checkpoint.
"""

import pytest
import torch
from hf_reference import hf_logits

import gptoss_lite
from quantize.convert import plan_conversion, write_quantized

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory):
    config = transformers.GptOssConfig(
        num_hidden_layers=3, num_local_experts=6, num_experts_per_tok=2, hidden_size=64,
        intermediate_size=96, head_dim=16, num_attention_heads=8, num_key_value_heads=2,
        vocab_size=256, sliding_window=6, max_position_embeddings=4096,
    )  # fmt: skip
    torch.manual_seed(1)
    model = transformers.GptOssForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():  # transformers initializes experts at std 0.02: widen so MoE matters
        for layer in model.model.layers:
            layer.mlp.experts.gate_up_proj.normal_(0, 0.15)
            layer.mlp.experts.down_proj.normal_(0, 0.15)
    folder = tmp_path_factory.mktemp("dense") / "bf16"
    model.save_pretrained(folder, max_shard_size="200KB")
    return folder


def load(folder):
    return gptoss_lite.load(folder, device="cpu", dtype=torch.float32, context=64)


def test_load_time_quantization_equals_the_converted_checkpoint(dense_checkpoint, tmp_path):
    ids = list(range(5, 35))
    direct = load(dense_checkpoint)
    for block in direct.model.mlp:
        assert block.gate_up_blocks.dtype == torch.uint8 and block.down_scales.dtype == torch.uint8
    converted = tmp_path / "mxfp4"
    write_quantized(plan_conversion(str(dense_checkpoint), converted))
    assert torch.equal(direct.logits(ids), load(converted).logits(ids))
    # Float32 on both sides: see test_parity.py for the tolerance.
    assert (direct.logits(ids) - hf_logits(converted, ids)).abs().max() <= 1e-3
