"""Triton kernels vs their torch references: MXFP4 decode, fused MoE (decode, prefill), attention.

Without a GPU the kernels run on CPU under the Triton interpreter, which `conftest.py` switches on
before anything imports Triton; were it not in effect, this module fails to import rather than skip.
Tolerances: the kernels accumulate in fp32 in another order than torch, so fp32 results agree to
~1e-6 relative; bf16 outputs may differ by one bf16 rounding (2**-8 relative) and the prefill path
rounds its matmul operands (the SwiGLU output) to bf16, ~2**-9 relative per term.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")  # the [test] extra installs it on Linux x86_64

from gptoss_lite.kernels import attention_triton as attn  # noqa: E402
from gptoss_lite.kernels import moe_triton as moe  # noqa: E402
from gptoss_lite.kernels import triton_available  # noqa: E402
from gptoss_lite.model.kv_quant import KVDtypes, Quantized, quantize  # noqa: E402
from gptoss_lite.model.moe import PackedExperts  # noqa: E402
from gptoss_lite.model.mxfp4 import dequantize  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
LIMIT, ALPHA = 7.0, 1.702
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
pytestmark = pytest.mark.slow  # about a minute under the interpreter on 2 cores

if not CUDA:
    from triton.runtime.interpreter import InterpretedFunction

    # Triton's standard library is jit code: without the interpreter it cannot run on CPU.
    assert isinstance(triton.language.sum, InterpretedFunction), "imported without the interpreter"


def test_triton_available_follows_the_interpreter_switch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_available()
    monkeypatch.delenv("TRITON_INTERPRET")
    assert triton_available() == CUDA


# ------------------------------------------------------------------ MXFP4 decode


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_tile_is_bit_exact(dtype):
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (2, 40, 5, 16), dtype=torch.uint8, generator=gen)
    scales = (torch.arange(400) % 256).to(torch.uint8).reshape(2, 40, 5)  # every E8M0 value
    if dtype == torch.bfloat16 and DEVICE == "cpu":
        scales = scales.clamp(min=2)  # the interpreter flushes bf16 subnormals (s = 0, 1) to zero
    ref = dequantize(blocks, scales, dtype)  # ragged tiles: 40 rows of 80 bytes
    out = moe.mxfp4_dequantize(blocks.to(DEVICE), scales.to(DEVICE), dtype).cpu()
    nan = ref.isnan()  # 0·2**128 (scale 255): NaN, whose bits differ by platform
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert nan.any() and torch.equal(out.isnan(), nan)
    assert torch.equal(out[~nan].view(bits), ref[~nan].view(bits))


# ------------------------------------------------------------------ MoE


def _experts(
    num_experts: int, hidden: int, inter: int, device: str, seed: int = 0
) -> PackedExperts:
    """Random packed experts; scales 2**-6..2**-3 keep the activations in the SwiGLU's range."""
    gen = torch.Generator().manual_seed(seed)

    def packed(rows: int, cols: int):
        blocks = torch.randint(
            0, 256, (num_experts, rows, cols // 32, 16), dtype=torch.uint8, generator=gen
        )
        scales = torch.randint(
            121, 125, (num_experts, rows, cols // 32), dtype=torch.uint8, generator=gen
        )
        return blocks.to(device), scales.to(device)

    gate_up_blocks, gate_up_scales = packed(2 * inter, hidden)
    down_blocks, down_scales = packed(hidden, inter)
    gate_up_bias = torch.randn(num_experts, 2 * inter, generator=gen).bfloat16().to(device)
    down_bias = torch.randn(num_experts, hidden, generator=gen).bfloat16().to(device)
    return PackedExperts(
        gate_up_blocks, gate_up_scales, gate_up_bias, down_blocks, down_scales, down_bias
    )


def _routing(tokens: int, k: int, num_experts: int, shared: int, seed: int = 0):
    """Distinct experts per token, expert `shared` in every token; softmax weights."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(tokens):
        others = [e for e in torch.randperm(num_experts, generator=gen).tolist() if e != shared]
        rows.append([shared, *others[: k - 1]])
    weight = torch.randn(tokens, k, generator=gen).softmax(-1).bfloat16()
    return torch.tensor(rows), weight


def _run(fn, x, idx, weight, experts):
    return fn(x, idx, weight, experts, ALPHA, LIMIT)


def _assert_close_scaled(out, ref, rel):
    """max |out - ref| <= rel · max |ref|: matmul errors scale with the largest outputs."""
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= rel * ref.float().abs().max().item(), err


@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_moe_decode_matches_reference(tokens, k):
    dev = DEVICE
    experts = _experts(6, 64, 96, dev)
    idx, weight = _routing(tokens, k, 6, shared=2, seed=tokens * 10 + k)
    x = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(k))
    args = (idx.to(dev), weight.to(dev), experts)
    ref = _run(moe.moe_forward_reference, x.to(dev), *args)
    _assert_close_scaled(_run(moe.moe_decode, x.to(dev), *args), ref, 1e-5)  # fp32 path
    xb = x.bfloat16().to(dev)
    ref_b = _run(moe.moe_forward_reference, xb, *args)
    out_b = _run(moe.moe_forward, xb, *args)  # T <= DECODE_MAX_TOKENS: the decode kernels
    torch.testing.assert_close(out_b.float(), ref_b.float(), rtol=2**-7, atol=1e-3)


def test_tile_schedule_by_hand():
    idx = torch.tensor([[2, 0], [2, 0], [0, 2], [2, 2]])  # expert 0: 3 pairs, 1: none, 2: 5
    pairs, sched = moe._tile_schedule(idx.to(DEVICE), 3, 2)
    assert pairs.tolist() == [1, 3, 4, 0, 2, 5, 6, 7]
    # (expert, first row, end row): 2 tiles for expert 0, 3 for expert 2, then room for
    # cdiv(8 pairs, 2) + 3 experts = 7 tiles in all, the last 2 empty
    assert sched[:5].tolist() == [[0, 0, 3], [0, 2, 3], [2, 3, 8], [2, 5, 8], [2, 7, 8]]
    assert sched.shape == (7, 3) and (sched[5:, 1] == sched[5:, 2]).all()


def test_moe_prefill_matches_reference():
    dev = DEVICE
    tokens, k, num_experts = 24, 4, 8
    experts = _experts(num_experts, 64, 64, dev, seed=1)
    t = torch.arange(tokens)
    # pairs per expert 0..7: 24 (two tiles of 16), 20, 4, 12, 12, 0 (empty), 21, 3
    idx = torch.stack([0 * t, 1 + (t >= 20), 3 + t % 2, torch.where(t % 8 > 0, 6, 7)], dim=1)
    weight = torch.rand(tokens, k, generator=torch.Generator().manual_seed(3)).softmax(-1)
    x = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(4)).bfloat16().to(dev)
    args = (x, idx.to(dev), weight.to(dev), experts)
    ref = _run(moe.moe_forward_reference, *args)
    out = moe.moe_prefill(*args, ALPHA, LIMIT, block_m=16)
    _assert_close_scaled(out, ref, 1e-2)
    _assert_close_scaled(_run(moe.moe_forward, *args), ref, 1e-2)  # T > 8: prefill


@pytest.mark.parametrize("path", ["moe_decode", "moe_prefill"])
@pytest.mark.parametrize(("gate_bias", "up_bias"), [(-30.0, 0.0), (30.0, 30.0), (30.0, -30.0)])
def test_moe_swiglu_clamps(path, gate_bias, up_bias):
    """Biases push gate/up past the limit: the gate is clamped above only, up both ways.
    With b2 = 0 a very negative gate makes the output tiny, so any lower gate clamp shows."""
    experts = _experts(4, 64, 64, DEVICE, seed=5)
    experts.gate_up_bias[:, 0::2] = gate_bias
    experts.gate_up_bias[:, 1::2] = up_bias
    experts.down_bias.zero_()
    idx, weight = _routing(12, 2, 4, shared=1, seed=6)
    x = torch.randn(12, 64, generator=torch.Generator().manual_seed(7)).bfloat16().to(DEVICE)
    args = (x, idx.to(DEVICE), weight.to(DEVICE), experts)
    _assert_close_scaled(
        _run(getattr(moe, path), *args), _run(moe.moe_forward_reference, *args), 1e-2
    )


def test_moe_forward_is_a_drop_in_for_the_model_path():
    """Same result as `gptoss_lite.model.moe.experts_forward` (fp32: both paths are exact-ish)."""
    from gptoss_lite.model.moe import experts_forward

    experts = _experts(8, 64, 96, DEVICE, seed=8)
    idx, weight = _routing(5, 4, 8, shared=3, seed=9)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(10)).to(DEVICE)
    idx, weight = idx.to(DEVICE), weight.float().to(DEVICE)
    ref = experts_forward(x, idx, weight, experts, ALPHA, LIMIT)
    out = moe.moe_forward(x, idx, weight, experts, ALPHA, LIMIT)
    _assert_close_scaled(out, ref, 1e-5)


# ------------------------------------------------------------------ attention


def _attention_case(tokens, keys, heads, kv_heads, dim=16, empty=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(tokens, heads, dim, generator=gen).bfloat16()
    k = torch.randn(keys, kv_heads, dim, generator=gen).bfloat16()
    v = torch.randn(keys, kv_heads, dim, generator=gen).bfloat16()
    sinks = torch.randn(heads, generator=gen).bfloat16()
    k_pos = torch.arange(keys)
    k_pos[:empty] = -1  # empty cache slots
    q_pos = torch.arange(keys - tokens, keys)  # the query chunk ends the sequence
    return q, k, v, sinks, q_pos, k_pos


def _check_attention(case, window):
    ref = attn.attention_reference(*case, window)
    out = attn.attention(*(t.to(DEVICE) for t in case), window).cpu()
    torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)  # p·V in bf16
    return out


@pytest.mark.parametrize("kv_heads", [8, 2, 1])  # GQA groups 1, 4, 8
@pytest.mark.parametrize("window", [None, 8])
@pytest.mark.parametrize(("tokens", "keys", "empty"), [(20, 20, 0), (7, 150, 5), (1, 150, 3)])
def test_attention_matches_reference(kv_heads, window, tokens, keys, empty):
    case = _attention_case(tokens, keys, 8, kv_heads, empty=empty, seed=tokens + kv_heads)
    _check_attention(case, window)


@pytest.mark.parametrize("window", [None, 8])
@pytest.mark.parametrize("tokens", [1, 7])
def test_attention_split_keys(monkeypatch, window, tokens):
    """Keys split across programs (as in decode): the partial states merge to the same result,
    also where a split holds no key visible to a row (the window leaves split 0 empty)."""
    monkeypatch.setattr(attn, "SPLIT_MIN_KEYS", attn.BLOCK_N)
    assert attn._key_splits(150, 2) == (128, 2)
    case = _attention_case(tokens, 150, 8, 2, empty=3, seed=tokens)
    _check_attention(case, window)


def test_key_splits_by_hand():
    # decode at 32k context on 8 kv heads: 32 splits of 1024 keys make 256 programs
    assert attn._key_splits(32768, 8) == (1024, 32)
    assert attn._key_splits(4096, 8) == (256, 16)  # at least SPLIT_MIN_KEYS keys per split
    assert attn._key_splits(129, 8) == (192, 1)  # a sliding layer's ring and one new key
    assert attn._key_splits(2000, 512) == (2048, 1)  # prefill fills the GPU without splits


def test_attention_fp32_is_tight():
    case = [t.float() if t.is_floating_point() else t for t in _attention_case(9, 90, 8, 2)]
    ref = attn.attention_reference(*case, 16)
    out = attn.attention(*(t.to(DEVICE) for t in case), 16).cpu()
    tol = 2e-3 if CUDA else 1e-5  # a GPU multiplies fp32 operands in tf32
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


def test_attention_ring_cache_and_blind_query():
    q, k, v, sinks, _, _ = _attention_case(2, 16, 8, 2)
    k_pos = torch.arange(4, 20).roll(4)  # a ring of 16 slots after 20 tokens: slot = pos % 16
    k_pos[10] = -1  # an empty slot inside the window
    q_pos = torch.tensor([3, 19])  # position 3 sees no key: all of 0..3 were overwritten
    out = _check_attention((q, k, v, sinks, q_pos, k_pos), 12)
    assert not out[0].any()  # only the sink, which has no value: the output is zero


def test_attention_is_a_drop_in_for_the_model_path():
    from gptoss_lite.model.attention import attention as model_attention

    case = _attention_case(6, 70, 8, 2, empty=2, seed=11)
    ref = model_attention(*case, 8, key_block=32)
    out = attn.attention(*(t.to(DEVICE) for t in case), 8).cpu()
    torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------ batched decode (varlen)


def _pool_case(window, kv="bf16", seed=0):
    """Three sequences in a pool, queried by rows in another order, each at its own position:
    a full layer's buffers (positions 0..p, some past p stale), or rings of 20 slots with a
    window of 8 that wraps (and one sequence too short to fill its window)."""
    gen = torch.Generator().manual_seed(seed)
    sequences, slots, heads, kv_heads, dim = 3, 150 if window is None else 20, 8, 2, 16
    k = torch.randn(sequences, slots, kv_heads, dim, generator=gen).bfloat16()
    v = torch.randn(sequences, slots, kv_heads, dim, generator=gen).bfloat16()
    q = torch.randn(3, heads, dim, generator=gen).bfloat16()
    sinks = torch.randn(heads, generator=gen).bfloat16()
    seq = torch.tensor([2, 0, 1])
    q_pos = torch.tensor([140, 5, 77]) if window is None else torch.tensor([40, 5, 77])
    if window is None:
        k_pos, first, lengths = torch.arange(slots), torch.zeros(3, dtype=torch.long), q_pos + 1
    else:
        k_pos = torch.full((sequences, slots), -1)
        for n, p in zip(seq.tolist(), q_pos.tolist(), strict=True):
            held = torch.arange(max(0, p - slots + 1), p + 1)
            k_pos[n, held % slots] = held
        first, lengths = (q_pos - window + 1) % slots, torch.full((3,), window)
    pair = KVDtypes.parse(kv)
    k, v = _pool_quantize(k, pair.k), _pool_quantize(v, pair.v)
    return q, k, v, sinks, q_pos, k_pos, seq, first, lengths, int(lengths.max())


def _pool_quantize(x, kind):
    """A pool [N, S, H, D] in the cache format `kind`, quantized one sequence at a time."""
    if kind == "bf16":
        return x
    parts = [quantize(row, kind) for row in x]
    return Quantized(torch.stack([p.codes for p in parts]), torch.stack([p.scales for p in parts]))


@pytest.mark.parametrize("window", [None, 8])
@pytest.mark.parametrize("kv", ["bf16", "q8,fp8"])
def test_batch_attention_matches_reference(monkeypatch, window, kv):
    """Each row reads its own sequence's keys, from its own first slot for its own count; keys
    split across programs, a short sequence leaving its later splits empty."""
    monkeypatch.setattr(attn, "SPLIT_MIN_KEYS", attn.BLOCK_N)
    case = _pool_case(window, kv, seed=3)
    ref = attn.batch_attention_reference(*case, window)
    moved = [t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in case]
    if isinstance(case[1], Quantized):
        moved[1], moved[2] = case[1].to(DEVICE), case[2].to(DEVICE)
    out = attn.batch_attention(*moved, window).cpu()
    torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)  # p·V in bf16


def test_batch_attention_rows_equal_single_sequence_attention():
    """A row of the batch is the single-sequence kernel over that sequence's keys."""
    q, k, v, sinks, q_pos, k_pos, seq, first, lengths, most = _pool_case(None, seed=4)
    out = attn.batch_attention(q, k, v, sinks, q_pos, k_pos, seq, first, lengths, most, None)
    for b in range(3):
        n, p = int(seq[b]), int(q_pos[b])
        one = attn.attention(q[b : b + 1], k[n, : p + 1], v[n, : p + 1], sinks, q_pos[b : b + 1],
                             k_pos[: p + 1], None)  # fmt: skip
        torch.testing.assert_close(out[b : b + 1].float(), one.float(), rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------ quantized KV cache


@pytest.mark.parametrize("kv", ["q8", "fp8", "bf16,q8", "fp8,bf16"])
@pytest.mark.parametrize("window", [None, 8])
@pytest.mark.parametrize("tokens", [1, 7])
def test_attention_reads_a_quantized_cache(monkeypatch, kv, window, tokens):
    """Codes times scales in registers: the reference on the same cache (which dequantizes it
    whole), keys split across programs too."""
    monkeypatch.setattr(attn, "SPLIT_MIN_KEYS", attn.BLOCK_N)
    q, k, v, sinks, q_pos, k_pos = _attention_case(tokens, 150, 8, 2, dim=64, empty=3)
    pair = KVDtypes.parse(kv)
    case = (q, quantize(k, pair.k), quantize(v, pair.v), sinks, q_pos, k_pos)
    _check_attention(case, window)


def test_attention_decodes_every_e4m3_byte():
    """V holds every finite e4m3 code once (scale 1) and each query sees only its own key (a
    window of 1), so each output row is its V row times one weight: a byte decoded wrongly
    shows. The reference decodes with torch's own float8 type."""
    codes = torch.arange(256, dtype=torch.uint8)
    codes[[0x7F, 0xFF]] = 0  # the two NaN codes, which the cache never writes
    v = Quantized(codes.view(torch.float8_e4m3fn).view(4, 1, 64), torch.ones(4, 1, 1).half())
    q, k, _, sinks, _, _ = _attention_case(4, 4, 2, 1, dim=64)
    positions = torch.arange(4)
    out = _check_attention((q, k, v, sinks, positions, positions), 1)
    assert out.float().abs().amax() > 100  # the large codes came through


# ------------------------------------------------------------------ GPU, real gpt-oss-20b shapes


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("tokens", [1, 4, 300])
def test_moe_20b_shapes_gpu(tokens):
    experts = _experts(32, 2880, 2880, "cuda")
    idx = torch.rand(tokens, 32, device="cuda").topk(4).indices
    weight = torch.rand(tokens, 4, device="cuda").softmax(-1).bfloat16()
    x = torch.randn(tokens, 2880, device="cuda").bfloat16()
    ref = _run(moe.moe_forward_reference, x, idx, weight, experts)
    _assert_close_scaled(_run(moe.moe_forward, x, idx, weight, experts), ref, 1e-2)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("window", [None, 128])
@pytest.mark.parametrize(("tokens", "keys"), [(1, 4096), (1, 32768), (512, 1024)])
def test_attention_20b_shapes_gpu(window, tokens, keys):
    case = _attention_case(tokens, keys, 64, 8, dim=64)
    _check_attention(case, window)
