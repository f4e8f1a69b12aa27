"""Filling the model from a checkpoint: one name table per layout, one loading loop.

`name_table(config, layout)` maps each model parameter to the checkpoint tensors it is made of
(several are concatenated along the first axis: HF's q_proj, k_proj and v_proj become the fused
qkv the model uses, which the original layout stores as is). `load_weights` reads each tensor
straight onto its device, checks its shape, and asserts that every parameter was filled and every
checkpoint tensor used. The MXFP4 expert blocks and scales stay uint8.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import GptossError
from .reader import Checkpoint

_HF_LAYER = {
    "attn.{n}.norm": ("model.layers.{n}.input_layernorm.weight",),
    "attn.{n}.qkv_weight": tuple(f"model.layers.{{n}}.self_attn.{p}_proj.weight" for p in "qkv"),
    "attn.{n}.qkv_bias": tuple(f"model.layers.{{n}}.self_attn.{p}_proj.bias" for p in "qkv"),
    "attn.{n}.sinks": ("model.layers.{n}.self_attn.sinks",),
    "attn.{n}.out_weight": ("model.layers.{n}.self_attn.o_proj.weight",),
    "attn.{n}.out_bias": ("model.layers.{n}.self_attn.o_proj.bias",),
    "mlp.{n}.norm": ("model.layers.{n}.post_attention_layernorm.weight",),
    "mlp.{n}.router_weight": ("model.layers.{n}.mlp.router.weight",),
    "mlp.{n}.router_bias": ("model.layers.{n}.mlp.router.bias",),
    "mlp.{n}.gate_up_blocks": ("model.layers.{n}.mlp.experts.gate_up_proj_blocks",),
    "mlp.{n}.gate_up_scales": ("model.layers.{n}.mlp.experts.gate_up_proj_scales",),
    "mlp.{n}.gate_up_bias": ("model.layers.{n}.mlp.experts.gate_up_proj_bias",),
    "mlp.{n}.down_blocks": ("model.layers.{n}.mlp.experts.down_proj_blocks",),
    "mlp.{n}.down_scales": ("model.layers.{n}.mlp.experts.down_proj_scales",),
    "mlp.{n}.down_bias": ("model.layers.{n}.mlp.experts.down_proj_bias",),
}
_HF_GLOBAL = {
    "embedding": ("model.embed_tokens.weight",),
    "norm": ("model.norm.weight",),
    "unembedding": ("lm_head.weight",),
}
_ORIGINAL_LAYER = {
    "attn.{n}.norm": ("block.{n}.attn.norm.scale",),
    "attn.{n}.qkv_weight": ("block.{n}.attn.qkv.weight",),
    "attn.{n}.qkv_bias": ("block.{n}.attn.qkv.bias",),
    "attn.{n}.sinks": ("block.{n}.attn.sinks",),
    "attn.{n}.out_weight": ("block.{n}.attn.out.weight",),
    "attn.{n}.out_bias": ("block.{n}.attn.out.bias",),
    "mlp.{n}.norm": ("block.{n}.mlp.norm.scale",),
    "mlp.{n}.router_weight": ("block.{n}.mlp.gate.weight",),
    "mlp.{n}.router_bias": ("block.{n}.mlp.gate.bias",),
    "mlp.{n}.gate_up_blocks": ("block.{n}.mlp.mlp1_weight.blocks",),
    "mlp.{n}.gate_up_scales": ("block.{n}.mlp.mlp1_weight.scales",),
    "mlp.{n}.gate_up_bias": ("block.{n}.mlp.mlp1_bias",),
    "mlp.{n}.down_blocks": ("block.{n}.mlp.mlp2_weight.blocks",),
    "mlp.{n}.down_scales": ("block.{n}.mlp.mlp2_weight.scales",),
    "mlp.{n}.down_bias": ("block.{n}.mlp.mlp2_bias",),
}
_ORIGINAL_GLOBAL = {
    "embedding": ("embedding.weight",),
    "norm": ("norm.scale",),
    "unembedding": ("unembedding.weight",),
}


def name_table(config: ModelConfig, layout: str) -> dict[str, tuple[str, ...]]:
    """Model parameter name → the checkpoint tensors it is made of, in order."""
    per_layer, global_ = (
        (_HF_LAYER, _HF_GLOBAL) if layout == "hf" else (_ORIGINAL_LAYER, _ORIGINAL_GLOBAL)
    )
    table = dict(global_)
    for n in range(config.num_layers):
        for param, sources in per_layer.items():
            table[param.format(n=n)] = tuple(s.format(n=n) for s in sources)
    return table


def load_weights(
    model: nn.Module,
    checkpoint: Checkpoint,
    device: torch.device | str,
    embedding_device: torch.device | str | None = None,
    host_parameters: Collection[str] = (),
) -> None:
    """Fill every parameter of `model` from `checkpoint`, reading straight onto `device` (the
    embedding onto `embedding_device`, `host_parameters` into host memory)."""
    table = name_table(model.config, checkpoint.layout)
    params = dict(model.named_parameters())
    if set(table) != set(params):
        raise AssertionError(f"name table and model disagree: {set(table) ^ set(params)}")
    used: set[str] = set()
    for param_name, sources in table.items():
        target = params[param_name]
        where = embedding_device if param_name == "embedding" and embedding_device else device
        if param_name in host_parameters:
            where = torch.device("cpu")
        tensor = _read(checkpoint, sources, where)
        if tuple(tensor.shape) != tuple(target.shape):
            raise GptossError(
                f"checkpoint tensor {' + '.join(sources)} has shape {tuple(tensor.shape)}, "
                f"the config expects {tuple(target.shape)}"
            )
        if (tensor.dtype == torch.uint8) != (target.dtype == torch.uint8):
            raise GptossError(
                f"checkpoint tensor {sources[0]} is {tensor.dtype}, expected {target.dtype}"
            )
        _assign(model, param_name, tensor.to(target.dtype))
        used.update(sources)
    unused = sorted(set(checkpoint.tensors) - used)
    if unused:
        raise GptossError(
            f"checkpoint tensor {unused[0]} is not used by the model "
            f"({len(unused)} unused; does config.json match the weights?)"
        )


def _read(checkpoint: Checkpoint, sources: tuple[str, ...], device) -> torch.Tensor:
    missing = [s for s in sources if s not in checkpoint]
    if missing:
        raise GptossError(f"checkpoint {checkpoint.folder} is missing tensor {missing[0]}")
    parts = [checkpoint.read(s, device) for s in sources]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    setattr(module, attr, nn.Parameter(tensor, requires_grad=False))
