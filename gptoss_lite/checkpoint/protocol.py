"""What the loader needs of a checkpoint, whatever its kind: the `Checkpoint` Protocol.

Three kinds satisfy it: a folder of safetensors files (`reader.FileCheckpoint`), a bf16 fine-tune
seen through MXFP4 as it is read (`dense.QuantizingCheckpoint`) and random weights drawn in
memory (`synthetic_memory.SyntheticCheckpoint`). `tensors` describes every tensor before any is
read, so shapes and dtypes are checked against the config before anything large is allocated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from ..config import ModelConfig


@dataclass(frozen=True)
class TensorInfo:
    """What is known of a tensor before reading it; `file` is None when it has no file."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path | None = None
    offset: int | None = None  # where its bytes start in `file`


@runtime_checkable
class Checkpoint(Protocol):
    """Named tensors in the "hf" or "original" layout, read one at a time onto a device."""

    config: ModelConfig
    folder: Path | None  # where the tokenizer may be found; None when there are no files
    tensors: Mapping[str, TensorInfo]

    @property
    def layout(self) -> str: ...

    def read(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor: ...

    def close(self) -> None: ...
