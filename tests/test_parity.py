"""Parity with HF transformers on tiny random checkpoints of the published layout.

The checkpoints are written by `gptoss-lite synth` with the published names, dtypes, MXFP4
packing and index; transformers' GptOssForCausalLM reads the same files with its own loader and
MXFP4 decoder and serves as the independent reference.
"""

import pytest
import torch
from conftest import GEOMETRIES
from hf_reference import hf_logits

import gptoss_lite

# Float32 on both sides; the remaining differences come from summation order (online vs direct
# softmax, fp32 expert accumulation) and stay around 1e-5 for logits of magnitude ~10.
LOGIT_ATOL = 1e-3


def prompt(geometry: str, length: int = 41) -> list[int]:
    vocab = GEOMETRIES[geometry].vocab_size
    g = torch.Generator().manual_seed(length)
    return torch.randint(0, vocab, (length,), generator=g).tolist()


@pytest.mark.parametrize(("geometry", "shards"), [("g1", 1), ("g2", 3), ("g3", 2)])
def test_logits_match_transformers(checkpoint, geometry, shards):
    folder = checkpoint(geometry, shards=shards)
    ids = prompt(geometry)  # 41 tokens: longer than every geometry's window
    runner = gptoss_lite.load(folder, device="cpu", dtype=torch.float32, context=64)
    ours = runner.logits(ids)
    ref = hf_logits(folder, ids)
    assert ours.shape == ref.shape == (len(ids), GEOMETRIES[geometry].vocab_size)
    assert (ours - ref).abs().max().item() <= LOGIT_ATOL
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


# The original config format has no layer_types (it always alternates), so g3 cannot be written.
@pytest.mark.parametrize("geometry", ["g1", "g2"])
def test_original_layout_gives_the_same_logits(checkpoint, geometry):
    ids = prompt(geometry)
    hf = gptoss_lite.load(checkpoint(geometry), device="cpu", dtype=torch.float32, context=64)
    original = gptoss_lite.load(
        checkpoint(geometry, layout="original"), device="cpu", dtype=torch.float32, context=64
    )
    assert original.model is not hf.model
    # Same bytes, same code path after loading: identical results.
    assert torch.equal(original.logits(ids), hf.logits(ids))


def test_chunked_prefill_matches_one_pass(checkpoint):
    ids = prompt("g1", 50)
    runner = gptoss_lite.load(checkpoint("g1"), device="cpu", dtype=torch.float32, context=64)
    whole = runner.logits(ids)
    runner.prefill_chunk = 7  # chunks that straddle the 8-token window
    # Chunks change only the float32 summation order of attention.
    torch.testing.assert_close(runner.logits(ids), whole, rtol=0, atol=1e-4)
