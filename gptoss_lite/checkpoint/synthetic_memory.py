"""In-memory synthetic checkpoints: random weights of a real geometry, no file written.

`SyntheticCheckpoint(config, seed)` is a `Checkpoint` (protocol.py) in the Hugging Face layout,
but `read(name, device)` draws the tensor on
demand, one chunk at a time on the host, straight into its final buffer on the target device.
Loading the gpt-oss-20b geometry therefore needs its 13.8 GB once (on the device) plus a few
chunks on the host, and no download. The values are those `synthetic.write_synthetic` writes for
the same seed (same per-chunk generators), so an in-memory model and a written one are equal.
Pass one to `gptoss_lite.load(SyntheticCheckpoint(preset("gpt-oss-20b")))`.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch

from ..config import ModelConfig
from ..errors import GptossError
from .protocol import TensorInfo
from .synthetic import CHUNK, WORKERS, draw_chunk, tensor_entries


class SyntheticCheckpoint:
    """Random gpt-oss weights in the HF layout, drawn tensor by tensor when read."""

    layout = "hf"
    folder = None  # no files: nothing to find a tokenizer in

    def __init__(self, config: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.bfloat16):
        self.config, self.seed, self.dtype = config, seed, dtype
        self._specs = {e.name: e.parts[0] for e in tensor_entries(config, "hf")}
        self.tensors = {
            name: TensorInfo(s.shape, s.dtype(dtype)) for name, s in self._specs.items()
        }

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def __repr__(self) -> str:
        return f"SyntheticCheckpoint({self.config.name}, seed={self.seed})"

    @property
    def nbytes(self) -> int:
        return sum(t.dtype.itemsize * math.prod(t.shape) for t in self.tensors.values())

    def read(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """Tensor `name`, drawn chunk by chunk into one buffer on `device`."""
        spec = self._specs.get(name)
        if spec is None:
            raise GptossError(f"synthetic {self.config.name} checkpoint has no tensor {name!r}")
        out = torch.empty(spec.numel, dtype=spec.dtype(self.dtype), device=device)

        def fill(i: int) -> None:  # chunks are disjoint slices: threads write them independently
            out[i * CHUNK : (i + 1) * CHUNK] = draw_chunk(spec, self.seed, i, self.dtype)

        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(fill, range(spec.num_chunks)))
        return out.view(spec.shape)

    def close(self) -> None:
        """Nothing to close: there are no files."""
