"""`quantize`: a bf16 checkpoint saved by HF transformers → MXFP4 that HF transformers loads.

The source is a random tiny `GptOssForCausalLM` (H=64 ≠ I=96, so a missed transpose shows),
saved by `save_pretrained` in several shards. The converted checkpoint must load in transformers
with `Mxfp4Config(dequantize=True)` to expert weights equal to `dequantize(quantize_mxfp4(W))`,
and give the logits of the original model with exactly those weights substituted.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import quantize.convert as convert
from gptoss_lite.checkpoint.dense import quantize_dense
from gptoss_lite.cli import main
from gptoss_lite.config import QUANTIZATION_CONFIG
from gptoss_lite.errors import GptossError
from gptoss_lite.model.mxfp4 import dequantize, quantize_mxfp4
from quantize.convert import plan_conversion, write_quantized
from quantize.metrics import error_metrics

transformers = pytest.importorskip("transformers")

LAYERS, EXPERTS, HIDDEN, INTER = 2, 4, 64, 96
AUX = {"tokenizer_config.json": '{"model_max_length": 64}\n', "chat_template.jinja": "{{ x }}\n"}


def tiny_config():
    return transformers.GptOssConfig(
        num_hidden_layers=LAYERS, num_local_experts=EXPERTS, num_experts_per_tok=2,
        hidden_size=HIDDEN, intermediate_size=INTER, head_dim=16, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, sliding_window=8,
        max_position_embeddings=131072,
    )  # fmt: skip


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A random bf16 tiny gpt-oss saved by transformers in 4 shards, with the model itself."""
    torch.manual_seed(0)
    model = transformers.GptOssForCausalLM(tiny_config()).to(torch.bfloat16).eval()
    folder = tmp_path_factory.mktemp("dense")
    model.save_pretrained(folder, max_shard_size="100KB")
    for name, text in AUX.items():
        (folder / name).write_text(text)
    assert len(list(folder.glob("*.safetensors"))) > 1
    return folder, model


@pytest.fixture(scope="module")
def converted(dense, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("out") / "mxfp4"
    write_quantized(plan_conversion(str(dense[0]), dst, max_shard_bytes=60_000))
    return dst


def tree_hash(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def load_quantized(folder: Path):
    config = transformers.Mxfp4Config(dequantize=True)
    model = transformers.GptOssForCausalLM.from_pretrained(
        folder, quantization_config=config, dtype=torch.float32
    )
    return model.eval()


def substituted(model: torch.nn.Module) -> tuple[torch.nn.Module, float]:
    """A float32 copy of `model` with every expert weight replaced by its MXFP4 round trip, and
    the largest relative Frobenius error of those weights."""
    twin = transformers.GptOssForCausalLM(tiny_config()).float().eval()
    twin.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    worst = 0.0
    for layer in twin.model.layers:
        for proj in ("gate_up_proj", "down_proj"):
            weight = getattr(layer.mlp.experts, proj)  # (E, in, out): x @ W
            new = dequantize(*quantize_mxfp4(weight.data.mT), torch.float32).mT
            worst = max(worst, error_metrics(weight.data, new).rel_frobenius)
            weight.data.copy_(new)
    return twin, worst


# ------------------------------------------------------------------ the output checkpoint


def test_published_layout_names_and_files(dense, converted):
    index = json.loads((converted / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    n = len(files)
    assert n > 1 and files == [f"model-{k:05d}-of-{n - 1:05d}.safetensors" for k in range(n)]
    assert sorted(p.name for p in converted.glob("*.safetensors")) == files
    names = set(index["weight_map"])
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}.mlp.experts."
        assert {prefix + p for p in ("gate_up_proj", "down_proj")}.isdisjoint(names)
        for proj in ("gate_up_proj", "down_proj"):
            assert {prefix + proj + s for s in ("_blocks", "_scales", "_bias")} <= names
    config = json.loads((converted / "config.json").read_text())
    source_config = json.loads((dense[0] / "config.json").read_text())
    assert config == {**source_config, "quantization_config": QUANTIZATION_CONFIG}
    for name, text in AUX.items():
        assert (converted / name).read_text() == text
    assert (converted / "generation_config.json").is_file()
    assert not list(converted.parent.glob(".*partial*"))


def test_tensors_have_published_shapes_and_bytes(dense, converted):
    from safetensors.torch import load_file

    index = json.loads((converted / "model.safetensors.index.json").read_text())
    tensors = {}
    for file in set(index["weight_map"].values()):
        tensors.update(load_file(converted / file))
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
    state = dense[1].state_dict()
    e, h, i = EXPERTS, HIDDEN, INTER
    prefix = "model.layers.1.mlp.experts."
    assert tensors[prefix + "gate_up_proj_blocks"].shape == (e, 2 * i, h // 32, 16)
    assert tensors[prefix + "gate_up_proj_scales"].shape == (e, 2 * i, h // 32)
    assert tensors[prefix + "down_proj_blocks"].shape == (e, h, i // 32, 16)
    assert tensors[prefix + "down_proj_scales"].shape == (e, h, i // 32)
    for proj in ("gate_up_proj", "down_proj"):
        blocks, scales = quantize_mxfp4(state[prefix + proj].mT)  # encoded along `in`
        assert torch.equal(tensors[prefix + proj + "_blocks"], blocks)
        assert torch.equal(tensors[prefix + proj + "_scales"], scales)
    for name, value in state.items():
        if not re.search(r"experts\.(gate_up|down)_proj$", name):
            assert tensors[name].dtype == torch.bfloat16 and torch.equal(tensors[name], value)


def test_transformers_loads_it_with_the_round_tripped_weights(dense, converted):
    quantized = load_quantized(converted)
    reference, eps = substituted(dense[1])
    for got, want in zip(quantized.model.layers, reference.model.layers, strict=True):
        assert torch.equal(got.mlp.experts.gate_up_proj, want.mlp.experts.gate_up_proj)
        assert torch.equal(got.mlp.experts.down_proj, want.mlp.experts.down_proj)
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = quantized(ids).logits
        torch.testing.assert_close(got, reference(ids).logits, rtol=0, atol=1e-6)
        original = copy.deepcopy(dense[1]).float()(ids).logits
    # Tolerance from the weight error eps (about 0.12): each layer's MoE output moves by at most
    # ~2·eps relative (two quantized matrices in series), and L layers add: 2·L·eps. On this
    # model the measured ratio is ~1.1·eps.
    rel = error_metrics(original, got).rel_frobenius
    assert 0.0 < rel <= 2 * LAYERS * eps


# ------------------------------------------------------------------ safety and bad input


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
@pytest.mark.parametrize("dst_exists", [False, True])
def test_interrupted_run_leaves_no_dst_and_src_untouched(
    dense, tmp_path, monkeypatch, exc, dst_exists
):
    before = tree_hash(dense[0])
    calls = []

    def fail_on_second(name, weight):
        calls.append(name)
        if len(calls) == 2:
            raise exc
        return quantize_dense(name, weight)

    monkeypatch.setattr(convert, "quantize_dense", fail_on_second)
    dst = tmp_path / "dst"
    if dst_exists:
        dst.mkdir()
    with pytest.raises(type(exc)):
        write_quantized(plan_conversion(str(dense[0]), dst, max_shard_bytes=60_000))
    assert len(calls) == 2
    assert (dst.is_dir() and not any(dst.iterdir())) if dst_exists else not dst.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["dst"] if dst_exists else [])
    assert tree_hash(dense[0]) == before


def run_cli(*args: str):
    return CliRunner().invoke(main, ["quantize", *args])


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_cli_converts(dense, tmp_path):
    result = run_cli(str(dense[0]), str(tmp_path / "out"), "--shard-size", "0.0001")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout and (tmp_path / "out" / "config.json").is_file()


def test_missing_src(tmp_path):
    line = one_error_line(run_cli(str(tmp_path / "nope"), str(tmp_path / "out")))
    assert "no checkpoint folder" in line


def test_unreachable_hub_says_to_pass_a_local_folder(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Got: ConnectError: Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    line = one_error_line(run_cli("someone/gpt-oss-20b-finetune", str(tmp_path / "out")))
    assert "Hub is unreachable" in line and "pass a local checkpoint folder" in line


def test_already_mxfp4(converted, tmp_path):
    line = one_error_line(run_cli(str(converted), str(tmp_path / "out")))
    assert "already an MXFP4 checkpoint" in line


def test_truncated_shard(dense, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in dense[0].iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    shard = sorted(src.glob("*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-1000])
    line = one_error_line(run_cli(str(src), str(tmp_path / "out")))
    assert "truncated or corrupt" in line and shard.name in line
    assert not (tmp_path / "out").exists()


def test_non_empty_dst_is_refused(dense, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    line = one_error_line(run_cli(str(dense[0]), str(tmp_path / "out")))
    assert "not empty" in line
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_overwrite_replaces_dst_whole(dense, tmp_path):
    assert run_cli(str(dense[0]), str(tmp_path / "fresh")).exit_code == 0
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("replaced")
    result = run_cli(str(dense[0]), str(tmp_path / "out"), "--overwrite")
    assert result.exit_code == 0, result.output
    assert tree_hash(tmp_path / "out") == tree_hash(tmp_path / "fresh")  # nothing old is left


def test_dst_inside_src_is_refused(dense):
    with pytest.raises(GptossError, match="inside SRC"):
        convert.plan_conversion(str(dense[0]), dense[0] / "mxfp4")
    assert not (dense[0] / "mxfp4").exists()


def test_hub_id_fetches_config_first_and_only_needed_files(dense, converted, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, allow_patterns, endpoint=None):
        calls.append(allow_patterns)
        return str({"me/dense": dense[0], "me/mxfp4": converted}[repo_id])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    line = one_error_line(run_cli("me/mxfp4", str(tmp_path / "a")))
    assert "already an MXFP4 checkpoint" in line and calls == [["config.json"]]
    calls.clear()
    assert run_cli("me/dense", str(tmp_path / "b")).exit_code == 0
    assert calls[0] == ["config.json"] and "model*.safetensors" in calls[1]
    assert not any("original" in pattern for pattern in calls[1])


SLOW_QUANTIZE = """
import sys, time
import quantize.convert as convert
quantize_dense = convert.quantize_dense
convert.quantize_dense = lambda *args: (time.sleep(0.3), quantize_dense(*args))[1]
from gptoss_lite.cli import main
main(["quantize", sys.argv[1], sys.argv[2], "--shard-size", "0.0001"])
"""


def test_sigterm_mid_write_leaves_nothing_and_exits_143(dense, tmp_path):
    from test_staging import start_slow, wait_for_shard

    from gptoss_lite.outputs import partial_name

    before, dst = tree_hash(dense[0]), tmp_path / "dst"
    proc = start_slow(SLOW_QUANTIZE, dense[0], dst)
    wait_for_shard(tmp_path / partial_name(dst, proc.pid), proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr
    assert list(tmp_path.iterdir()) == []
    assert tree_hash(dense[0]) == before


def test_a_full_disk_is_one_line_and_leaves_nothing(dense, tmp_path, monkeypatch):
    from gptoss_lite.checkpoint.safetensors import StreamWriter

    real, calls = StreamWriter.append, []

    def fill_up(self, data):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(StreamWriter, "append", fill_up)
    result = run_cli(str(dense[0]), str(tmp_path / "out"))
    assert result.exit_code == 1  # after the progress bar's label, one line
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: writing {tmp_path / 'out'} failed: No space left on device; nothing was written"
    )
    assert list(tmp_path.iterdir()) == []


def test_an_index_naming_a_file_outside_src_is_refused(dense, tmp_path):
    src = shutil.copytree(dense[0], tmp_path / "src")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    shard = src / index["weight_map"][first]
    shutil.copy(shard, tmp_path / "elsewhere.safetensors")
    index["weight_map"][first] = "../elsewhere.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    line = one_error_line(run_cli(str(src), str(tmp_path / "out")))
    assert "names a file outside the folder" in line
