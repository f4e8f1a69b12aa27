"""The compiled whole-model decode step (kernels/cpu/decode_step.c) against the per-operation
path it replaces and against HF transformers, on every instruction set this CPU has.

In fp32 the step and the per-operation path round nothing differently: they differ only in the
order some fp32 sums run (norms, attention scores, softmax denominators), so logits of magnitude
~5 agree to a few 1e-6, and 1e-4 leaves room for a near-tied routing decision. Both paths are
fed the same tokens (those the per-operation path picks greedily), so a difference cannot
compound through a different next token.
"""

from __future__ import annotations

import pytest
import torch
from conftest import GEOMETRIES
from hf_reference import hf_logits

import gptoss_lite
from gptoss_lite.engine.generate import prefill
from gptoss_lite.kernels import cpu
from gptoss_lite.kernels.cpu import decode
from gptoss_lite.model.cache import KVCache
from gptoss_lite.model.moe import route

pytestmark = pytest.mark.skipif(not cpu.available(), reason="no C compiler for the CPU kernels")
ISAS = cpu.ISAS[: cpu.ISAS.index(cpu.best_isa()) + 1] if cpu.available() else ()
LOGIT_ATOL = 1e-3  # as the parity tests of the prompt path (test_parity.py)


def prompt(geometry: str, length: int = 12) -> list[int]:
    g = torch.Generator().manual_seed(length)
    return torch.randint(0, GEOMETRIES[geometry].vocab_size, (length,), generator=g).tolist()


def step_logits(runner, ids: list[int], tokens: list[int], fused: bool) -> torch.Tensor:
    """Logits [len(tokens), V] of decoding `tokens` one at a time after prefilling `ids`."""
    model, cache = runner.model, runner.cache
    model.fused_step = decode.decode_step if fused else None
    cache.rewind(0)
    with torch.inference_mode():
        prefill(model, cache, torch.tensor(ids))
        return torch.cat([model(torch.tensor([t]), cache, last_only=True) for t in tokens])


def greedy(runner, ids: list[int], steps: int) -> list[int]:
    return list(runner.generate(ids, max_new_tokens=steps, temperature=0))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("geometry", ["g1", "g2", "g3"])
def test_step_matches_the_per_operation_path(checkpoint, geometry, isa, monkeypatch):
    monkeypatch.setattr(cpu, "best_isa", lambda: isa)
    runner = gptoss_lite.load(checkpoint(geometry), device="cpu", dtype=torch.float32, context=64)
    ids = prompt(geometry)
    # Past three windows: every sliding layer's ring wraps around.
    tokens = greedy(runner, ids, 3 * GEOMETRIES[geometry].sliding_window + 2)
    ours = step_logits(runner, ids, tokens, fused=True)
    ref = step_logits(runner, ids, tokens, fused=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("geometry", ["g1", "g3"])
def test_step_matches_transformers(checkpoint, geometry):
    folder = checkpoint(geometry)
    runner = gptoss_lite.load(folder, device="cpu", dtype=torch.float32, context=64)
    ids = prompt(geometry)
    tokens = greedy(runner, ids, 2 * GEOMETRIES[geometry].sliding_window + 1)
    ours = step_logits(runner, ids, tokens, fused=True)
    # HF's logits at the positions whose next token the steps predict.
    ref = hf_logits(folder, ids + tokens)[len(ids) : len(ids) + len(tokens)]
    assert (ours - ref).abs().max().item() <= LOGIT_ATOL
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("isa", ISAS)
def test_a_token_gets_the_same_bits_whatever_shares_the_step(checkpoint, isa, monkeypatch):
    # Nine sequences (more than the eight inputs a kernel pass takes) at their own positions,
    # some past the sliding window: each row equals that token stepped alone, bit for bit.
    monkeypatch.setattr(cpu, "best_isa", lambda: isa)
    runner = gptoss_lite.load(checkpoint("g1"), device="cpu", context=64)
    model, config = runner.model, runner.config
    lengths = (3, 12, 7, 20, 1, 9, 15, 4, 11)
    together = [KVCache(config, 64) for _ in lengths]
    alone = [KVCache(config, 64) for _ in lengths]
    with torch.inference_mode():
        for n, a, b in zip(lengths, together, alone, strict=True):
            for cache in (a, b):
                prefill(model, cache, torch.tensor(prompt("g1", n)))
        for token in (5, 300):
            rows = model.decode(torch.tensor([token] * len(lengths)), together)
            for i, cache in enumerate(alone):
                assert torch.equal(rows[i : i + 1], model(torch.tensor([token]), cache, True))


def test_bf16_step_gives_the_per_operation_logits(checkpoint):
    # bf16 activations are rounded at the same points on both paths, and the dense and expert
    # sums run in the same order; only norms and attention sum in another fp32 order, which
    # moves a bf16 value by one unit (2**-8 relative) only where it lay on a rounding boundary.
    runner = gptoss_lite.load(checkpoint("g1"), device="cpu", dtype=torch.bfloat16, context=64)
    ids = prompt("g1")
    tokens = greedy(runner, ids, 20)
    ours = step_logits(runner, ids, tokens, fused=True)
    ref = step_logits(runner, ids, tokens, fused=False)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))
    assert (ours - ref).abs().max().item() <= 2**-8 * ref.abs().max().item()


@pytest.mark.skipif("avx512bf16" not in ISAS, reason="this CPU has no AVX-512 BF16 and VBMI")
def test_bf16_step_gives_the_same_bits_where_the_cpu_multiplies_bf16_pairs(checkpoint, monkeypatch):
    # The experts' gate_up reads bf16 inputs with the bf16 pair product on that instruction
    # set: the same sums as the fp32 kernels of plain AVX-512, so the same logits, bit for bit.
    runner = gptoss_lite.load(checkpoint("g1"), device="cpu", dtype=torch.bfloat16, context=64)
    ids = prompt("g1")
    tokens = greedy(runner, ids, 20)
    logits = []
    for isa in ("avx512", "avx512bf16"):
        monkeypatch.setattr(cpu, "best_isa", lambda isa=isa: isa)
        logits.append(step_logits(runner, ids, tokens, fused=True))
    assert torch.equal(*logits)


def test_equal_router_logits_pick_the_lower_expert_ids(checkpoint):
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.5, 3.0]])
    ids, weights = route(logits, torch.eye(5), torch.zeros(5), 2)  # the router is the identity
    assert ids.tolist() == [[1, 2]]
    torch.testing.assert_close(weights, torch.tensor([[0.5, 0.5]]))
    # A router of zeros ties every expert in every layer: both paths must take experts 0..k-1.
    runner = gptoss_lite.load(checkpoint("g1"), device="cpu", dtype=torch.float32, context=64)
    for block in runner.model.mlp:
        block.router_weight.zero_()
        block.router_bias.zero_()
    ids = prompt("g1")
    tokens = greedy(runner, ids, 6)
    ours = step_logits(runner, ids, tokens, fused=True)
    torch.testing.assert_close(
        ours, step_logits(runner, ids, tokens, fused=False), rtol=0, atol=1e-4
    )


def test_the_step_steps_aside_where_it_does_not_apply(checkpoint, monkeypatch):
    monkeypatch.setattr(decode, "_plan", lambda *a: pytest.fail("the compiled step ran"))
    folder = checkpoint("g1")
    quantized = gptoss_lite.load(folder, device="cpu", context=64, kv_cache_dtype="q8")
    half = gptoss_lite.load(folder, device="cpu", dtype=torch.float16, context=64)
    for runner in (quantized, half):
        assert len(greedy(runner, prompt("g1"), 3)) == 3  # the per-operation path ran


def test_the_step_times_its_parts(checkpoint):
    runner = gptoss_lite.load(checkpoint("g1"), device="cpu", context=64)
    with decode.phase_times() as times:
        greedy(runner, prompt("g1"), 4)
    assert set(times) == set(decode.PHASES)
    parts = sum(v for k, v in times.items() if k != "all")
    assert all(v >= 0 for v in times.values()) and 0 < parts <= times["all"]
    with decode.phase_times() as idle:
        pass
    assert set(idle.values()) == {0.0}
