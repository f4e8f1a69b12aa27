"""KV-cache storage formats: K and V each kept as bf16, q8 or fp8, chosen separately.

- `bf16`: unquantized, in the activation dtype (bf16 unless the model runs in fp32 or fp16).
- `q8`: int8 codes in blocks of `Q8_BLOCK` along head_dim, one fp16 scale per block, as
  llama.cpp's q8_0 (and byte for byte like it: d = max|x| / 127 in fp32, code = x·(1/d) rounded
  half away from zero, the scale stored as fp16(d)).
- `fp8`: float8 e4m3 codes with one fp16 scale per token and kv head, by the same rule with 448
  (the largest e4m3 value) for 127 and a round-to-nearest-even cast for the rounding.

Both quantized formats are the same structure: codes `[S, H, D]` and scales `[S, H, D / block]`
(block 32 for q8, or D where D < 32; D for fp8), x ≈ code · scale. A token is quantized on its
own, when it enters the cache, so the same token gives the same codes whether it came in a
prefill chunk or alone. `Quantized` behaves as far as the cache and attention need like the
tensor it stands for: a shape, row slicing, row assignment, `.float()` (the dequantized rows).
Attention dequantizes it one key block at a time.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass

import torch

from ..errors import GptossError

KV_FORMATS = ("bf16", "q8", "fp8")
Q8_BLOCK = 32  # values per q8 scale, along head_dim
Q8_MAX = 127.0
FP8_MAX = 448.0  # largest finite float8 e4m3fn
SCALE_DTYPE = torch.float16
_SCALE_LIMIT = torch.finfo(SCALE_DTYPE).max
BF16_BYTES = 2  # the planner counts the unquantized cache at bf16 width
_CODES = {"q8": torch.int8, "fp8": torch.float8_e4m3fn}


@dataclass(frozen=True)
class KVDtypes:
    """The storage formats of the K and of the V cache."""

    k: str = "bf16"
    v: str = "bf16"

    def __post_init__(self) -> None:
        for which, kind in (("K", self.k), ("V", self.v)):
            if kind not in KV_FORMATS:
                raise GptossError(
                    f"unknown KV-cache dtype {kind!r} for {which}; use {', '.join(KV_FORMATS)}"
                )

    def __str__(self) -> str:
        return self.k if self.k == self.v else f"{self.k},{self.v}"

    @classmethod
    def parse(cls, text: str) -> KVDtypes:
        """`K` (both caches) or `K,V`, e.g. "q8" or "bf16,q8"."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) > 2:
            raise GptossError(f"KV-cache dtype {text!r}: give K or K,V (e.g. q8 or bf16,q8)")
        return cls(parts[0], parts[-1])

    @property
    def quantized_k(self) -> bool:
        return self.k != "bf16"


UNQUANTIZED = KVDtypes()  # the default: K and V in the activation dtype


def block_size(kind: str, head_dim: int) -> int:
    """Values per scale along head_dim (a head narrower than a q8 block is one block)."""
    block = min(Q8_BLOCK, head_dim) if kind == "q8" else head_dim
    if head_dim % block:
        raise GptossError(f"q8 needs head_dim divisible by {Q8_BLOCK}, got {head_dim}")
    return block


def row_bytes(kind: str, head_dim: int) -> int:
    """Bytes one token of one kv head takes in the cache (codes + scales)."""
    if kind == "bf16":
        return head_dim * BF16_BYTES
    scales = head_dim // block_size(kind, head_dim)
    return head_dim * _CODES[kind].itemsize + scales * SCALE_DTYPE.itemsize


@dataclass
class Quantized:
    """Quantized rows: codes [S, H, D] (int8 or float8 e4m3) and fp16 scales [S, H, D / block]
    (a pool of sequences has one more leading axis)."""

    codes: torch.Tensor
    scales: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def __getitem__(self, rows) -> Quantized:
        return Quantized(self.codes[rows], self.scales[rows])

    def __setitem__(self, rows, value: Quantized) -> None:
        self.codes[rows] = value.codes
        self.scales[rows] = value.scales

    def float(self) -> torch.Tensor:
        """The dequantized rows in float32 [S, H, D]."""
        s, h, _ = self.codes.shape
        x = self.codes.float()
        x.view(s, h, self.scales.shape[-1], -1).mul_(self.scales.float().unsqueeze(-1))
        return x

    def tensors(self) -> list[torch.Tensor]:
        return [self.codes, self.scales]

    def index_copy_(self, dim: int, index: torch.Tensor, value: Quantized) -> Quantized:
        self.codes.index_copy_(dim, index, value.codes)
        self.scales.index_copy_(dim, index, value.scales)
        return self

    def to(self, device: torch.device | str) -> Quantized:
        return Quantized(self.codes.to(device), self.scales.to(device))


def quantize(x: torch.Tensor, kind: str) -> torch.Tensor | Quantized:
    """x [T, H, D] in the storage format `kind` (bf16: x itself)."""
    if kind == "bf16":
        return x
    t, h, d = x.shape
    xf = x.float().view(t, h, d // block_size(kind, d), -1)  # (T, H, blocks, block)
    limit = Q8_MAX if kind == "q8" else FP8_MAX
    scale = (xf.abs().amax(dim=-1, keepdim=True) / limit).clamp_(max=_SCALE_LIMIT)
    inverse = torch.where(scale == 0, 0.0, 1.0 / scale)  # an all-zero block: codes 0
    y = (xf * inverse).clamp_(-limit, limit)
    codes = _round_half_away(y).to(torch.int8) if kind == "q8" else y.to(torch.float8_e4m3fn)
    return Quantized(codes.view(t, h, d), scale.squeeze(-1).to(SCALE_DTYPE))


def _round_half_away(y: torch.Tensor) -> torch.Tensor:
    """Round half away from zero, exactly (|y| + 0.5 could round up in fp32 before the floor)."""
    a = y.abs()
    whole = a.floor()
    return (whole + (2 * (a - whole)).floor_()).copysign_(y)


def empty(kind: str, *shape: int, device, dtype) -> torch.Tensor | Quantized:
    """A zeroed cache buffer of `shape` (..., tokens, heads, head_dim); `dtype` is that of the
    unquantized kind."""
    if kind == "bf16":
        return _zeros(shape, device, dtype)
    blocks = shape[-1] // block_size(kind, shape[-1])
    return Quantized(
        _zeros(shape, device, _CODES[kind]),
        _zeros((*shape[:-1], blocks), device, SCALE_DTYPE),
    )


def _zeros(shape: tuple[int, ...], device, dtype: torch.dtype) -> torch.Tensor:
    """A zeroed tensor. On the CPU its memory comes fresh from the OS, zero until written and
    resident only once written, so a cache planned for the whole context takes RAM as tokens
    fill it (`torch.zeros` writes, and so holds, every page at once)."""
    if torch.device(device).type != "cpu" or not hasattr(mmap, "MAP_ANONYMOUS"):
        return torch.zeros(shape, device=device, dtype=dtype)
    count = math.prod(shape)
    if count == 0:
        return torch.zeros(shape, dtype=dtype)
    pages = mmap.mmap(-1, count * dtype.itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(pages, dtype=dtype, count=count).view(shape)


def cat(a: torch.Tensor | Quantized, b: torch.Tensor | Quantized) -> torch.Tensor | Quantized:
    """Rows of `a`, then rows of `b` (both of one format)."""
    if isinstance(a, Quantized):
        return Quantized(torch.cat([a.codes, b.codes]), torch.cat([a.scales, b.scales]))
    return torch.cat([a, b])


def storage(x: torch.Tensor | Quantized) -> list[torch.Tensor]:
    """The tensors that hold `x`."""
    return x.tensors() if isinstance(x, Quantized) else [x]
