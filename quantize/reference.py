"""The full-precision reference of `quant-error --model`: transformers' GptOssForCausalLM, float32.

The reference is an independent implementation (Hugging Face transformers, eager attention for
the sinks) reading the dense bf16 checkpoint as saved by `save_pretrained`, every weight upcast
to float32 and every activation in float32: a bug shared by the runner's paths cannot cancel out
of the comparison. `round_trip_experts` then replaces each expert weight in place by its MXFP4
round trip (the bytes `quantize` writes, decoded by the runner's `dequantize`), which gives the
cost of MXFP4 alone inside the reference, and a floor for the runner: the runner in float32 and
this model hold the same weights, so whatever separates them is implementation rounding.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gptoss_lite.errors import GptossError
from gptoss_lite.model.mxfp4 import dequantize

from .experts import PROJECTIONS, quantize_dense_experts

DESCRIPTION = "transformers GptOssForCausalLM, float32 weights and activations, dense bf16 experts"


def load_reference(folder: Path, device: torch.device) -> nn.Module:
    """transformers' GptOssForCausalLM of the dense checkpoint `folder`, in float32 on `device`."""
    try:
        from transformers import GptOssForCausalLM
    except ImportError:
        raise GptossError(
            "quant-error --model needs transformers for its reference: pip install transformers"
        ) from None
    model = GptOssForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    )
    return model.to(device).eval()


@torch.no_grad()
def reference_logits(model: nn.Module, sequences: torch.Tensor) -> torch.Tensor:
    """Float32 logits `[S, C, V]` on the CPU, one forward pass per sequence of `[S, C]`."""
    device = next(model.parameters()).device
    out = []
    for seq in sequences:
        logits = model(seq.view(1, -1).to(device), use_cache=False).logits  # (1, C, V)
        out.append(logits[0].float().cpu())
    return torch.stack(out)


@torch.no_grad()
def round_trip_experts(model: nn.Module) -> None:
    """Replace every expert weight of `model` in place by its MXFP4 round trip."""
    for layer in model.model.layers:
        experts = layer.mlp.experts  # gate_up_proj (E, H, 2I), down_proj (E, I, H): x @ W
        packed = quantize_dense_experts(experts.gate_up_proj, experts.down_proj)
        for name in PROJECTIONS:
            weight = getattr(experts, name)
            decoded = dequantize(packed[f"{name}_blocks"], packed[f"{name}_scales"], weight.dtype)
            weight.copy_(decoded.mT)  # blocks are [out, in]; the weight is [in, out]
