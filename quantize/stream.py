"""Write a safetensors file one tensor at a time.

The header (names, dtypes, shapes, byte offsets) is known before any tensor exists, so it is
written first and each tensor's bytes follow as soon as the tensor is made: only one tensor is in
memory however large the shard. The file is the standard format (8-byte little-endian header
length, JSON header padded with spaces to 8 bytes, then the data in header order), read back by
`safetensors` and `transformers` like any other.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

TORCH_DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "BOOL": torch.bool,
}  # fmt: skip


@dataclass(frozen=True)
class TensorSpec:
    """One planned tensor: its name, safetensors dtype string ("BF16", "U8", …) and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * TORCH_DTYPES[self.dtype].itemsize


class StreamWriter:
    """Writes `specs` to `path` in order; `write` each tensor, then `close` (or use `with`)."""

    def __init__(self, path: Path, specs: list[TensorSpec]) -> None:
        self._specs = list(specs)
        self._next = 0
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed in close())
        self._file.write(_header(self._specs))

    def write(self, name: str, tensor: torch.Tensor) -> None:
        spec = self._specs[self._next] if self._next < len(self._specs) else None
        if spec is None or spec.name != name:
            raise RuntimeError(f"tensor {name!r} written out of plan order (expected {spec})")
        if tensor.dtype != TORCH_DTYPES[spec.dtype] or tuple(tensor.shape) != spec.shape:
            raise RuntimeError(
                f"tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, plan {spec}"
            )
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._file.write(memoryview(data))
        self._next += 1

    def close(self) -> None:
        self._file.close()
        if self._next != len(self._specs):
            raise RuntimeError(f"{len(self._specs) - self._next} planned tensors were not written")

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()


def _header(specs: list[TensorSpec]) -> bytes:
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
