"""Reading checkpoint files: which tensor lives in which safetensors file, read lazily.

Two published layouts are recognized (spec §2):
- Hugging Face: `config.json` + `model.safetensors.index.json` + shards (the published shard
  names are off by one and layers straddle shards, so every name is resolved through the
  index's weight_map), or a single `model.safetensors`.
- OpenAI `original/`: `config.json` in the original format + `*.safetensors` (fused qkv,
  `block.N.mlp.mlp1_weight.blocks`, …). A folder holding both layouts is read in the HF layout.

Every file's header is checked against its size before anything is read, so a truncated or
corrupt shard is one clear error instead of a crash halfway through loading.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..config import ModelConfig, read_config
from ..errors import GptossError

_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "U8": torch.uint8,
    "I8": torch.int8,
    "F8_E4M3": torch.float8_e4m3fn,
    "F64": torch.float64,
}


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype


class Checkpoint:
    """The tensors of one checkpoint folder, by name, read on demand."""

    def __init__(self, folder: Path, config: ModelConfig, files: list[Path]):
        self.folder, self.config = folder, config
        self.tensors: dict[str, TensorInfo] = {}
        for file in files:
            for name, (shape, dtype) in read_header(file).items():
                self.tensors[name] = TensorInfo(file, shape, dtype)
        self._open: dict[Path, object] = {}

    @property
    def layout(self) -> str:
        """ "hf" or "original", from the tensor names."""
        return "original" if "embedding.weight" in self.tensors else "hf"

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    @property
    def nbytes(self) -> int:
        return sum(_numel(i.shape) * i.dtype.itemsize for i in self.tensors.values())

    def read(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        info = self.tensors.get(name)
        if info is None:
            raise GptossError(f"checkpoint {self.folder} has no tensor {name!r}")
        key = (info.file, str(device))
        if key not in self._open:
            self._open[key] = safe_open(str(info.file), framework="pt", device=str(device))
        return self._open[key].get_tensor(name)

    def close(self) -> None:
        self._open.clear()


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a local checkpoint folder in either published layout."""
    folder = Path(path)
    if not folder.is_dir():
        raise GptossError(f"checkpoint folder {folder} does not exist")
    if any(folder.glob("*.safetensors")):
        return Checkpoint(folder, read_config(folder), _files(folder))
    if (folder / "original").is_dir():
        return open_checkpoint(folder / "original")
    raise GptossError(
        f"{folder} holds no gpt-oss checkpoint (expected model.safetensors.index.json, "
        "model.safetensors, or an original/ folder)"
    )


def _files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: those its index names, else every one in it."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return sorted(folder.glob("*.safetensors"))
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise GptossError(f"cannot read {index}: {exc}") from None
    files = [folder / name for name in sorted(set(weight_map.values()))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise GptossError(f"checkpoint shard {missing[0]} is missing from {folder}")
    return files


def read_header(file: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Tensor shapes and dtypes of a safetensors file, checked against the file's size."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw = f.read(8)
        header_len = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if header_len < 0 or 8 + header_len > size:
            raise GptossError(f"checkpoint file {file} is truncated or not a safetensors file")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise GptossError(f"checkpoint file {file} has a corrupt header") from None
    header.pop("__metadata__", None)
    data = size - 8 - header_len
    out = {}
    for name, entry in header.items():
        end = entry["data_offsets"][1]
        if end > data:
            raise GptossError(
                f"checkpoint file {file} is truncated: {data} data bytes, tensor {name} needs {end}"
            )
        if entry["dtype"] not in _DTYPES:
            raise GptossError(f"tensor {name} in {file} has unsupported dtype {entry['dtype']}")
        out[name] = (tuple(entry["shape"]), _DTYPES[entry["dtype"]])
    return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
