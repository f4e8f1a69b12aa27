"""Synthetic checkpoints: the published layouts, loadable by HF transformers, deterministic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from gptoss_lite.checkpoint.synthetic import tensor_nbytes, write_synthetic
from gptoss_lite.checkpoint.synthetic_memory import SyntheticCheckpoint
from gptoss_lite.cli import main
from gptoss_lite.config import ModelConfig, preset
from gptoss_lite.errors import GptossError
from gptoss_lite.model.mxfp4 import dequantize

TINY = preset("tiny")


def _read(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            assert f.metadata() == {"format": "pt"}
            out.update({name: f.get_tensor(name) for name in f.keys()})  # noqa: SIM118
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    kinds = {"hf1": ("hf", 1), "hf3": ("hf", 3), "orig1": ("original", 1), "orig3": ("original", 3)}
    return {
        key: write_synthetic(root / key, TINY, seed=7, layout=layout, shards=shards)
        for key, (layout, shards) in kinds.items()
    }


def test_hf_files_are_named_as_published(ckpts):
    assert sorted(p.name for p in ckpts["hf1"].iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors",
    ]  # fmt: skip
    assert sorted(p.name for p in ckpts["hf3"].iterdir()) == [
        "config.json", "generation_config.json",
        "model-00000-of-00002.safetensors", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json",
    ]  # fmt: skip
    gen = json.loads((ckpts["hf1"] / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [200002, 199999, 200012]
    assert json.loads((ckpts["hf1"] / "config.json").read_text()) == TINY.to_hf()


def test_hf_names_shapes_dtypes_follow_the_spec(ckpts):
    tensors = _read(ckpts["hf1"])
    c, e, h, i = TINY, TINY.num_experts, TINY.hidden_size, TINY.intermediate_size
    q, kv, bf16, u8 = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, "bf16", "u8"
    layer = {
        "input_layernorm.weight": ([h], bf16),
        "self_attn.q_proj.weight": ([q, h], bf16), "self_attn.q_proj.bias": ([q], bf16),
        "self_attn.k_proj.weight": ([kv, h], bf16), "self_attn.k_proj.bias": ([kv], bf16),
        "self_attn.v_proj.weight": ([kv, h], bf16), "self_attn.v_proj.bias": ([kv], bf16),
        "self_attn.o_proj.weight": ([h, q], bf16), "self_attn.o_proj.bias": ([h], bf16),
        "self_attn.sinks": ([c.num_heads], bf16),
        "post_attention_layernorm.weight": ([h], bf16),
        "mlp.router.weight": ([e, h], bf16), "mlp.router.bias": ([e], bf16),
        "mlp.experts.gate_up_proj_blocks": ([e, 2 * i, h // 32, 16], u8),
        "mlp.experts.gate_up_proj_scales": ([e, 2 * i, h // 32], u8),
        "mlp.experts.gate_up_proj_bias": ([e, 2 * i], bf16),
        "mlp.experts.down_proj_blocks": ([e, h, i // 32, 16], u8),
        "mlp.experts.down_proj_scales": ([e, h, i // 32], u8),
        "mlp.experts.down_proj_bias": ([e, h], bf16),
    }  # fmt: skip
    expected = {f"model.layers.{n}.{k}": v for n in range(c.num_layers) for k, v in layer.items()}
    expected |= {
        "model.embed_tokens.weight": ([c.vocab_size, h], bf16),
        "model.norm.weight": ([h], bf16),
        "lm_head.weight": ([c.vocab_size, h], bf16),
    }
    dtypes = {"bf16": torch.bfloat16, "u8": torch.uint8}
    got = {name: (list(t.shape), t.dtype) for name, t in tensors.items()}
    assert got == {name: (shape, dtypes[d]) for name, (shape, d) in expected.items()}


def test_index_total_size_and_layers_straddle_shards(ckpts):
    folder = ckpts["hf3"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    tensors = _read(folder)
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    assert index["metadata"]["total_size"] == nbytes == tensor_nbytes(TINY)
    assert set(index["weight_map"]) == set(tensors)
    files_of_layer: dict[int, set[str]] = {}
    for name, file in index["weight_map"].items():
        if name.startswith("model.layers."):
            files_of_layer.setdefault(int(name.split(".")[2]), set()).add(file)
    assert any(len(files) > 1 for files in files_of_layer.values())
    last = "model-00002-of-00002.safetensors"
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert index["weight_map"][name] == last


def test_published_geometries_have_the_published_byte_counts():
    assert tensor_nbytes(preset("gpt-oss-20b")) == 13_761_264_768
    assert tensor_nbytes(preset("gpt-oss-120b")) == 65_248_815_744


@pytest.mark.parametrize("key", ["hf1", "hf3"])
def test_hf_transformers_loads_it(ckpts, key):
    transformers = pytest.importorskip("transformers")
    model, info = transformers.GptOssForCausalLM.from_pretrained(
        ckpts[key],
        quantization_config=transformers.Mxfp4Config(dequantize=True),
        dtype=torch.float32,
        output_loading_info=True,
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"] and not info["error_msgs"]
    tensors = _read(ckpts[key])
    experts = model.model.layers[1].mlp.experts
    prefix = "model.layers.1.mlp.experts.down_proj"
    packed = dequantize(tensors[f"{prefix}_blocks"], tensors[f"{prefix}_scales"], torch.float32)
    assert torch.equal(experts.down_proj.data, packed.transpose(1, 2))
    ids = torch.randint(0, 200_000, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ids, output_router_logits=True)
    assert out.logits.isfinite().all()
    assert out.logits.std() > 0.3  # not degenerate
    for router_logits in out.router_logits:
        assert router_logits.argmax(-1).unique().numel() > TINY.num_experts // 2


def test_expert_weights_have_the_documented_scale():
    weights = SyntheticCheckpoint(TINY.with_(num_layers=1), seed=3)
    prefix = "model.layers.0.mlp.experts.gate_up_proj"
    blocks, scales = weights.read(f"{prefix}_blocks"), weights.read(f"{prefix}_scales")
    dense = dequantize(blocks, scales, torch.float32)
    assert 0.7 < dense.std() * TINY.hidden_size**0.5 < 1.3


def test_original_layout_is_the_same_model(ckpts):
    folder = ckpts["orig1"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "dtypes.json", "model.safetensors",
    ]  # fmt: skip
    config = json.loads((folder / "config.json").read_text())
    assert config == TINY.to_original()
    assert ModelConfig.from_original(config) == TINY
    hf, orig = _read(ckpts["hf1"]), _read(folder)
    assert len(orig) == 15 * TINY.num_layers + 3
    dtypes = json.loads((folder / "dtypes.json").read_text())
    assert set(dtypes) == set(orig)
    assert dtypes["block.0.mlp.mlp1_weight.blocks"] == "FP4"
    assert dtypes["block.0.mlp.mlp2_weight.scales"] == "UE8"
    assert dtypes["block.0.attn.qkv.weight"] == "BF16"
    for n in range(TINY.num_layers):
        for kind in ("weight", "bias"):
            parts = [hf[f"model.layers.{n}.self_attn.{x}_proj.{kind}"] for x in "qkv"]
            assert torch.equal(orig[f"block.{n}.attn.qkv.{kind}"], torch.cat(parts))
        pairs = {
            "attn.out.weight": "self_attn.o_proj.weight", "attn.sinks": "self_attn.sinks",
            "mlp.norm.scale": "post_attention_layernorm.weight", "mlp.gate.bias": "mlp.router.bias",
            "mlp.mlp1_weight.blocks": "mlp.experts.gate_up_proj_blocks",
            "mlp.mlp2_weight.scales": "mlp.experts.down_proj_scales",
            "mlp.mlp2_bias": "mlp.experts.down_proj_bias",
        }  # fmt: skip
        for o, h in pairs.items():
            assert torch.equal(orig[f"block.{n}.{o}"], hf[f"model.layers.{n}.{h}"])
    assert torch.equal(orig["unembedding.weight"], hf["lm_head.weight"])


def test_original_shards_use_the_double_dash_names(ckpts):
    folder = ckpts["orig3"]
    names = sorted(p.name for p in folder.glob("*.safetensors"))
    assert names == [f"model--0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["embedding.weight"] == names[-1]
    assert _read(folder).keys() == _read(ckpts["orig1"]).keys()


def test_same_seed_same_bytes_and_state_dict(ckpts, tmp_path):
    again = write_synthetic(tmp_path / "again", TINY, seed=7, shards=3)
    assert _digest(again) == _digest(ckpts["hf3"])
    other = write_synthetic(tmp_path / "other", TINY, seed=8)
    assert _digest(other)["model.safetensors"] != _digest(ckpts["hf1"])["model.safetensors"]
    tensors, memory = _read(ckpts["hf1"]), SyntheticCheckpoint(TINY, seed=7)
    assert memory.tensors.keys() == tensors.keys()
    for name in tensors:
        assert torch.equal(memory.read(name), tensors[name]), name  # what loads without files


def test_refuses_to_overwrite_and_leaves_nothing_behind(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    small = TINY.with_(num_layers=1)
    with pytest.raises(GptossError, match="not empty"):
        write_synthetic(out, small)
    assert (out / "keep.txt").exists()
    write_synthetic(out, small, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_an_interrupted_write_leaves_nothing(tmp_path):
    def interrupt(nbytes: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_synthetic(tmp_path / "ckpt", TINY, progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(GptossError, match="layout"):
        write_synthetic(tmp_path / "a", TINY, layout="gguf")
    with pytest.raises(GptossError, match="shards"):
        write_synthetic(tmp_path / "b", TINY, shards=200)


def test_cli_writes_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "cli"
    args = ["synth", str(out), "--geometry", "tiny", "--layers", "2", "--shards", "3"]
    result = CliRunner().invoke(main, [*args, "--seed", "1", "--layout", "original"])
    assert result.exit_code == 0, result.output
    assert "model--00003-of-00003.safetensors" in result.stdout
    assert f"{tensor_nbytes(TINY.with_(num_layers=2)):,} B of tensors" in result.stdout
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "not empty" in result.output
    result = CliRunner().invoke(main, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "model-00002-of-00002.safetensors" in result.stdout
