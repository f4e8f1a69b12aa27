"""How far one model's next-token distributions are from a reference's, per position and overall.

Per position (row of logits over the vocabulary), in the conventions of llama.cpp
`perplexity --kl-divergence` and ExLlamaV3 `model_diff`: KL(P_ref ‖ P) = Σ_v p_ref(v)·(ln p_ref(v) −
ln p(v)) in nats, computed in float64 from the logits; whether the two argmaxes agree (llama.cpp's
"Same top p", ExLlamaV3's top-1 agreement); whether the reference's argmax is among the other's top
5; and the negative log-likelihood of the actual next token, for perplexity. Summaries give the mean
with its standard error sqrt((E[x²] − E[x]²)/(n − 1)) (llama.cpp's formula: the sample standard
deviation over √n), and percentiles by linear interpolation between order statistics (llama.cpp's
and numpy's default). A tiny negative KLD is rounding, kept as it is, as llama.cpp does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ROWS_PER_BLOCK = 64  # float64 working set: a few [64, V] tensors at a time
TOP_K = 5


@dataclass
class Positions:
    """Per-position measures of one model against the reference, in position order."""

    kld: torch.Tensor  # (N,) float64, nats
    same_top1: torch.Tensor  # (N,) bool
    ref_top1_in_top5: torch.Tensor  # (N,) bool
    nll: torch.Tensor | None = None  # (N,) float64, nats; None without targets

    @classmethod
    def concat(cls, parts: list[Positions]) -> Positions:
        """The positions of several sequences, one after the other."""
        nll = [p.nll for p in parts]
        return cls(
            torch.cat([p.kld for p in parts]),
            torch.cat([p.same_top1 for p in parts]),
            torch.cat([p.ref_top1_in_top5 for p in parts]),
            torch.cat(nll) if all(n is not None for n in nll) else None,
        )


def kl_divergence(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(ref) ‖ softmax(logits)) per row of `[T, V]` logits, in nats, float64 `[T]`.

    A token the reference gives probability 0 (logit -inf) adds nothing.
    """
    out = []
    for start in range(0, ref_logits.shape[0], ROWS_PER_BLOCK):
        lp_ref = F.log_softmax(ref_logits[start : start + ROWS_PER_BLOCK].double(), dim=-1)
        lp = F.log_softmax(logits[start : start + ROWS_PER_BLOCK].double(), dim=-1)
        p_ref = lp_ref.exp()
        terms = torch.where(p_ref > 0, p_ref * (lp_ref - lp), 0.0)  # (rows, V)
        out.append(terms.sum(dim=-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def negative_log_likelihood(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−ln p(target) per row of `[T, V]` logits, float64 `[T]`."""
    out = []
    for start in range(0, logits.shape[0], ROWS_PER_BLOCK):
        lp = F.log_softmax(logits[start : start + ROWS_PER_BLOCK].double(), dim=-1)
        picked = targets[start : start + ROWS_PER_BLOCK].to(lp.device).unsqueeze(-1)
        out.append(-lp.gather(-1, picked).squeeze(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def compare_positions(
    ref_logits: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor | None = None
) -> Positions:
    """KLD, top-1 agreement, ref top-1 in top-5 (and NLL of `targets`) for `[T, V]` logits."""
    if ref_logits.shape != logits.shape:
        raise ValueError(
            f"logits differ in shape: {list(ref_logits.shape)} vs {list(logits.shape)}"
        )
    ref_top1 = ref_logits.argmax(dim=-1)  # (T,)
    top = logits.topk(min(TOP_K, logits.shape[-1]), dim=-1).indices  # (T, k)
    return Positions(
        kld=kl_divergence(ref_logits, logits).cpu(),
        same_top1=(top[:, 0] == ref_top1).cpu(),
        ref_top1_in_top5=(top == ref_top1.unsqueeze(-1)).any(dim=-1).cpu(),
        nll=None if targets is None else negative_log_likelihood(logits, targets).cpu(),
    )


def mean_stderr(values: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error sqrt((E[x²] − E[x]²)/(n − 1)); needs n ≥ 2."""
    x = values.double()
    n = x.numel()
    if n < 2:
        raise ValueError(f"a standard error needs at least 2 values, got {n}")
    mean = float(x.mean())
    variance = max(float(x.square().mean()) - mean**2, 0.0)  # population variance
    return mean, math.sqrt(variance / (n - 1))


def summarize_kld(kld: torch.Tensor) -> dict[str, float]:
    """Mean ± stderr, median, p90, p99, max (and min) of per-position KLD values."""
    mean, stderr = mean_stderr(kld)
    q = torch.quantile(kld.double(), torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
    return {
        "mean": mean,
        "stderr": stderr,
        "median": float(q[0]),
        "p90": float(q[1]),
        "p99": float(q[2]),
        "max": float(kld.max()),
        "min": float(kld.min()),
    }


def summarize_rate(hits: torch.Tensor) -> dict[str, float]:
    """Fraction of positions that hit, with its stderr sqrt(p(1 − p)/(n − 1))."""
    rate, stderr = mean_stderr(hits.double())
    return {"rate": rate, "stderr": stderr}


def perplexity(nll: torch.Tensor) -> float:
    """exp of the mean negative log-likelihood."""
    return math.exp(float(nll.double().mean()))
