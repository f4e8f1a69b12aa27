"""Triton kernels for the GPU fast path: fused MXFP4 experts and attention with sinks.

`kernel_functions(name)` gives the model (`model.transformer.Kernels`) the implementation named:
the engine picks it, the model never imports this package. `moe_triton` and `attention_triton`
import Triton at import time; this package does not, so `triton_available()` can be asked
anywhere. The kernels run on CUDA tensors when compiled, and on
CPU tensors under the Triton interpreter, which is how they are tested without a GPU: then
TRITON_INTERPRET=1 must be set before Triton is first imported (its standard library is jit code
too) and when the kernel modules are imported. Compiled, they need compute capability 8.0 (sm_80,
Ampere) or newer: bf16 `tl.dot` has no tensor-core instruction before it; older cards run the
torch path. `compile_check` compiles every launch for sm_80..sm_90 without a GPU."""

from __future__ import annotations

import importlib.util
import os
from functools import partial

import torch

from ..errors import GptossError
from ..model.transformer import TORCH_KERNELS, Kernels

KERNELS = ("torch", "triton", "cpu", "cpu-q8")  # what `kernel_functions` knows

_TRUE = ("1", "true", "on", "yes")  # the spellings Triton itself accepts
MIN_CAPABILITY = (8, 0)  # bf16 `tl.dot` (tensor cores for bf16) needs sm_80: Ampere or newer


def interpreter_enabled() -> bool:
    """True when TRITON_INTERPRET is set: kernels defined now run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


def triton_available() -> bool:
    """True where the kernels run: Triton importable and a CUDA device, or the interpreter on."""
    if importlib.util.find_spec("triton") is None:
        return False
    return interpreter_enabled() or torch.cuda.is_available()


def triton_refusal(device: torch.device) -> str | None:
    """Why the compiled kernels cannot run on the CUDA `device` (one line), or None if they can."""
    capability = torch.cuda.get_device_capability(device)
    if capability >= MIN_CAPABILITY:
        return None
    have, need = ".".join(map(str, capability)), ".".join(map(str, MIN_CAPABILITY))
    return (
        f"the Triton kernels need a GPU of compute capability {need} (sm_80) or newer; "
        f"{torch.cuda.get_device_name(device)} is {have}"
    )


def kernel_functions(name: str) -> Kernels:
    """The implementation `name` names: "torch" (the model's own functions, any device),
    "triton" (the fused kernels, CUDA or the interpreter), "cpu" (the compiled CPU kernels of
    `kernels/cpu`) or "cpu-q8" (the same, but decode reads the attention projections and the
    head in their int8 form: half their bytes, not exact); else a one-line `GptossError`."""
    if name == "torch":
        return TORCH_KERNELS
    if name in ("cpu", "cpu-q8"):
        from . import cpu

        if not cpu.available():
            raise GptossError(
                "the compiled CPU kernels need a C compiler (gcc or clang, or set CC)"
            )
        from .cpu.decode import decode_step

        # cpu-q8, never the default: decode reads the dense matrices in int8 (not exact).
        dense = "q8" if name == "cpu-q8" else "bf16"
        return Kernels(
            cpu.kernel_name() + (", q8 decode" if dense == "q8" else ""),
            experts=cpu.experts_forward,
            linear=cpu.linear,
            fused_step=partial(decode_step, dense=dense),
            int8_dense=dense == "q8",
        )
    if name != "triton":
        raise GptossError(f"unknown kernels {name!r}; use auto, {' or '.join(KERNELS)}")
    from .attention_triton import attention, batch_attention
    from .moe_triton import moe_forward

    return Kernels("triton", attention, moe_forward, batch_attention=batch_attention)
