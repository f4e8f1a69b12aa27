"""Which memory category each model parameter belongs to: one table for plan, report and bench.

The planner predicts bytes per category, the memory report measures the loaded parameters per
category and bench counts the bytes a decode step reads per category, all through this table.
It is keyed by the parameter's own name in `model/transformer.py` (the last part of the dotted
name: `attn.3.qkv_weight` → `qkv_weight`); the experts' names are `PackedExperts`' fields.
"""

from __future__ import annotations

from dataclasses import fields

from ..model.moe import PackedExperts

# Category → how tables label it, in the order tables list them.
CATEGORIES = {
    "experts": "experts (MXFP4 + bias)",
    "attention": "attention (+ sinks)",
    "router": "router",
    "norms": "norms (fp32)",
    "embedding": "embedding",
    "lm_head": "lm_head",
}
PARAMETER_CATEGORY = {
    "embedding": "embedding",
    "unembedding": "lm_head",
    "norm": "norms",  # attn.N.norm, mlp.N.norm and the final norm
    **dict.fromkeys(("qkv_weight", "qkv_bias", "sinks", "out_weight", "out_bias"), "attention"),
    **dict.fromkeys(("router_weight", "router_bias"), "router"),
    **dict.fromkeys((f.name for f in fields(PackedExperts)), "experts"),
}


def category_of(parameter: str) -> str:
    """The memory category of a model parameter, by its dotted name."""
    return PARAMETER_CATEGORY[parameter.rpartition(".")[2]]
