"""Reading checkpoint files: which tensor lives in which safetensors file, read lazily.

Two published layouts are recognized:
- Hugging Face: `config.json` + `model.safetensors.index.json` + shards (the published shard
  names are off by one and layers straddle shards, so every name is resolved through the
  index's weight_map), or a single `model.safetensors`.
- OpenAI `original/`: `config.json` in the original format + `*.safetensors` (fused qkv,
  `block.N.mlp.mlp1_weight.blocks`, …). A folder holding both layouts is read in the HF layout.

Every file's header is checked against its size (`safetensors.read_header`) and every shard
path against the folder before anything is read, so a truncated, corrupt or misplaced shard is
one clear error instead of a crash halfway through loading.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..config import ModelConfig, read_config
from ..errors import GptossError
from .protocol import TensorInfo
from .safetensors import read_header, read_index, shard_path


class FileCheckpoint:
    """The tensors of one checkpoint folder, by name, read on demand."""

    def __init__(self, folder: Path, config: ModelConfig, files: dict[Path, set[str] | None]):
        """`files`: each shard and the tensors the index puts in it (None: all of its own)."""
        self.folder, self.config = folder, config
        self.tensors: dict[str, TensorInfo] = {}
        for file, names in files.items():
            specs = {spec.name: spec for spec in read_header(file)}
            for name in sorted(names or ()):
                if name not in specs:
                    raise GptossError(f"tensor {name} is in the index but not in {file}")
            for name, spec in specs.items():
                if name in self.tensors and names is None:
                    raise GptossError(
                        f"tensor {name} is in both {self.tensors[name].file} and {file}"
                    )
                if names is None or name in names:
                    self.tensors[name] = TensorInfo(spec.shape, spec.torch_dtype, file)
        self._open: dict[tuple[Path, str], object] = {}

    @property
    def layout(self) -> str:
        """ "hf" or "original", from the tensor names."""
        return "original" if "embedding.weight" in self.tensors else "hf"

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    @property
    def nbytes(self) -> int:
        return sum(math.prod(i.shape) * i.dtype.itemsize for i in self.tensors.values())

    def read(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        info = self.tensors.get(name)
        if info is None:
            raise GptossError(f"checkpoint {self.folder} has no tensor {name!r}")
        key = (info.file, str(device))
        try:
            if key not in self._open:
                self._open[key] = safe_open(str(info.file), framework="pt", device=str(device))
            return self._open[key].get_tensor(name)
        except (OSError, SafetensorError) as exc:  # the file changed since its header was read
            raise GptossError(f"cannot read tensor {name} from {info.file}: {exc}") from None

    def close(self) -> None:
        self._open.clear()


def open_checkpoint(path: str | Path, config: ModelConfig | None = None) -> FileCheckpoint:
    """Open a local checkpoint folder in either published layout (`config`: its config, when
    the caller has read it already)."""
    folder = Path(path)
    if not folder.is_dir():
        raise GptossError(f"checkpoint folder {folder} does not exist")
    if any(folder.glob("*.safetensors")):
        return FileCheckpoint(folder, config or read_config(folder), _files(folder))
    if (folder / "original").is_dir():
        return open_checkpoint(folder / "original", config)
    raise GptossError(
        f"{folder} holds no gpt-oss checkpoint (expected model.safetensors.index.json, "
        "model.safetensors, or an original/ folder)"
    )


def _files(folder: Path) -> dict[Path, set[str] | None]:
    """The safetensors files of a folder with the tensors the index puts in each (None when
    there is no index: every file, all of its tensors)."""
    index = read_index(folder)
    if index is None:
        return {shard_path(folder, p.name): None for p in sorted(folder.glob("*.safetensors"))}
    files: dict[Path, set[str] | None] = {}
    for tensor, file in sorted(index.items(), key=lambda item: str(item[1])):
        files.setdefault(file, set()).add(tensor)
    return files
