"""How a model is opened: one `ModelOptions` for the CLI's commands, the server and `load()`.

The fields are the choices a user makes (device, memory profile and budget, context, KV-cache
formats, experts kept in host RAM, activation dtype, kernels, sequences decoded together); what
they mean and how they are checked is `load`'s to say. The model itself (a folder or a Hub id)
is given apart, as what is opened rather than how.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..memory.profiles import Profile
from ..model.kv_quant import KVDtypes


@dataclass(frozen=True)
class ModelOptions:
    """How to open a model; None everywhere means the memory profile's choice (the profile
    itself: this machine's, or the cpu profile with a cpu `device`)."""

    device: str | torch.device | None = None  # cpu, cuda or cuda:N
    profile: str | Path | Profile | None = None  # a built-in name, a .toml file or "auto"
    budget: float | None = None  # GiB the run may use, replacing the profile's budget
    context: int | None = None  # tokens; default the largest that fits
    kv_cache_dtype: str | KVDtypes | None = None  # "q8", "bf16,q8", ...: K then V
    cpu_experts: int | str | None = None  # leading layers (or "all") with experts in host RAM
    dtype: torch.dtype | str | None = None  # activations and non-expert weights; default bf16
    kernels: str = "auto"  # "torch", "triton", "cpu", "cpu-q8" (not exact) or "auto"
    parallel: int | None = 1  # sequences with a KV cache each (None: as many as fit, up to 4)
