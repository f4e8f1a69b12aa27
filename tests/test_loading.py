"""Loading: experts stay packed, only routed experts are dequantized, bad input fails clearly."""

import ctypes
import json
import mmap
import os
import shutil
import weakref
from pathlib import Path

import pytest
import torch
from conftest import GEOMETRIES

import gptoss_lite
from gptoss_lite import GptossError
from gptoss_lite.checkpoint.layouts import name_table
from gptoss_lite.checkpoint.reader import open_checkpoint
from gptoss_lite.checkpoint.synthetic import write_synthetic
from gptoss_lite.kernels.cpu.host_memory import HUGE_PAGE, HostArena
from gptoss_lite.model import moe
from gptoss_lite.model.mxfp4 import packed_nbytes


def load(folder, kernels="auto"):
    return gptoss_lite.load(folder, device="cpu", dtype=torch.float32, context=32, kernels=kernels)


def test_experts_stay_packed_uint8(checkpoint):
    config = GEOMETRIES["g1"]
    runner = load(checkpoint("g1"))
    for block in runner.model.mlp:
        assert block.gate_up_blocks.dtype == block.gate_up_scales.dtype == torch.uint8
        assert block.down_blocks.dtype == block.down_scales.dtype == torch.uint8
        resident = sum(
            t.numel() * t.element_size()
            for t in (
                block.gate_up_blocks,
                block.gate_up_scales,
                block.down_blocks,
                block.down_scales,
            )
        )
        e, h, i = config.num_experts, config.hidden_size, config.intermediate_size
        assert resident == e * (packed_nbytes(2 * i, h) + packed_nbytes(h, i))


def test_only_routed_experts_are_dequantized_one_at_a_time(checkpoint, monkeypatch):
    config = GEOMETRIES["g1"]
    runner = load(checkpoint("g1"), kernels="torch")  # the compiled kernel makes no copy at all
    live: set[int] = set()
    stats = {"calls": 0, "max_live": 0}
    real = moe.mxfp4.dequantize

    def tracking(blocks, scales, dtype=torch.bfloat16):
        out = real(blocks, scales, dtype)
        stats["calls"] += 1
        assert blocks.ndim == 3, "more than one expert's matrix was dequantized at once"
        live.add(id(out))
        weakref.finalize(out, live.discard, id(out))
        stats["max_live"] = max(stats["max_live"], len(live))
        return out

    monkeypatch.setattr(moe.mxfp4, "dequantize", tracking)
    routed = []
    real_route = moe.route

    def counting_route(*args):
        idx, weight = real_route(*args)
        routed.append(len(torch.unique(idx)))
        return idx, weight

    monkeypatch.setattr("gptoss_lite.model.transformer.route", counting_route)
    runner.logits([1, 2, 3, 4, 5])
    # Each routed expert: one gate_up and one down matrix, each decoded once per forward call.
    assert stats["calls"] == 2 * sum(routed)
    assert sum(routed) < config.num_layers * config.num_experts  # not every expert of a layer
    # At most one expert's matrix is alive at any time (the previous one is freed first).
    assert stats["max_live"] == 1


def test_missing_shard(checkpoint, tmp_path):
    folder = shutil.copytree(checkpoint("g2", shards=3), tmp_path / "ckpt")
    (folder / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(GptossError, match="shard model-00001-of-00002.safetensors is missing"):
        load(folder)


def test_truncated_shard(checkpoint, tmp_path):
    folder = shutil.copytree(checkpoint("g2", shards=3), tmp_path / "ckpt")
    shard = folder / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(GptossError, match="is truncated"):
        load(folder)


def test_shape_mismatch(checkpoint, tmp_path):
    folder = shutil.copytree(checkpoint("g1"), tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 64  # the weights were written for 96
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(GptossError, match="has shape .* the config expects"):
        load(folder)


def test_missing_tensor(checkpoint, tmp_path):
    folder = shutil.copytree(checkpoint("g1"), tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 4  # one more layer than the file holds
    config["layer_types"].append("full_attention")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(GptossError, match="missing tensor model.layers.3"):
        load(folder)


def test_unused_tensor(checkpoint, tmp_path):
    folder = shutil.copytree(checkpoint("g1"), tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 2
    config["layer_types"] = config["layer_types"][:2]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(GptossError, match="not used by the model"):
        load(folder)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(GptossError, match="holds no gpt-oss checkpoint"):
        open_checkpoint(tmp_path)
    with pytest.raises(GptossError, match="neither a local folder nor a Hub repo id"):
        load(tmp_path / "nope" / "deeper")


def test_parent_folder_with_original_subfolder(checkpoint, tmp_path):
    shutil.copytree(checkpoint("g1", layout="original"), tmp_path / "original")
    assert open_checkpoint(tmp_path).layout == "original"


def test_unknown_hub_repo_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        GptossError, match="HF_HUB_OFFLINE=1 is set .* pass a local checkpoint folder"
    ):
        load("someone/not-a-model")


def test_hub_unreachable(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from gptoss_lite.checkpoint.hub import resolve_model

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    # Nothing listens on the discard port of the loopback address: the connection is refused.
    with pytest.raises(GptossError, match="pass a local checkpoint folder"):
        resolve_model("openai/gpt-oss-20b", endpoint="http://127.0.0.1:9")


def test_hub_weights_are_fetched_only_after_the_plan_fits(checkpoint, monkeypatch):
    import huggingface_hub

    from gptoss_lite.checkpoint.hub import METADATA_FILES

    requests = []

    def fake_snapshot(repo_id, allow_patterns, endpoint=None):
        requests.append(list(allow_patterns))
        return str(checkpoint("g1"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    with pytest.raises(GptossError, match="outside 1..1024"):
        gptoss_lite.load("someone/model", device="cpu", context=4096)
    assert requests == [METADATA_FILES]  # refused before any weight file was asked for
    requests.clear()
    gptoss_lite.load("someone/model", device="cpu", dtype=torch.float32, context=32)
    assert requests[0] == METADATA_FILES
    assert any(p.endswith(".safetensors") for p in requests[1])
    assert not any(p.startswith(("original", "metal")) for p in requests[1])


def test_every_checkpoint_kind_is_a_checkpoint(checkpoint):
    from gptoss_lite.checkpoint.dense import QuantizingCheckpoint
    from gptoss_lite.checkpoint.protocol import Checkpoint
    from gptoss_lite.checkpoint.synthetic_memory import SyntheticCheckpoint

    files = open_checkpoint(checkpoint("g1"))
    kinds = [files, QuantizingCheckpoint(files), SyntheticCheckpoint(GEOMETRIES["g1"])]
    assert all(isinstance(kind, Checkpoint) for kind in kinds)
    assert not isinstance(GEOMETRIES["g1"], Checkpoint)


def _vma(address: int) -> tuple[str, dict[str, str]]:
    """The /proc/self/smaps header line and fields of the mapping that holds `address`."""
    header, fields, inside = "", {}, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            if inside:
                break
            start, end = (int(a, 16) for a in head.split("-"))
            inside, header = start <= address < end, line
        elif inside:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return header, fields


def test_the_weights_read_at_every_token_are_read_into_one_arena_for_2mib_pages(tmp_path):
    config = GEOMETRIES["g1"].with_(vocab_size=32768)  # a head of several 2 MiB pages
    folder = write_synthetic(tmp_path / "big", config)
    model = gptoss_lite.load(folder, device="cpu", context=32).model
    params = dict(model.named_parameters())
    ckpt = open_checkpoint(folder)
    table = name_table(config.num_layers, ckpt.layout)
    shard = str(folder / "model.safetensors")
    homes = set()
    for name, p in params.items():
        header, fields = _vma(p.data_ptr())
        if name == "embedding":  # rows gathered, not streamed: it stays mapped from the file,
            # in small pages (a row read through a 2 MiB page would map all of that page)
            assert header.endswith(shard) and "hg" not in fields["VmFlags"].split()
            continue
        # anonymous memory, 2 MiB-aligned and advised to use 2 MiB pages: a copy of the file's
        # bytes, none of them mapped from it
        assert not header.endswith(shard) and "hg" in fields["VmFlags"].split(), name
        assert int(header.split("-")[0], 16) % HUGE_PAGE == 0
        homes.add(header)
        source = ckpt.tensors[table[name][0]]
        if len(table[name]) == 1 and source.dtype == p.dtype:
            assert torch.equal(p, ckpt.read(table[name][0])), name
    assert len(homes) == 1  # one arena


def _cached_pages(path: Path, offset: int, nbytes: int) -> int:
    """How many of the pages wholly inside [offset, offset + nbytes) of `path` the page cache
    holds (mincore over a fresh mapping, which faults nothing in)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page = mmap.PAGESIZE
    first, last = -(-offset // page), (offset + nbytes) // page
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    anchor = ctypes.c_char.from_buffer(mapped)  # the mapping's address; touches no page
    flags = (ctypes.c_ubyte * (last - first))()
    status = libc.mincore(ctypes.addressof(anchor) + first * page, (last - first) * page, flags)
    del anchor
    mapped.close()
    assert status == 0
    return sum(b & 1 for b in flags)


def test_weights_read_straight_from_the_file_are_those_mapped(checkpoint):
    ckpt = open_checkpoint(checkpoint("g2", shards=3))
    for name, info in ckpt.tensors.items():
        out = torch.empty(info.shape, dtype=info.dtype)
        ckpt.read_into(name, out)
        assert torch.equal(out, ckpt.read(name)), name


def test_where_2mib_pages_lack_memory_the_copied_bytes_leave_the_page_cache(tmp_path, monkeypatch):
    config = GEOMETRIES["g1"].with_(vocab_size=32768)
    folder = write_synthetic(tmp_path / "big", config)
    os.sync()  # written pages are dirty until then, and a dirty page is not dropped
    ckpt = open_checkpoint(folder)
    head_name = name_table(config.num_layers, ckpt.layout)["unembedding"][0]
    head = ckpt.tensors[head_name]
    head.file.read_bytes()  # in the page cache now (read, not mapped: a mapped page stays)
    head_bytes = head.shape[0] * head.shape[1] * head.dtype.itemsize
    assert _cached_pages(head.file, head.offset, head_bytes) > 0
    collapses = []

    def collapse(arena):  # the kernel found too little free memory the first time
        collapses.append(arena)
        return len(collapses) > 1

    monkeypatch.setattr(HostArena, "collapse", collapse)
    model = gptoss_lite.load(folder, device="cpu", context=32).model
    assert len(collapses) == 2  # again, once the page cache let go of the copied bytes
    # 1,023 pages; those a neighbour's read maps stay (a fault maps up to 64 KiB of cached
    # pages around it, and a mapped page is not dropped): 16 at either end at most
    assert _cached_pages(head.file, head.offset, head_bytes) <= 2 * 16
    assert torch.equal(model.unembedding, ckpt.read(head_name))  # the copy holds the bytes
