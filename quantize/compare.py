"""MXFP4 against the bitsandbytes 4-bit formats, on the same weight, on CPU.

Each format quantizes a float32 weight `[out, in]` and dequantizes it back to float32, so only
the format's own rounding is measured. Blocks run along `in` in every format (bitsandbytes blocks
the flattened row-major tensor; `in` is a multiple of the block size). Bits per weight count what
each format stores per tensor: MXFP4 4-bit codes + one uint8 E8M0 scale per 32 (4.25);
bitsandbytes 4-bit codes + one float32 absmax per block (4 + 32/blocksize), or with double
quantization a uint8 absmax per block + a float32 absmax per 256 blocks + one float32 offset.
The per-tensor 16-entry code tables are constant overhead and left out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gptoss_lite.model.mxfp4 import dequantize, quantize_mxfp4

from .metrics import ErrorMetrics, error_metrics

Roundtrip = Callable[[torch.Tensor], tuple[torch.Tensor, int]]  # → (reconstruction, bytes stored)


@dataclass(frozen=True)
class FormatResult:
    """One format's error on one weight, with the storage it needed."""

    name: str
    stored: str
    bits_per_weight: float
    metrics: ErrorMetrics

    def as_dict(self) -> dict:
        return {
            "format": self.name,
            "stored": self.stored,
            "bits_per_weight": self.bits_per_weight,
            **self.metrics.as_dict(),
        }


def mxfp4_roundtrip(weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    blocks, scales = quantize_mxfp4(weight)
    return dequantize(blocks, scales, torch.float32), blocks.nbytes + scales.nbytes


def _bitsandbytes_functional():
    """`bitsandbytes.functional`, imported without the warning its CPU backend logs at import time
    about an optional kernel package this comparison does not use."""
    bnb_logger = logging.getLogger("bitsandbytes")
    level = bnb_logger.level
    bnb_logger.setLevel(logging.ERROR)
    try:
        import bitsandbytes.functional as bnbf
    finally:
        bnb_logger.setLevel(level)
    return bnbf


def bnb_roundtrip(quant_type: str, blocksize: int, double_quant: bool = False) -> Roundtrip:
    """A bitsandbytes `quantize_4bit` → `dequantize_4bit` round trip of one configuration."""

    def roundtrip(weight: torch.Tensor) -> tuple[torch.Tensor, int]:
        bnbf = _bitsandbytes_functional()
        packed, state = bnbf.quantize_4bit(
            weight, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant
        )
        stored = packed.nbytes + state.absmax.nbytes
        if state.nested:
            stored += state.state2.absmax.nbytes + state.offset.nbytes
        return bnbf.dequantize_4bit(packed, state), stored

    return roundtrip


# name → (what is stored, round trip)
FORMATS: dict[str, tuple[str, Roundtrip]] = {
    "mxfp4": ("E2M1 codes, uint8 E8M0 scale / 32", mxfp4_roundtrip),
    "bnb-nf4-b32": ("NF4 codes, fp32 absmax / 32", bnb_roundtrip("nf4", 32)),
    "bnb-nf4-b64": ("NF4 codes, fp32 absmax / 64", bnb_roundtrip("nf4", 64)),
    "bnb-fp4-b32": ("FP4 codes, fp32 absmax / 32", bnb_roundtrip("fp4", 32)),
    "bnb-fp4-b64": ("FP4 codes, fp32 absmax / 64", bnb_roundtrip("fp4", 64)),
    "bnb-nf4-b64-dq": (
        "NF4 codes, uint8 absmax / 64, fp32 / 16384",
        bnb_roundtrip("nf4", 64, double_quant=True),
    ),
}


def compare_formats(weight: torch.Tensor, formats: list[str] | None = None) -> list[FormatResult]:
    """Error and bits per weight of each format (default: all `FORMATS`) on `weight [out, in]`."""
    reference = weight.detach().float().contiguous()  # exact for bf16 weights
    results = []
    for name in formats or list(FORMATS):
        stored, roundtrip = FORMATS[name]
        reconstruction, nbytes = roundtrip(reference)
        bits = 8 * nbytes / reference.numel()
        results.append(FormatResult(name, stored, bits, error_metrics(reference, reconstruction)))
    return results
