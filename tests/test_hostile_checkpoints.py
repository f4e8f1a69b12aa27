"""Corrupt, odd or hostile checkpoints: one `GptossError` line naming the file, before any large
allocation; shard paths never lead outside the checkpoint folder."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tracemalloc
from pathlib import Path

import pytest
import torch

import gptoss_lite
from gptoss_lite import GptossError
from gptoss_lite.checkpoint.safetensors import INDEX, read_header

pytest_plugins = ["cli_fixtures"]
SINGLE = "model.safetensors"


def load(folder: Path):
    return gptoss_lite.load(folder, device="cpu", dtype=torch.float32, context=32)


def header_of(file: Path) -> tuple[dict, bytes]:
    raw = file.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def write_with_header(file: Path, header, data: bytes) -> None:
    text = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.fixture
def copy(checkpoint, tmp_path):
    """`copy(geometry, shards=1)` → a private copy of a written checkpoint, to damage."""

    def make(geometry: str = "g1", shards: int = 1) -> Path:
        return shutil.copytree(checkpoint(geometry, shards=shards), tmp_path / "ckpt")

    return make


def edit_header(folder: Path, change) -> Path:
    """Apply `change(header)` (returning the new header) to the single file of `folder`."""
    file = folder / SINGLE
    header, data = header_of(file)
    write_with_header(file, change(header), data)
    return file


def first_tensor(header: dict) -> str:
    return min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def _drop_offsets(h: dict) -> dict:
    del h[first_tensor(h)]["data_offsets"]
    return h


def _negative_offsets(h: dict) -> dict:
    h[first_tensor(h)]["data_offsets"] = [-4, 0]
    return h


def _overlapping(h: dict) -> dict:
    names = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"])
    a, b = h[names[0]], h[names[1]]
    size = b["data_offsets"][1] - b["data_offsets"][0]
    b["data_offsets"] = [a["data_offsets"][1] - 2, a["data_offsets"][1] - 2 + size]
    return h


def _wrong_byte_count(h: dict) -> dict:
    h["model.norm.weight"]["shape"] = [h["model.norm.weight"]["shape"][0] * 2]
    return h


def _transposed(h: dict) -> dict:
    entry = h["model.layers.0.self_attn.o_proj.weight"]  # [64, 128] in g1: same bytes either way
    entry["shape"] = entry["shape"][::-1]
    return h


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: [h], "not a JSON object"),
        (_drop_offsets, "no valid data_offsets"),
        (_negative_offsets, "no valid data_offsets"),
        (_overlapping, "overlaps the one before it"),
        (_wrong_byte_count, r"shape \[128\] of BF16 is 256 bytes, its data_offsets hold 128"),
        (lambda h: {**h, "model.norm.weight": {**h["model.norm.weight"], "dtype": "Q4"}}, "'Q4'"),
        (_transposed, r"o_proj.weight in .* has shape \(128, 64\), the config expects \(64, 128\)"),
    ],
    ids=["list", "no-offsets", "negative", "overlap", "byte-count", "dtype", "transposed"],
)
def test_corrupt_headers_name_the_file_and_the_problem(copy, change, message):
    folder = copy()
    edit_header(folder, change)
    with pytest.raises(GptossError, match=message) as info:
        load(folder)
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_a_header_that_is_not_json(copy):
    folder = copy()
    file = folder / SINGLE
    header, data = header_of(file)
    text = b"\xff\xfe" + json.dumps(header).encode()[2:]
    file.write_bytes(struct.pack("<Q", len(text)) + text + data)
    with pytest.raises(GptossError, match=f"{file} has a corrupt header"):
        load(folder)


def test_trailing_bytes_after_the_last_tensor(copy):
    folder = copy()
    with open(folder / SINGLE, "ab") as f:
        f.write(b"\0" * 16)
    with pytest.raises(GptossError, match="16 bytes after its last tensor"):
        load(folder)


def test_the_reader_accepts_what_the_writer_wrote(checkpoint):
    from safetensors import safe_open

    file = checkpoint("g1") / SINGLE
    with safe_open(file, "pt") as f:
        expected = {name: (tuple(f.get_slice(name).get_shape())) for name in f.keys()}  # noqa: SIM118
    assert {spec.name: spec.shape for spec in read_header(file)} == expected


def test_binary_config_json(copy):
    folder = copy()
    (folder / "config.json").write_bytes(bytes(range(256)))
    with pytest.raises(GptossError, match=f"cannot read {folder / 'config.json'}"):
        load(folder)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "num_layers must be a positive integer, got 'abc'"),
        (10**9, "num_layers is 1000000000, more than the 1024 allowed"),
    ],
)
def test_absurd_num_hidden_layers_is_refused_before_allocating(copy, value, message):
    folder = copy()
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = value
    del config["layer_types"]
    (folder / "config.json").write_text(json.dumps(config))
    tracemalloc.start()
    try:
        with pytest.raises(GptossError, match=f"{folder / 'config.json'}: config: {message}"):
            load(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20  # a tuple of 10^9 layer types alone would be 8 GB


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("layer_types", 5, "layer_types must be a list"),
        ("rope_scaling", [1], "rope_scaling must be a JSON object"),
        ("eos_token_id", "end", "eos_token_id must be a list"),
        ("sliding_window", 1.5, "sliding_window must be a positive integer"),
    ],
)
def test_config_fields_of_the_wrong_type(copy, field, value, message):
    folder = copy()
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(GptossError, match=message):
        load(folder)


# ---------------------------------------------------------------------------- shards and the index


def rewrite_index(folder: Path, change) -> None:
    index = json.loads((folder / INDEX).read_text())
    (folder / INDEX).write_text(json.dumps(change(index)))


def test_an_index_whose_weight_map_is_a_list(copy):
    folder = copy("g2", shards=3)
    rewrite_index(folder, lambda i: {**i, "weight_map": list(i["weight_map"])})
    with pytest.raises(GptossError, match=f"{folder / INDEX}: weight_map must be a JSON object"):
        load(folder)


def point_a_tensor_at(folder: Path, name: str) -> None:
    def change(index):
        tensor = next(iter(index["weight_map"]))
        index["weight_map"][tensor] = name
        return index

    rewrite_index(folder, change)


def test_a_shard_that_is_a_directory(copy):
    folder = copy("g2", shards=3)
    (folder / "extra.safetensors").mkdir()
    point_a_tensor_at(folder, "extra.safetensors")
    with pytest.raises(GptossError, match="extra.safetensors is not a file"):
        load(folder)


def test_a_shard_that_is_a_symlink_loop(copy):
    folder = copy("g2", shards=3)
    (folder / "loop.safetensors").symlink_to(folder / "loop.safetensors")
    point_a_tensor_at(folder, "loop.safetensors")
    with pytest.raises(GptossError, match="cannot resolve checkpoint shard .*loop.safetensors"):
        load(folder)


def test_an_unreadable_shard(copy, monkeypatch):
    folder = copy()
    file = folder / SINGLE
    file.chmod(0)
    if os.access(file, os.R_OK):  # root reads anything: make the open fail as it would
        import gptoss_lite.checkpoint.safetensors as st

        def denied(path, mode="r", *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(st, "open", denied, raising=False)
    with pytest.raises(GptossError, match=f"cannot read checkpoint file {file}: Permission denied"):
        load(folder)


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_shards_outside_the_folder_are_refused(copy, tmp_path, where):
    folder = copy("g2", shards=3)
    outside = tmp_path / "x"
    outside.mkdir()
    victim = folder / "model-00000-of-00002.safetensors"
    shutil.move(victim, outside / "model.safetensors")
    name = {
        "parent": "../x/model.safetensors",
        "absolute": str(outside / "model.safetensors"),
        "symlink": victim.name,
    }[where]
    if where == "symlink":
        victim.symlink_to(outside / "model.safetensors")
    else:
        rewrite_index(
            folder,
            lambda i: {
                **i,
                "weight_map": {
                    k: name if v == victim.name else v for k, v in i["weight_map"].items()
                },
            },
        )
    with pytest.raises(GptossError, match="outside the (checkpoint )?folder"):
        load(folder)


def test_a_hub_snapshot_may_link_into_its_blobs(checkpoint, tmp_path):
    """The Hugging Face cache keeps files in blobs/ and links them from snapshots/REV/."""
    source = checkpoint("g2", shards=3)
    repo = tmp_path / "models--someone--model"
    snapshot = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        blob = repo / "blobs" / file.name
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(Path("../../blobs") / file.name)
    ids = [1, 2, 3]
    assert torch.equal(load(snapshot).logits(ids), load(source).logits(ids))


def test_the_cli_says_it_in_one_line(cli, tiny_model, tmp_path):
    folder = shutil.copytree(tiny_model, tmp_path / "ckpt")
    edit_header(folder, lambda h: [h])
    result = cli("run", "-m", folder, "-n", "1", "--device", "cpu", "hello")
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert (
        lines[-1]
        == f"error: checkpoint file {folder / SINGLE} has a corrupt header (not a JSON object)"
    )
    assert not any("Traceback" in line for line in lines)


def test_a_tensor_in_two_files_without_an_index(copy):
    folder = copy()
    shutil.copy(folder / SINGLE, folder / "model-copy.safetensors")
    with pytest.raises(GptossError, match="tensor .* is in both .*model-copy.safetensors"):
        load(folder)
