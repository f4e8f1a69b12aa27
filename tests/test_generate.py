"""Cached decoding against full forward passes, prefix reuse, and the KV cache's bookkeeping."""

import pytest
import torch
from conftest import GEOMETRIES

import gptoss_lite
from gptoss_lite.engine.generate import check_fits
from gptoss_lite.model.cache import KVCache


@pytest.fixture(scope="module")
def runner(checkpoint):
    return gptoss_lite.load(checkpoint("g1"), device="cpu", dtype=torch.float32, context=96)


def test_greedy_decode_equals_argmax_of_full_forwards(runner):
    window = GEOMETRIES["g1"].sliding_window
    ids = [5, 17, 300, 42, 7]
    n_new = 3 * window  # well past the window, so the ring buffer wraps several times
    generated = list(runner.generate(ids, max_new_tokens=n_new, temperature=0))
    assert len(generated) == n_new
    sequence = ids + generated
    full = runner.logits(sequence)  # one uncached pass over everything
    expected = full[len(ids) - 1 : -1].argmax(-1).tolist()
    assert generated == expected


def test_cached_step_logits_match_the_full_pass(runner):
    ids = list(range(10, 10 + 30))
    full = runner.logits(ids)
    runner.logits(ids[:20])
    steps = [runner.model(torch.tensor([t]), runner.cache)[0] for t in ids[20:]]
    # Float32: the cached path sums attention over one query at a time instead of a block;
    # the difference is summation order, ~1e-6 relative.
    torch.testing.assert_close(torch.stack(steps), full[20:], rtol=0, atol=1e-4)


def test_seed_reproduces_and_stop_token_ends(runner):
    ids = [1, 2, 3]
    a = list(runner.generate(ids, max_new_tokens=20, temperature=1.0, seed=3))
    b = list(runner.generate(ids, max_new_tokens=20, temperature=1.0, seed=3))
    assert a == b
    stop = a[4]
    c = list(runner.generate(ids, max_new_tokens=20, temperature=1.0, seed=3, stop=[stop]))
    assert c == a[: a.index(stop) + 1]


def test_one_sampling_object_or_its_fields_as_keywords(runner):
    ids = [1, 2, 3]
    sampling = gptoss_lite.Sampling(max_new_tokens=6, temperature=0.8, top_k=50, seed=5)
    by_object = list(runner.generate(ids, sampling))
    assert by_object == list(
        runner.generate(ids, max_new_tokens=6, temperature=0.8, top_k=50, seed=5)
    )
    assert len(by_object) == 6
    greedy = list(runner.generate(ids, sampling, temperature=0))  # a keyword replaces a field
    assert greedy == list(runner.generate(ids, max_new_tokens=6, temperature=0))
    with pytest.raises(gptoss_lite.GptossError, match=r"\+ 256 new tokens exceed"):
        runner.generate(ids)  # by default 256 new tokens, more than this context holds
    with pytest.raises(TypeError, match="temprature"):
        runner.generate(ids, temprature=0)  # a misspelt field is not silently dropped


def test_one_model_options_object_or_its_fields_as_keywords(checkpoint):
    options = gptoss_lite.ModelOptions(device="cpu", dtype=torch.float32, context=64)
    ids = list(range(5, 25))
    by_object = gptoss_lite.load(checkpoint("g1"), options)
    assert by_object.context == 64 and by_object.plan.kv_cache_dtype.k == "bf16"
    by_keywords = gptoss_lite.load(checkpoint("g1"), device="cpu", dtype=torch.float32, context=64)
    assert torch.equal(by_object.logits(ids), by_keywords.logits(ids))
    q8 = gptoss_lite.load(checkpoint("g1"), options, kv_cache_dtype="q8")  # replaces a field
    assert q8.context == 64 and q8.plan.kv_cache_dtype.k == "q8"
    with pytest.raises(TypeError, match="contxt"):
        gptoss_lite.load(checkpoint("g1"), options, contxt=64)


def test_extending_the_conversation_reuses_the_cache(runner):
    ids = [9, 8, 7, 6]
    first = list(runner.generate(ids, max_new_tokens=6, temperature=0))
    assert runner.cached == ids + first[:-1]
    follow = ids + first + [11, 12]
    reused = list(runner.generate(follow, max_new_tokens=5, temperature=0))
    fresh = runner.logits(follow)[-1].argmax().item()
    assert reused[0] == fresh


def test_prompt_longer_than_context_is_refused(runner):
    with pytest.raises(gptoss_lite.GptossError, match="context of 96 tokens"):
        list(runner.generate(list(range(90)), max_new_tokens=10))


def test_cache_sizes_and_ring(checkpoint):
    config = GEOMETRIES["g1"]
    cache = KVCache(config, 100, dtype=torch.bfloat16)
    per_token_layer = 2 * config.num_kv_heads * config.head_dim * 2  # k and v, bf16
    full, sliding = config.num_full_layers, config.num_sliding_layers
    assert cache.nbytes == per_token_layer * (100 * full + config.sliding_window * sliding)
    assert cache.capacity == 100
    bigger = KVCache(config, 100, ring_slots=20)
    assert bigger.can_rewind_to(0)
    bigger.length = 30
    assert bigger.can_rewind_to(18) and not bigger.can_rewind_to(17)


def test_the_context_fit_rule():
    assert check_fits(10, None, 96) == 86  # all the room left
    assert check_fits(10, 86, 96) == 86  # exactly full
    with pytest.raises(gptoss_lite.GptossError, match=r"prompt \(10 tokens\) \+ 87 new tokens"):
        check_fits(10, 87, 96)
    with pytest.raises(gptoss_lite.GptossError, match="the prompt is 96 tokens but the context"):
        check_fits(96, None, 96)
    with pytest.raises(gptoss_lite.GptossError, match="the prompt is empty"):
        check_fits(0, 5, 96)


def test_a_larger_ring_attends_over_the_window_only(checkpoint, monkeypatch):
    # A chat-sized ring holds far more slots than the window; the sliding layers must read just
    # the window's keys from it (speed) and get the logits a window-sized ring gives (values).
    config = GEOMETRIES["g1"]
    window = config.sliding_window
    ids = list(range(3, 3 + 4 * window + 5))  # wraps the window-sized ring several times
    plain = gptoss_lite.load(checkpoint("g1"), device="cpu", dtype=torch.float32, context=96)
    wide = gptoss_lite.load(
        checkpoint("g1"), device="cpu", dtype=torch.float32, context=96, ring_slots=window + 37
    )
    sliding_keys = []
    for attn in wide.model.attn:
        if attn.window is not None:
            real = attn.attend

            def recording(q, k, *rest, real=real):
                sliding_keys.append((q.shape[0], k.shape[0]))
                return real(q, k, *rest)

            monkeypatch.setattr(attn, "attend", recording)
    for runner in (plain, wide):
        runner.logits(ids[:11])  # a prefill chunk, then one token at a time
    steps = {
        id(r): torch.stack([r.model(torch.tensor([t]), r.cache)[0] for t in ids[11:]])
        for r in (plain, wide)
    }
    # Float32, the same keys in another order within the block: summation order only.
    torch.testing.assert_close(steps[id(wide)], steps[id(plain)], rtol=0, atol=1e-5)
    assert sliding_keys and all(keys == window - 1 + new for new, keys in sliding_keys)
