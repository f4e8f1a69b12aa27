"""The safetensors file format, read and written by the project's own code: one home for it.

A file is an 8-byte little-endian header length N, N bytes of JSON (`{name: {"dtype", "shape",
"data_offsets": [start, end]}, "__metadata__": {...}}`, padded with spaces so the data starts
8-byte aligned), then the tensors' bytes, offsets counted from the end of the header. A file
from outside is hostile until checked: `read_header` accepts only what the `safetensors` library
itself accepts (offsets that tile the data exactly, each tensor's bytes matching its shape and
dtype), and says which file is wrong and how in one `GptossError` line, before anything large
is allocated. Sharded checkpoints add an index (`model.safetensors.index.json`) whose
`weight_map` names each tensor's shard; `read_index` refuses shard names that lead outside the
checkpoint folder. `StreamWriter` writes a file whose header is known in advance, streaming the
data a tensor (or a piece of one) at a time, so any shard is written in bounded memory.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import torch

from ..errors import GptossError

DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
}  # fmt: skip
NAMES = {dtype: name for name, dtype in DTYPES.items()}
INDEX = "model.safetensors.index.json"
MAX_HEADER = 100_000_000  # bytes of JSON; the safetensors library refuses more


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a file: its name, safetensors dtype name ("BF16", "U8", …) and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int | None = None  # where its bytes start in the file, when read from one

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.torch_dtype.itemsize


# ---------------------------------------------------------------------------- reading


def read_header(file: Path) -> list[TensorSpec]:
    """The tensors of safetensors `file` in data order, each checked against the file's bytes."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            raw = f.read(8)
            length = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            if length < 0 or 8 + length > size:
                raise GptossError(f"checkpoint file {file} is truncated or not a safetensors file")
            if length > MAX_HEADER:
                raise GptossError(f"checkpoint file {file} has a {length:,}-byte header")
            text = f.read(length)
    except OSError as exc:
        raise GptossError(f"cannot read checkpoint file {file}: {exc.strerror or exc}") from None
    try:
        header = json.loads(text)
    except ValueError:  # bad JSON or bad UTF-8
        raise GptossError(f"checkpoint file {file} has a corrupt header (not JSON)") from None
    if not isinstance(header, dict):
        raise GptossError(f"checkpoint file {file} has a corrupt header (not a JSON object)")
    header.pop("__metadata__", None)
    specs = sorted(
        (_entry(file, name, entry) for name, entry in header.items()), key=lambda s: s[1]
    )
    data = size - 8 - length
    end = 0
    for spec, start, stop in specs:
        if start != end:
            problem = "overlaps the one before it" if start < end else "leaves a gap before it"
            raise GptossError(f"checkpoint file {file}: tensor {spec.name} {problem}")
        if stop > data:
            raise GptossError(
                f"checkpoint file {file} is truncated or corrupt: {data} data bytes, "
                f"tensor {spec.name} needs {stop}"
            )
        end = stop
    if end != data:
        raise GptossError(f"checkpoint file {file} has {data - end} bytes after its last tensor")
    return [replace(spec, offset=8 + length + start) for spec, start, _ in specs]


def _entry(file: Path, name: str, entry) -> tuple[TensorSpec, int, int]:
    """One header entry as (spec, start, end), or a one-line error naming what is wrong."""
    where = f"checkpoint file {file}: tensor {name}"
    if not isinstance(entry, dict):
        raise GptossError(f"{where} is not described by a JSON object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise GptossError(f"{where} has unsupported dtype {dtype!r}")
    if not _ints(shape):
        raise GptossError(f"{where} has no valid shape (a list of non-negative integers)")
    if not _ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise GptossError(f"{where} has no valid data_offsets ([start, end], 0 <= start <= end)")
    spec = TensorSpec(name, dtype, tuple(shape))
    if offsets[1] - offsets[0] != spec.nbytes:
        raise GptossError(
            f"{where}: shape {list(shape)} of {dtype} is {spec.nbytes} bytes, "
            f"its data_offsets hold {offsets[1] - offsets[0]}"
        )
    return spec, offsets[0], offsets[1]


def _ints(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    )


def read_index(folder: Path) -> dict[str, Path] | None:
    """Tensor name → shard path from `folder`'s index, or None when there is no index file."""
    index = folder / INDEX
    if not index.exists():
        return None
    try:
        data = json.loads(index.read_bytes())
    except (OSError, ValueError) as exc:
        raise GptossError(f"cannot read {index}: {getattr(exc, 'strerror', None) or exc}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise GptossError(f"{index}: weight_map must be a JSON object of tensor name -> file name")
    shards = {name: shard_path(folder, name) for name in set(weight_map.values())}
    return {tensor: shards[name] for tensor, name in weight_map.items()}


def shard_path(folder: Path, name: str) -> Path:
    """`folder / name`, checked: a readable file that stays inside the checkpoint folder.

    Symlinks are followed and must end inside the folder too, or, for a Hugging Face cache
    snapshot (`…/snapshots/REV/`), inside that repo's `blobs/` folder, where the cache keeps
    the files its snapshot links point to.
    """
    path = folder / name
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise GptossError(f"checkpoint shard {name!r} in {folder} names a file outside the folder")
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise GptossError(f"checkpoint shard {name} is missing from {folder}") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise GptossError(f"cannot resolve checkpoint shard {path}: {exc}") from None
    if not any(real.is_relative_to(root) for root in _roots(folder)):
        raise GptossError(f"checkpoint shard {path} links to {real}, outside the checkpoint folder")
    if not real.is_file():
        raise GptossError(f"checkpoint shard {path} is not a file")
    return path


def _roots(folder: Path) -> list[Path]:
    roots = [folder.resolve()]
    blobs = folder.parent.parent / "blobs"
    if folder.parent.name == "snapshots" and blobs.is_dir():
        roots.append(blobs.resolve())
    return roots


# ---------------------------------------------------------------------------- writing


def header_bytes(specs: Iterable[TensorSpec]) -> bytes:
    """The length prefix and JSON header of a file holding `specs` in this order."""
    entries: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        end = offset + spec.nbytes
        shape = list(spec.shape)
        entries[spec.name] = {"dtype": spec.dtype, "shape": shape, "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


class StreamWriter:
    """Writes `specs` to `path` in order: `write` whole tensors (checked against the plan) or
    `append` the raw pieces of the next ones, then `close` (or use `with`)."""

    def __init__(self, path: Path, specs: list[TensorSpec]) -> None:
        self._specs = list(specs)
        self._ends = [0]
        for spec in self._specs:
            self._ends.append(self._ends[-1] + spec.nbytes)
        self._written = 0
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed in close())
        self._file.write(header_bytes(self._specs))

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """The whole of the next planned tensor, which must be `name` with its planned shape."""
        k = self._ends.index(self._written) if self._written in self._ends else -1
        spec = self._specs[k] if 0 <= k < len(self._specs) else None
        if spec is None or spec.name != name:
            raise ValueError(f"tensor {name!r} written out of plan order (expected {spec})")
        if tensor.dtype != spec.torch_dtype or tuple(tensor.shape) != spec.shape:
            raise ValueError(f"tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, plan {spec}")
        self.append(tensor)

    def append(self, data: torch.Tensor) -> int:
        """The bytes of `data` as the next bytes of the file; returns how many."""
        raw = data.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        if self._written + raw.nbytes > self._ends[-1]:
            raise ValueError("more bytes written than the planned tensors hold")
        self._file.write(memoryview(raw))
        self._written += raw.nbytes
        return raw.nbytes

    def close(self) -> None:
        self._file.close()
        if self._written != self._ends[-1]:
            raise ValueError(f"{self._ends[-1] - self._written} planned bytes were not written")

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()
