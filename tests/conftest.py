"""Shared fixtures: tiny random checkpoints in the published layouts (and the scripted one of
tests/scripted_model.py), written once per session.

Without a CUDA device the Triton kernels are tested on CPU under Triton's interpreter, which must
be on before Triton is first imported (its standard library is jit code decorated then): it is
switched on here, before any test module is collected, so no collection order can skip them.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from gptoss_lite.config import ModelConfig

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise pytest.UsageError("triton was imported before TRITON_INTERPRET=1 could be set")
    os.environ["TRITON_INTERPRET"] = "1"

pytest_plugins = ["vocab"]  # o200k vocabulary fixtures (tests/vocab.py)

# Tiny geometries that differ from gpt-oss-20b in every dimension the code must not hard-code:
# odd layer counts, experts_per_token != 4, GQA groups of 1, 4 and 8, intermediate != hidden,
# windows far shorter than the test prompts, a non-alternating layer pattern.
GEOMETRIES = {
    "g1": ModelConfig(
        num_layers=3,
        num_experts=8,
        experts_per_token=2,
        vocab_size=512,
        hidden_size=64,
        intermediate_size=96,
        head_dim=16,
        num_heads=8,
        num_kv_heads=2,
        sliding_window=8,
        rope_original_context=4096,
        max_context=1024,
        name="g1",
    ),
    "g2": ModelConfig(
        num_layers=2,
        num_experts=4,
        experts_per_token=3,
        vocab_size=384,
        hidden_size=96,
        intermediate_size=64,
        head_dim=32,
        num_heads=4,
        num_kv_heads=4,
        sliding_window=5,
        rope_original_context=4096,
        max_context=1024,
        name="g2",
    ),
    "g3": ModelConfig(
        num_layers=5,
        num_experts=6,
        experts_per_token=1,
        vocab_size=300,
        hidden_size=64,
        intermediate_size=32,
        head_dim=8,
        num_heads=16,
        num_kv_heads=2,
        sliding_window=16,
        layer_types=(
            "full_attention",
            "sliding_attention",
            "sliding_attention",
            "full_attention",
            "sliding_attention",
        ),
        rope_original_context=4096,
        max_context=1024,
        name="g3",
    ),
}


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """`checkpoint(geometry, layout="hf", shards=1, seed=0)` → path of a written checkpoint."""
    from gptoss_lite.checkpoint.synthetic import write_synthetic

    made = {}

    def make(geometry: str, layout: str = "hf", shards: int = 1, seed: int = 0):
        key = (geometry, layout, shards, seed)
        if key not in made:
            folder = tmp_path_factory.mktemp(f"{geometry}-{layout}-{shards}")
            made[key] = write_synthetic(
                folder / "ckpt", GEOMETRIES[geometry], seed=seed, layout=layout, shards=shards
            )
        return made[key]

    return make


@pytest.fixture(scope="session")
def scripted_model(tmp_path_factory, o200k_tokenizer):
    """The folder of a scripted checkpoint (tests/scripted_model.py), written once."""
    from scripted_model import write_scripted

    return write_scripted(tmp_path_factory.mktemp("scripted") / "ckpt", o200k_tokenizer)
