"""Config: both published formats, presets, and validation naming the bad field."""

import json

import pytest

from gptoss_lite import GptossError
from gptoss_lite.config import ModelConfig, preset, read_config

HF_20B = {
    "architectures": ["GptOssForCausalLM"],
    "model_type": "gpt_oss",
    "hidden_size": 2880,
    "num_hidden_layers": 24,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "num_local_experts": 32,
    "num_experts_per_tok": 4,
    "experts_per_token": 4,
    "intermediate_size": 2880,
    "vocab_size": 201088,
    "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
    "rope_theta": 150000,
    "rope_scaling": {
        "rope_type": "yarn",
        "factor": 32.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "original_max_position_embeddings": 4096,
        "truncate": False,
    },
    "max_position_embeddings": 131072,
    "initial_context_length": 4096,
    "rms_norm_eps": 1e-05,
    "swiglu_limit": 7.0,
    "eos_token_id": 200002,
    "pad_token_id": 199999,
}
ORIGINAL_20B = {
    "num_hidden_layers": 24,
    "num_experts": 32,
    "experts_per_token": 4,
    "vocab_size": 201088,
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "swiglu_limit": 7.0,
    "head_dim": 64,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "sliding_window": 128,
    "initial_context_length": 4096,
    "rope_theta": 150000,
    "rope_scaling_factor": 32.0,
    "rope_ntk_alpha": 1,
    "rope_ntk_beta": 32,
}


def test_published_20b_configs_equal_the_preset():
    assert ModelConfig.from_hf(HF_20B) == preset("gpt-oss-20b").with_(eos_token_ids=(200002,))
    original = ModelConfig.from_original(ORIGINAL_20B)
    assert original.with_(eos_token_ids=()) == preset("gpt-oss-20b").with_(eos_token_ids=())


def test_120b_preset():
    c = preset("openai/gpt-oss-120b")
    assert (c.num_layers, c.num_experts, c.num_full_layers) == (36, 128, 18)
    assert c.is_sliding(0) and not c.is_sliding(1)


def test_round_trip_through_both_formats():
    c = preset("tiny")
    assert ModelConfig.from_hf(c.to_hf()).with_(eos_token_ids=()) == c.with_(eos_token_ids=())
    assert ModelConfig.from_original(c.to_original()).with_(eos_token_ids=()) == c.with_(
        eos_token_ids=(), max_context=c.rope_original_context * 32
    )


def test_missing_truncate_key_means_truncation_as_in_hf():
    data = json.loads(json.dumps(HF_20B))
    del data["rope_scaling"]["truncate"]
    assert ModelConfig.from_hf(data).rope_truncate is True


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_hidden_layers", 0, "num_layers must be a positive integer"),
        ("num_key_value_heads", 7, "not a multiple of num_kv_heads"),
        ("num_experts_per_tok", 33, "experts_per_token .* exceeds num_experts"),
        ("hidden_size", 2881, "multiples of 32"),
        ("layer_types", ["full_attention"], "layer_types has 1 entries for 24 layers"),
        ("rms_norm_eps", -1, "rms_norm_eps must be a positive number"),
        ("model_type", "llama", "model_type is 'llama'"),
    ],
)
def test_bad_fields_are_named(field, value, message):
    data = dict(HF_20B, **{field: value})
    with pytest.raises(GptossError, match=message):
        ModelConfig.from_hf(data)


def test_missing_field_and_unknown_preset(tmp_path):
    data = {k: v for k, v in HF_20B.items() if k != "vocab_size"}
    with pytest.raises(GptossError, match="missing field 'vocab_size'"):
        ModelConfig.from_hf(data)
    with pytest.raises(GptossError, match="unknown model preset 'gpt-oss-7b'"):
        preset("gpt-oss-7b")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(GptossError, match="cannot read"):
        read_config(tmp_path)
