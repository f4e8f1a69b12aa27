"""Continuous batching at the Python API: each sequence of a batch gets exactly the tokens it gets
alone, whatever joins, leaves or is cancelled beside it; slots, chunking and the KV pool.

Exact mode is the compiled CPU kernels (bf16, the default, or fp32): they compute each row of a
projection or of the experts on its own, so a row's bits do not depend on the rows beside it."""

from __future__ import annotations

import pytest
import torch
from conftest import GEOMETRIES

import gptoss_lite
from gptoss_lite.engine.batch import Request
from gptoss_lite.engine.generate import prefill
from gptoss_lite.engine.sampling import Sampling
from gptoss_lite.engine.session import Generation
from gptoss_lite.model.cache import KVCache, KVPool

CHUNK = 8  # prefill chunk: the test prompts span several
CONTEXT = 160


@pytest.fixture(scope="module")
def runner(checkpoint):
    """A bf16 runner with four sequences on the compiled CPU kernels."""
    folder = checkpoint("g1")
    loaded = gptoss_lite.load(folder, device="cpu", context=CONTEXT, parallel=4, kernels="cpu")
    loaded.prefill_chunk = CHUNK
    return loaded


def _prompt(first: int, length: int) -> tuple[int, ...]:
    """A prompt of `length` tokens; distinct `first` tokens share no prefix."""
    return tuple((first + 37 * i) % GEOMETRIES["g1"].vocab_size for i in range(length))


def _alone(runner, request: Request) -> list[int]:
    """The request's tokens from `Runner.generate`: one sequence, nothing beside it."""
    return list(runner.generate(request.prompt, request.sampling, stop=request.stop))


def _run(batch, arrivals: dict[int, list[Request]], cancel: dict[int, int] | None = None):
    """Step the batch until all is done; `arrivals[step]` join before that step, and
    `cancel[step] = i` cancels the i-th request added before that step. Every request's tokens."""
    sequences, step = [], 0
    while step <= max(arrivals) or batch.running:
        for request in arrivals.get(step, []):
            sequences.append(batch.add(request))
        if cancel and step in cancel:
            batch.cancel(sequences[cancel[step]])
        for sequence in batch.step():
            assert sequence.finished or sequence.output
        step += 1
    return sequences


def test_decode_rows_are_computed_as_alone(runner):
    """`Transformer.decode` over four caches gives, bit for bit, each cache's own forward."""
    config, model = runner.config, runner.model
    pool = KVPool(config, 4, CONTEXT)
    caches = pool.caches()
    lengths = (5, 17, 30, 9)  # decode positions cross the sliding window (8) differently
    solo = []
    for length, cache in zip(lengths, caches, strict=True):
        alone = KVCache(config, CONTEXT)
        prefill(model, alone, torch.tensor(_prompt(length, length)), CHUNK)
        prefill(model, cache, torch.tensor(_prompt(length, length)), CHUNK)
        with torch.inference_mode():
            solo.append(torch.cat([model(torch.tensor([t]), alone, True) for t in (3, 9, 4)]))
    with torch.inference_mode():
        batched = [model.decode(torch.tensor([t] * 4), caches) for t in (3, 9, 4)]
    for i in range(4):
        assert torch.equal(torch.stack([b[i] for b in batched]), solo[i])
    assert [c.length for c in caches] == [n + 3 for n in lengths]


@pytest.mark.parametrize("kernels", ["cpu", "torch"])
def test_decode_rows_in_fp32(checkpoint, kernels):
    """fp32: the CPU kernels keep each row's bits (a few rows of an fp32 projection go one at a
    time); on the torch path they agree to fp32 rounding only, as torch rounds a row of a small
    matmul differently with other rows beside it."""
    runner = gptoss_lite.load(
        checkpoint("g1"), device="cpu", dtype=torch.float32, context=64, kernels=kernels
    )
    config, model = runner.config, runner.model
    caches = KVPool(config, 2, 64, dtype=torch.float32).caches()
    alone = [KVCache(config, 64, dtype=torch.float32) for _ in range(2)]
    for length, cache, solo in zip((4, 11), caches, alone, strict=True):
        for c in (cache, solo):
            prefill(model, c, torch.tensor(_prompt(length, length)))
    with torch.inference_mode():
        batched = model.decode(torch.tensor([7, 7]), caches)
        rows = torch.cat([model(torch.tensor([7]), c, True) for c in alone])
    if kernels == "cpu":
        assert torch.equal(batched, rows)
    else:  # fp32 sums of 64..96 products: another order moves the result by a few ulps
        torch.testing.assert_close(batched, rows, rtol=0, atol=1e-5)


def test_greedy_streams_joining_and_leaving_get_their_tokens_alone(runner):
    requests = [
        Request(_prompt(1, 21), Sampling(max_new_tokens=12, temperature=0)),
        Request(_prompt(2, 5), Sampling(max_new_tokens=4, temperature=0)),  # leaves early
        Request(_prompt(3, 13), Sampling(max_new_tokens=9, temperature=0)),
        Request(_prompt(4, 3), Sampling(max_new_tokens=15, temperature=0)),
        Request(_prompt(5, 30), Sampling(max_new_tokens=6, temperature=0)),  # waits for a free slot
    ]
    expected = [_alone(runner, r) for r in requests]
    batch = runner.batch()
    got = _run(batch, {0: requests[:2], 2: requests[2:3], 3: requests[3:4], 7: requests[4:]})
    assert [s.output for s in got] == expected
    assert all(s.finish_reason == "length" for s in got)


def test_seeded_sampling_stop_tokens_and_settings_are_per_request(runner):
    requests = [
        Request(_prompt(6, 9), Sampling(max_new_tokens=20, temperature=1.0, seed=11)),
        Request(_prompt(7, 14), Sampling(max_new_tokens=20, temperature=0.7, top_p=0.9, seed=12)),
        Request(_prompt(8, 4), Sampling(max_new_tokens=20, temperature=0)),
    ]
    free_run = [_alone(runner, r) for r in requests]
    stop = free_run[0][5]  # ends the first request at its sixth token, or earlier
    requests[0] = Request(
        requests[0].prompt,
        Sampling(max_new_tokens=20, temperature=1.0, seed=11),
        stop=frozenset({stop}),
    )
    expected = [_alone(runner, r) for r in requests]
    assert expected[0] == free_run[0][: free_run[0].index(stop) + 1]
    got = _run(runner.batch(), {0: requests[:1], 1: requests[1:]})
    assert [s.output for s in got] == expected
    assert [s.finish_reason for s in got] == ["stop", "length", "length"]


def test_logprobs_are_those_of_the_request_alone(runner):
    sampling = Sampling(max_new_tokens=6, temperature=0, logprobs=2)
    requests = [Request(_prompt(90 + i, 5 + 6 * i), sampling) for i in (0, 1)]
    alone = []
    for r in requests:
        generation = Generation(runner, list(r.prompt), r.sampling, ())
        list(generation)
        alone.append(generation.logprobs)
    got = _run(runner.batch(), {0: requests})
    assert [s.logprobs for s in got] == alone
    assert all(len(lp[0].top) == 2 for lp in alone)


class EvenTokens:
    """A token mask that allows the even ids only, and records what it was told."""

    def __init__(self) -> None:
        self.requested: list[int | None] = []

    def request(self, token: int | None) -> None:
        self.requested.append(token)

    def allowed(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.arange(logits.shape[-1]) % 2 == 0


def test_a_token_mask_holds_its_own_sequence_only(runner):
    """A masked request beside an unmasked one: each gets the tokens it gets alone, the mask is
    told the prompt then each token fed, as `Runner.generate` tells it."""
    sampling = Sampling(max_new_tokens=8, temperature=0)
    masked, free = (
        Request(_prompt(95, 7), sampling, mask=EvenTokens()),
        Request(_prompt(96, 9), sampling),
    )
    alone_mask = EvenTokens()
    alone = list(runner.generate(masked.prompt, sampling, mask=alone_mask))
    expected = [alone, _alone(runner, free)]
    got = _run(runner.batch(), {0: [masked, free]})
    assert [s.output for s in got] == expected
    assert all(token % 2 == 0 for token in got[0].output) and any(t % 2 for t in got[1].output)
    assert masked.mask.requested == alone_mask.requested == [None, *alone[:-1]]


def test_a_cancelled_sequence_leaves_and_the_others_go_on(runner):
    requests = [
        Request(_prompt(9 + i, 6 + 4 * i), Sampling(max_new_tokens=10, temperature=0))
        for i in range(4)
    ]
    expected = [_alone(runner, r) for r in requests]
    batch = runner.batch()
    got = _run(batch, {0: requests[:3], 6: requests[3:]}, cancel={4: 1})
    assert got[1].finish_reason == "interrupted" and 0 < len(got[1].output) < 10
    assert got[1].output == expected[1][: len(got[1].output)]
    assert [got[i].output for i in (0, 2, 3)] == [expected[i] for i in (0, 2, 3)]
    assert got[3].slot == 3  # a never-used slot before the one just left


def test_a_resent_history_lands_on_the_slot_that_holds_it(runner):
    batch = runner.batch()
    first = [
        batch.add(Request(_prompt(20 + i, 10), Sampling(max_new_tokens=4, temperature=0)))
        for i in range(3)
    ]
    while batch.running:
        batch.step()
    history = (*first[1].request.prompt, *first[1].output)
    again = batch.add(Request((*history, 5, 6), Sampling(max_new_tokens=3, temperature=0)))
    assert again.slot == first[1].slot
    assert again.stats.cached_tokens == len(history) - 1  # its last token was never fed
    unrelated = batch.add(Request(_prompt(40, 10), Sampling(max_new_tokens=3, temperature=0)))
    assert unrelated.slot == 3  # the never-used slot before any other's cache is overwritten
    while batch.running:
        batch.step()
    alone = _alone(runner, again.request)
    assert again.output == alone


def test_a_short_request_is_answered_while_a_long_prompt_prefills(runner, monkeypatch):
    """A step feeds at most one chunk's tokens of prompts, the shortest left first: the stall
    per step is one chunk, and a short request's first token does not wait for a long prompt's
    prefill (its 6 tokens and the long prompt's next 8 do not fit in one chunk together)."""
    fed, heads = [], []
    forward = type(runner.model).forward

    def counted(model, tokens, cache, last_only=False, logits=True):
        fed.append(tokens.numel())
        heads.append(logits)
        return forward(model, tokens, cache, last_only, logits)

    monkeypatch.setattr(type(runner.model), "forward", counted)
    batch = runner.batch()
    long = batch.add(Request(_prompt(50, 100), Sampling(max_new_tokens=2, temperature=0)))
    batch.step()
    short = batch.add(Request(_prompt(51, 6), Sampling(max_new_tokens=2, temperature=0)))
    steps = 1
    while not short.output:
        batch.step()
        steps += 1
    assert steps == 2 and long.prefilling  # one chunk of the long prompt, then the short one
    while batch.running:
        batch.step()
    assert max(fed) == CHUNK and sum(fed) == 100 + 6
    assert heads.count(True) == 2  # logits for each prompt's last chunk only


def test_short_prompts_arriving_together_are_prefilled_in_one_pass(runner, monkeypatch):
    """Prompts whose chunks fit in one chunk's tokens together all start in the next step, each
    fed in its own chunks (as alone), those of more than one token in one pass whose experts run
    once (`forward_parts`), and each gets the tokens it gets alone."""
    passes = []
    model = type(runner.model)
    forward, forward_parts = model.forward, model.forward_parts

    def counted(model, tokens, cache, last_only=False, logits=True):
        passes.append([tokens.numel()])
        return forward(model, tokens, cache, last_only, logits)

    def counted_parts(model, parts, caches, logits):
        passes.append([part.numel() for part in parts])
        return forward_parts(model, parts, caches, logits)

    requests = [
        Request(_prompt(60 + i, n), Sampling(max_new_tokens=3, temperature=0))
        for i, n in enumerate((3, 1, 2, 12))
    ]
    batch = runner.batch()
    monkeypatch.setattr(model, "forward", counted)
    monkeypatch.setattr(model, "forward_parts", counted_parts)
    sequences = [batch.add(r) for r in requests]
    batch.step()
    # 1 + 2 + 3 tokens fit in 8, the 12-token prompt's first 8 do not; the one-token chunk goes
    # alone (to the fused step, as it would alone)
    assert passes == [[2, 3], [1]]
    assert [bool(s.output) for s in sequences] == [True, True, True, False]
    batch.step()
    assert passes[2:] == [[8]]  # the next step: one full chunk of the long prompt alone
    while batch.running:
        batch.step()
    assert passes[2:] == [[8], [4]]
    monkeypatch.undo()
    assert [s.output for s in sequences] == [_alone(runner, r) for r in requests]


def test_prompt_chunks_in_one_pass_get_the_bits_they_get_alone(runner):
    """`Transformer.forward_parts` over three caches at different lengths (the sliding window,
    8, crossed differently) gives each part's logits, and leaves each cache, bit for bit as
    `forward` alone does."""
    config, model = runner.config, runner.model
    lengths, parts = (0, 12, 7), (5, 9, 3)
    caches = KVPool(config, 3, CONTEXT).caches()
    alone = [KVCache(config, CONTEXT) for _ in lengths]
    for n, cache, solo in zip(lengths, caches, alone, strict=True):
        for c in (cache, solo):
            if n:
                prefill(model, c, torch.tensor(_prompt(n, n)), CHUNK)
    tokens = [torch.tensor(_prompt(70 + n, n)) for n in parts]
    with torch.inference_mode():
        together = model.forward_parts(tokens, caches, [True, False, True])
        solo = [model(t, c, last_only=True) for t, c in zip(tokens, alone, strict=True)]
        assert together[1] is None
        for i in (0, 2):
            assert torch.equal(together[i], solo[i])
        after = [model(torch.tensor([5]), c, True) for c in caches]
        expected = [model(torch.tensor([5]), c, True) for c in alone]
    for got, want in zip(after, expected, strict=True):
        assert torch.equal(got, want)
    assert [c.length for c in caches] == [n + p + 1 for n, p in zip(lengths, parts, strict=True)]


def test_requests_that_cannot_run_are_refused(runner):
    batch = runner.batch()
    with pytest.raises(gptoss_lite.GptossError, match="context of 160 tokens"):
        batch.add(Request(_prompt(1, 150), Sampling(max_new_tokens=20)))
    with pytest.raises(gptoss_lite.GptossError, match="temperature"):
        batch.add(Request(_prompt(1, 5), Sampling(max_new_tokens=2, temperature=float("nan"))))
    for i in range(4):
        batch.add(Request(_prompt(60 + i, 5), Sampling(max_new_tokens=2)))
    with pytest.raises(RuntimeError, match="every slot"):
        batch.add(Request(_prompt(70, 5), Sampling(max_new_tokens=2)))


def test_a_later_generate_takes_the_caches_back(runner):
    batch = runner.batch()
    batch.add(Request(_prompt(80, 5), Sampling(max_new_tokens=4, temperature=0)))
    batch.step()
    list(runner.generate(_prompt(81, 5), max_new_tokens=2, temperature=0))
    with pytest.raises(gptoss_lite.GptossError, match="taken over"):
        batch.step()


def test_pool_slots_are_views_of_one_allocation():
    config = GEOMETRIES["g1"]
    pool = KVPool(config, 3, 100, ring_slots=20)
    caches = pool.caches()
    one = KVCache(config, 100, ring_slots=20)
    assert [c.nbytes for c in caches] == [one.nbytes] * 3
    assert pool.nbytes == 3 * one.nbytes
    caches[1].k[0][0].fill_(1.0)
    assert pool.k[0][1, 0].eq(1).all() and pool.k[0][0].eq(0).all()
    caches[2].advance(torch.arange(5))
    assert pool.ring_pos[2, :5].tolist() == list(range(5)) and pool.ring_pos[0].eq(-1).all()
