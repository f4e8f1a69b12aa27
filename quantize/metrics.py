"""Per-tensor quantization error: how far a reconstruction is from the weight it stands for.

The four numbers ExLlamaV2/V3 and the quantization literature report per tensor, between a
reference `r` and its reconstruction `q` (error `e = q - r`): SQNR = 10·log10(Σr² / Σe²) in dB,
relative Frobenius error ‖e‖ / ‖r‖ (= 10^(-SQNR/20)), cosine similarity ⟨r, q⟩ / (‖r‖‖q‖) and the
largest |e|. Sums are accumulated in float64 over bounded chunks, so any tensor size works.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class ErrorMetrics:
    """Error of one reconstruction; `as_dict` gives JSON-ready numbers."""

    sqnr_db: float
    rel_frobenius: float
    cosine: float
    max_abs_error: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def error_metrics(
    reference: torch.Tensor, reconstruction: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS
) -> ErrorMetrics:
    """SQNR (dB), relative Frobenius error, cosine similarity and max |error| of a reconstruction.

    An exact reconstruction has SQNR = inf and error 0. A zero reference with a non-zero
    reconstruction has SQNR = -inf and relative error inf; cosine is 0 when either is all zero.
    """
    if reference.shape != reconstruction.shape:
        raise ValueError(f"shapes differ: {list(reference.shape)} vs {list(reconstruction.shape)}")
    ref, rec = reference.reshape(-1), reconstruction.reshape(-1)
    ref_sq = rec_sq = err_sq = dot = max_err = 0.0
    for start in range(0, ref.numel(), chunk_elements):
        r = ref[start : start + chunk_elements].double()
        q = rec[start : start + chunk_elements].double()
        e = q - r
        ref_sq += float(r.square().sum())
        rec_sq += float(q.square().sum())
        err_sq += float(e.square().sum())
        dot += float((r * q).sum())
        max_err = max(max_err, float(e.abs().max())) if e.numel() else max_err
    return ErrorMetrics(
        sqnr_db=_ratio_db(ref_sq, err_sq),
        rel_frobenius=math.sqrt(err_sq / ref_sq) if ref_sq else (0.0 if not err_sq else math.inf),
        cosine=dot / math.sqrt(ref_sq * rec_sq) if ref_sq and rec_sq else 0.0,
        max_abs_error=max_err,
    )


def _ratio_db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)
