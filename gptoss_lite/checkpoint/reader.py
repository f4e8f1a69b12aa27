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
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..config import ModelConfig, read_config
from ..errors import GptossError
from ..kernels.cpu.host_memory import MappedFile
from .protocol import TensorInfo
from .safetensors import read_header, read_index, shard_path

READERS = 4  # threads reading a tensor (cold, 2 GiB of a shard: 1.0 GB/s, one 64 MiB reader 0.4)
READ_CHUNK = 16 * 1024 * 1024  # bytes a thread reads at a time


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
                    self.tensors[name] = TensorInfo(spec.shape, spec.torch_dtype, file, spec.offset)
        self._open: dict[tuple[Path, str], object] = {}
        self._mapped: dict[Path, MappedFile] = {}

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
        """Tensor `name` on `device`; on the CPU a view of the file's own mapping
        (`kernels.cpu.host_memory.MappedFile`), read from the disk as its pages are used."""
        info = self.tensors.get(name)
        if info is None:
            raise GptossError(f"checkpoint {self.folder} has no tensor {name!r}")
        try:
            if torch.device(device).type == "cpu":
                if info.file not in self._mapped:
                    self._mapped[info.file] = MappedFile(info.file)
                return self._mapped[info.file].tensor(info.offset, info.shape, info.dtype)
            key = (info.file, str(device))
            if key not in self._open:
                self._open[key] = safe_open(str(info.file), framework="pt", device=str(device))
            return self._open[key].get_tensor(name)
        except (OSError, ValueError, SafetensorError) as exc:  # the file changed since checked
            raise GptossError(f"cannot read tensor {name} from {info.file}: {exc}") from None

    def read_into(self, name: str, out: torch.Tensor) -> None:
        """Read tensor `name` straight from its file into the contiguous CPU tensor `out` (of its
        dtype and size), through no memory map: only `out` holds the bytes. READERS threads read
        its READ_CHUNK pieces, so the disk has several reads to serve and `out`'s new pages are
        faulted in (and zeroed) on several cores."""
        info = self.tensors.get(name)
        if info is None:
            raise GptossError(f"checkpoint {self.folder} has no tensor {name!r}")
        if out.dtype != info.dtype or out.numel() != math.prod(info.shape):
            raise ValueError(f"{name} is {info.dtype} {info.shape}, not {out.dtype} {out.shape}")
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy())

        def read(begin: int) -> None:
            end, done = min(begin + READ_CHUNK, len(view)), begin
            while done < end:
                got = os.preadv(f.fileno(), [view[done:end]], info.offset + done)
                if got == 0:
                    raise OSError("the file is shorter than its header says")
                done += got

        pieces = range(0, len(view), READ_CHUNK)
        try:
            with open(info.file, "rb", buffering=0) as f:
                if len(pieces) > 1:
                    with ThreadPoolExecutor(min(READERS, len(pieces))) as pool:
                        list(pool.map(read, pieces))
                else:  # a norm, a bias, a scale: no threads to start for one read
                    for begin in pieces:
                        read(begin)
        except OSError as exc:  # the file changed since its header was read
            raise GptossError(f"cannot read tensor {name} from {info.file}: {exc}") from None

    def release(self, name: str) -> None:
        """Drop tensor `name`'s bytes from the page cache, once a copy of them is all that is
        wanted (where the OS allows; pages mapped somewhere stay)."""
        info = self.tensors[name]
        if hasattr(os, "posix_fadvise"):
            with open(info.file, "rb") as f:
                nbytes = math.prod(info.shape) * info.dtype.itemsize
                os.posix_fadvise(f.fileno(), info.offset, nbytes, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        self._open.clear()
        self._mapped.clear()  # a mapping lives on while tensors read from it do


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
