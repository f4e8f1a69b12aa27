"""Attention with sinks: against a naive per-head formula, and at the sliding-window boundary."""

import math

import pytest
import torch

from gptoss_lite.model.attention import attention


def naive(q, k, v, sinks, q_pos, k_pos, window):
    """The reference's attention written out per query and head: the sink is one more logit
    with no value."""
    t, hq, d = q.shape
    group = hq // k.shape[1]
    out = torch.zeros(t, hq, d, dtype=torch.float64)
    for i in range(t):
        for h in range(hq):
            scores, values = [], []
            for j in range(k.shape[0]):
                p, qp = int(k_pos[j]), int(q_pos[i])
                if p < 0 or p > qp or (window is not None and p <= qp - window):
                    continue
                scores.append(float(q[i, h].double() @ k[j, h // group].double()) / math.sqrt(d))
                values.append(v[j, h // group].double())
            m = max([*scores, float(sinks[h])])
            denom = sum(math.exp(s - m) for s in scores) + math.exp(float(sinks[h]) - m)
            for s, val in zip(scores, values, strict=True):
                out[i, h] += math.exp(s - m) / denom * val
    return out


@pytest.mark.parametrize(("hq", "hkv"), [(4, 4), (8, 2), (8, 1)])
@pytest.mark.parametrize("window", [None, 3])
def test_matches_naive_formula(hq, hkv, window):
    g = torch.Generator().manual_seed(hq * 10 + hkv)
    t, s, d = 5, 9, 8
    q, k, v = (torch.randn(n, h, d, generator=g) for n, h in ((t, hq), (s, hkv), (s, hkv)))
    sinks = torch.randn(hq, generator=g)
    q_pos = torch.arange(4, 9)
    k_pos = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8])
    k_pos = k_pos[torch.randperm(s, generator=g)]  # slot order must not matter (ring buffer)
    got = attention(q, k, v, sinks, q_pos, k_pos, window, key_block=4)
    want = naive(q, k, v, sinks, q_pos, k_pos, window)
    # float32 online softmax vs float64 direct sum: differences are float32 rounding.
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_key_blocks_do_not_change_the_result():
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(7, 4, 8, generator=g),
        torch.randn(20, 2, 8, generator=g),
        torch.randn(20, 2, 8, generator=g),
    )
    args = (q, k, v, torch.randn(4, generator=g), torch.arange(13, 20), torch.arange(20), None)
    whole = attention(*args, key_block=1024)
    # Block-wise rescaling reorders float32 sums: a few ulps.
    torch.testing.assert_close(attention(*args, key_block=3), whole, rtol=1e-5, atol=1e-6)


def test_window_is_exactly_128_keys_including_the_query():
    # Values are one-hot per key position, so the output shows which keys were attended to.
    n, w = 300, 128
    q = torch.zeros(1, 1, n)
    k = torch.zeros(n, 1, n)
    v = torch.eye(n).view(n, 1, n)
    sinks = torch.tensor([-1e4])  # a negligible sink
    out = attention(q, k, v, sinks, torch.tensor([n - 1]), torch.arange(n), window=w)[0, 0]
    attended = (out > 0).nonzero().flatten()
    assert attended.tolist() == list(range(n - w, n))
    assert torch.allclose(out[attended], torch.full((w,), 1 / w))


def test_sink_takes_probability_mass_without_a_value():
    q, k, v = torch.zeros(1, 1, 4), torch.zeros(1, 1, 4), torch.ones(1, 1, 4)
    # A key and a sink, both with logit 0: the key gets weight 1/2, the sink's half is lost.
    out = attention(q, k, v, torch.zeros(1), torch.tensor([0]), torch.tensor([0]), None)
    assert torch.allclose(out, torch.full((1, 1, 4), 0.5))


def test_sink_is_not_scaled():
    # With sink = ln 3 unscaled, the key (logit 0) gets 1/(1+3); a scaled sink would give more.
    q, k, v = torch.zeros(1, 1, 64), torch.zeros(1, 1, 64), torch.ones(1, 1, 64)
    sink = torch.tensor([math.log(3)])
    out = attention(q, k, v, sink, torch.tensor([0]), torch.tensor([0]), None)
    assert math.isclose(out[0, 0, 0].item(), 0.25, rel_tol=1e-6)


def test_empty_slots_and_future_keys_are_masked():
    q = torch.randn(1, 2, 4)
    k, v = torch.randn(3, 1, 4), torch.randn(3, 1, 4)
    k_pos = torch.tensor([0, -1, 5])  # slot 1 empty, slot 2 in the future of query position 2
    out = attention(q, k, v, torch.zeros(2), torch.tensor([2]), k_pos, None)
    alone = attention(q, k[:1], v[:1], torch.zeros(2), torch.tensor([2]), k_pos[:1], None)
    torch.testing.assert_close(out, alone)
