"""Loading a checkpoint whose experts are dense bf16 (most fine-tunes): quantize while loading.

`QuantizingCheckpoint` wraps an opened Hugging Face checkpoint that holds
`mlp.experts.gate_up_proj [E, H, 2I]` / `down_proj [E, I, H]` and presents it as the published
MXFP4 layout: the dense names are replaced by `*_blocks` / `*_scales`, and reading either one
quantizes the dense tensor on the target device (with `quantize.experts.quantize_dense`, the
same encoder the `quantize` command writes with) and hands out its blocks and scales. One
layer's dense experts are in memory at a time; the model only ever holds the packed bytes.
"""

from __future__ import annotations

import torch

from quantize.experts import DENSE_EXPERT, packed_shapes, quantize_dense

from .reader import Checkpoint, TensorInfo


def has_dense_experts(checkpoint: Checkpoint) -> bool:
    return any(DENSE_EXPERT.match(name) for name in checkpoint.tensors)


class QuantizingCheckpoint:
    """A dense-expert HF checkpoint seen as the MXFP4 one, quantized as it is read."""

    layout = "hf"

    def __init__(self, inner: Checkpoint):
        self.inner, self.folder, self.config = inner, inner.folder, inner.config
        self.tensors: dict[str, TensorInfo] = {}
        self._dense: dict[str, str] = {}  # packed name -> the dense tensor it comes from
        for name, info in inner.tensors.items():
            if not DENSE_EXPERT.match(name):
                self.tensors[name] = info
                continue
            blocks, scales = packed_shapes(info.shape)
            for suffix, shape in (("_blocks", blocks), ("_scales", scales)):
                self.tensors[name + suffix] = TensorInfo(info.file, shape, torch.uint8)
                self._dense[name + suffix] = name
        self._ready: dict[str, torch.Tensor] = {}  # quantized halves not yet handed out

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def read(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        dense = self._dense.get(name)
        if dense is None:
            return self.inner.read(name, device)
        if name not in self._ready:
            self._ready.update(quantize_dense(dense, self.inner.read(dense, device)))
        return self._ready.pop(name)

    def close(self) -> None:
        self._ready.clear()
        self.inner.close()
