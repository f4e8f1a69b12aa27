"""Checkpoints whose experts are dense bf16 (most fine-tunes): the MXFP4 they become.

A dense HF checkpoint (what `GptOssForCausalLM.save_pretrained` writes without quantization) holds
`mlp.experts.gate_up_proj [E, H, 2I]` and `down_proj [E, I, H]`, used as `x @ W` (gate and up
interleaved on the last axis of gate_up). The published checkpoints hold instead, per projection,
`*_blocks [E, out, in/32, 16]` and `*_scales [E, out, in/32]` in nn.Linear orientation [out, in]:
so each dense weight is transposed, then encoded in blocks along `in` (`quantize_dense`; the
`quantize` command writes with the same function). Row order, and so the gate/up interleave, is
unchanged; biases (`*_bias`) stay dense bf16 under their own names.

`QuantizingCheckpoint` presents an opened dense checkpoint as the published MXFP4 layout: the
dense names are replaced by `*_blocks` / `*_scales`, and reading either one quantizes the dense
tensor on the target device and hands out its blocks and scales. One layer's dense experts are
in memory at a time; the model only ever holds the packed bytes.
"""

from __future__ import annotations

import torch

from ..model.mxfp4 import BLOCK, BYTES_PER_BLOCK, quantize_mxfp4
from .layouts import DENSE_EXPERT
from .protocol import Checkpoint, TensorInfo


def quantize_dense(name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """`{name}_blocks`, `{name}_scales` of one dense `x @ W` weight `[..., in, out]`."""
    blocks, scales = quantize_mxfp4(weight.transpose(-1, -2))  # encoded along `in`
    return {f"{name}_blocks": blocks, f"{name}_scales": scales}


def packed_shapes(dense_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the blocks and scales made from a dense `x @ W` weight of `dense_shape`."""
    *lead, k, n = dense_shape
    return (*lead, n, k // BLOCK, BYTES_PER_BLOCK), (*lead, n, k // BLOCK)


def _encodable(info: TensorInfo) -> bool:
    return info.dtype.is_floating_point and len(info.shape) >= 2 and info.shape[-2] % BLOCK == 0


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
            if not DENSE_EXPERT.match(name) or not _encodable(info):
                self.tensors[name] = info  # the loader then names what is wrong with it
                continue
            blocks, scales = packed_shapes(info.shape)
            for suffix, shape in (("_blocks", blocks), ("_scales", scales)):
                self.tensors[name + suffix] = TensorInfo(shape, torch.uint8, info.file)
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
