"""Sampling: greedy, seeded reproducibility, top-k and top-p cut-offs."""

import pytest
import torch

from gptoss_lite.engine.sampling import sample


def test_temperature_zero_is_argmax():
    logits = torch.tensor([0.1, 3.0, -2.0, 2.9])
    assert sample(logits, temperature=0).item() == 1


def test_same_seed_same_tokens():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return [sample(logits, generator=g).item() for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_top_k_keeps_only_the_k_largest():
    logits = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    g = torch.Generator().manual_seed(0)
    seen = {sample(logits, top_k=2, generator=g).item() for _ in range(200)}
    assert seen == {0, 1}


def test_top_p_keeps_the_smallest_set_reaching_p():
    # Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 needs the first two tokens (0.5 < 0.75 <= 0.8).
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    g = torch.Generator().manual_seed(0)
    seen = {sample(logits, top_p=0.75, generator=g).item() for _ in range(300)}
    assert seen == {0, 1}
    # A top_p below the largest probability keeps the top token alone.
    assert {sample(logits, top_p=0.1, generator=g).item() for _ in range(50)} == {0}


def test_bad_parameters_raise():
    with pytest.raises(ValueError):
        sample(torch.zeros(3), top_p=0)
    with pytest.raises(ValueError):
        sample(torch.zeros(3), temperature=-1)
