"""Sampling: greedy, seeded reproducibility, top-k and top-p cut-offs."""

import pytest
import torch

from gptoss_lite.engine.sampling import GREEDY, Sampling, sample
from gptoss_lite.errors import GptossError


def test_temperature_zero_is_argmax():
    logits = torch.tensor([0.1, 3.0, -2.0, 2.9])
    assert sample(logits, GREEDY).item() == 1


def test_same_seed_same_tokens():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return [sample(logits, Sampling(), g).item() for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_top_k_keeps_only_the_k_largest():
    logits = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    g = torch.Generator().manual_seed(0)
    seen = {sample(logits, Sampling(top_k=2), g).item() for _ in range(200)}
    assert seen == {0, 1}


def test_top_p_keeps_the_smallest_set_reaching_p():
    # Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 needs the first two tokens (0.5 < 0.75 <= 0.8).
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    g = torch.Generator().manual_seed(0)
    seen = {sample(logits, Sampling(top_p=0.75), g).item() for _ in range(300)}
    assert seen == {0, 1}
    # A top_p below the largest probability keeps the top token alone.
    assert {sample(logits, Sampling(top_p=0.1), g).item() for _ in range(50)} == {0}


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": float("nan")},
        {"temperature": float("inf")},
        {"temperature": -1.0},
        {"top_p": float("nan")},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": 0},
        {"top_k": 2.5},
        {"seed": 99999999999999999999999},
        {"seed": -1},
        {"max_new_tokens": 0},
    ],
    ids=repr,
)
def test_bad_settings_are_one_line(settings):
    with pytest.raises(GptossError, match=f"^{next(iter(settings))} "):
        Sampling(**settings)


def test_good_settings_pass():
    Sampling(temperature=1e-300, top_p=1.0, top_k=1, seed=2**64 - 1, max_new_tokens=1)


def test_a_tiny_temperature_is_greedy():
    logits = torch.tensor([0.1, 3.0, -2.0, 2.9])
    g = torch.Generator().manual_seed(0)
    assert {sample(logits, Sampling(temperature=1e-300), g).item() for _ in range(20)} == {1}


def test_draws_follow_the_softmax():
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    probs = torch.softmax(logits, -1)
    g = torch.Generator().manual_seed(0)
    n = 20_000
    counts = torch.bincount(torch.stack([sample(logits, Sampling(), g) for _ in range(n)]), None, 4)
    # Each frequency is a binomial mean: standard error sqrt(p(1-p)/n) <= 0.0036; allow 4 of them.
    torch.testing.assert_close(counts / n, probs, rtol=0, atol=4 * 0.0036)
