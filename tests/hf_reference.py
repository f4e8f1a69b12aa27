"""HF transformers as the independent reference: load a checkpoint folder, compute logits."""

from __future__ import annotations

import torch


def hf_logits(folder, token_ids: list[int]) -> torch.Tensor:
    """Float32 logits [T, V] from transformers' GptOssForCausalLM (MXFP4 dequantized on CPU)."""
    from transformers import GptOssForCausalLM, Mxfp4Config

    model = GptOssForCausalLM.from_pretrained(
        folder,
        quantization_config=Mxfp4Config(dequantize=True),
        dtype=torch.float32,
        attn_implementation="eager",
    )
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float()
