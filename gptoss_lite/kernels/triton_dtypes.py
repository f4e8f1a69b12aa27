"""The operand type of the Triton kernels' `tl.dot`, which differs between a GPU and the
interpreter: shared by `moe_triton` and `attention_triton`, which import Triton at import time."""

from __future__ import annotations

import torch
import triton.language as tl


def dot_dtype(device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """The `tl.dot` operand type for operands holding `dtype` values: that type on a GPU, fp32 on
    CPU (the interpreter), which multiplies bf16 bit patterns as integers (triton#11584)."""
    types = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}
    return tl.float32 if device.type == "cpu" else types[dtype]
