"""The published tensor names: the one table mapping the model's parameters to both layouts.

Inside the project every tensor has one name, the model's parameter name (`attn.3.qkv_weight`,
`mlp.3.gate_up_blocks`, …). Each row of `LAYER` / `GLOBAL` gives the checkpoint tensors a
parameter is made of in the Hugging Face layout and in OpenAI's `original/` layout, in the order
they are concatenated along the first axis: HF stores q, k and v apart, the original layout
stores the fused qkv the model uses. The loader, the synthetic writer (which derives its
original names from the HF ones through this table) and the dense-expert readers all use it.
"""

from __future__ import annotations

import re

LAYOUTS = ("hf", "original")
_HF = "model.layers.{n}."
_EXPERTS = _HF + "mlp.experts."

# parameter: (HF tensors, original tensors); {n} is the layer number.
LAYER = {
    "attn.{n}.norm": ((_HF + "input_layernorm.weight",), ("block.{n}.attn.norm.scale",)),
    "attn.{n}.qkv_weight": (
        tuple(f"{_HF}self_attn.{p}_proj.weight" for p in "qkv"),
        ("block.{n}.attn.qkv.weight",),
    ),
    "attn.{n}.qkv_bias": (
        tuple(f"{_HF}self_attn.{p}_proj.bias" for p in "qkv"),
        ("block.{n}.attn.qkv.bias",),
    ),
    "attn.{n}.sinks": ((_HF + "self_attn.sinks",), ("block.{n}.attn.sinks",)),
    "attn.{n}.out_weight": ((_HF + "self_attn.o_proj.weight",), ("block.{n}.attn.out.weight",)),
    "attn.{n}.out_bias": ((_HF + "self_attn.o_proj.bias",), ("block.{n}.attn.out.bias",)),
    "mlp.{n}.norm": ((_HF + "post_attention_layernorm.weight",), ("block.{n}.mlp.norm.scale",)),
    "mlp.{n}.router_weight": ((_HF + "mlp.router.weight",), ("block.{n}.mlp.gate.weight",)),
    "mlp.{n}.router_bias": ((_HF + "mlp.router.bias",), ("block.{n}.mlp.gate.bias",)),
    "mlp.{n}.gate_up_blocks": (
        (_EXPERTS + "gate_up_proj_blocks",),
        ("block.{n}.mlp.mlp1_weight.blocks",),
    ),
    "mlp.{n}.gate_up_scales": (
        (_EXPERTS + "gate_up_proj_scales",),
        ("block.{n}.mlp.mlp1_weight.scales",),
    ),
    "mlp.{n}.gate_up_bias": ((_EXPERTS + "gate_up_proj_bias",), ("block.{n}.mlp.mlp1_bias",)),
    "mlp.{n}.down_blocks": (
        (_EXPERTS + "down_proj_blocks",),
        ("block.{n}.mlp.mlp2_weight.blocks",),
    ),
    "mlp.{n}.down_scales": (
        (_EXPERTS + "down_proj_scales",),
        ("block.{n}.mlp.mlp2_weight.scales",),
    ),
    "mlp.{n}.down_bias": ((_EXPERTS + "down_proj_bias",), ("block.{n}.mlp.mlp2_bias",)),
}
GLOBAL = {
    "embedding": (("model.embed_tokens.weight",), ("embedding.weight",)),
    "norm": (("model.norm.weight",), ("norm.scale",)),
    "unembedding": (("lm_head.weight",), ("unembedding.weight",)),
}
# The dense `x @ W` expert weights of a HF checkpoint saved without quantization (a fine-tune);
# each becomes the `{name}_blocks` and `{name}_scales` of the rows above.
DENSE_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")


def layer_names(n: int) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """The rows of `LAYER` for layer `n`: parameter → (HF tensors, original tensors)."""
    return {
        param.format(n=n): tuple(tuple(s.format(n=n) for s in names) for names in pair)
        for param, pair in LAYER.items()
    }


def name_table(num_layers: int, layout: str) -> dict[str, tuple[str, ...]]:
    """Model parameter name → the checkpoint tensors it is made of, in order."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    column = LAYOUTS.index(layout)
    table = {param: names[column] for param, names in GLOBAL.items()}
    for n in range(num_layers):
        table |= {param: names[column] for param, names in layer_names(n).items()}
    return table
