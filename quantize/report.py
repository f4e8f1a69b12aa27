"""The reports of `quant-error`: per tensor (`--tensors`, built here), per model (`--model`), and
per KV-cache format (`--kv`, `kv_sweep.py`).

`random_expert` makes the two weights of one MoE expert of a given geometry, with a
distribution chosen to look like trained LLM weights rather than a clean Gaussian: each output
row has its own scale (log-normal around 0.02, the gpt-oss init std), and one weight in 10,000 is
an outlier of 10 to 30 times its row's scale. `tensor_error_report` runs every format of
`compare.FORMATS` on both weights and returns a JSON-ready dict. `render_markdown` makes the
markdown of any mode (the model mode's is in `kld_report.py`, its dict from `kld.py`) and
`write_report` writes `report.md` and `report.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gptoss_lite.config import ModelConfig

from .compare import compare_formats
from .decode_error import render_decode_markdown
from .kld_report import render_model_markdown
from .kv_sweep import render_kv_markdown

ROW_STD, ROW_STD_SPREAD = 0.02, 0.3  # σ_row = 0.02·exp(0.3·N(0, 1))
OUTLIER_RATE, OUTLIER_RANGE = 1e-4, (10.0, 30.0)  # in units of σ_row
DISTRIBUTION = (
    f"bf16; row r ~ N(0, σ_r²), σ_r = {ROW_STD}·exp({ROW_STD_SPREAD}·N(0,1)); "
    f"a fraction {OUTLIER_RATE:g} of weights replaced by ±U{OUTLIER_RANGE}·σ_r outliers"
)


def random_expert(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """One expert's `gate_up_proj [2I, H]` and `down_proj [H, I]` in bf16, oriented [out, in]."""
    gen = torch.Generator().manual_seed(seed)
    h, i = cfg.hidden_size, cfg.intermediate_size
    return {"gate_up_proj": _weight(2 * i, h, gen), "down_proj": _weight(h, i, gen)}


def _weight(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    row_std = ROW_STD * torch.exp(ROW_STD_SPREAD * torch.randn(rows, 1, generator=gen))
    w = torch.randn(rows, cols, generator=gen) * row_std
    outlier = torch.rand(rows, cols, generator=gen) < OUTLIER_RATE
    low, high = OUTLIER_RANGE
    size = low + (high - low) * torch.rand(rows, cols, generator=gen)
    sign = torch.where(torch.rand(rows, cols, generator=gen) < 0.5, -1.0, 1.0)
    w = torch.where(outlier, sign * size * row_std, w)  # (rows, cols)
    return w.to(torch.bfloat16)


def tensor_error_report(cfg: ModelConfig, seed: int = 0) -> dict:
    """Error of every format on both weights of a random expert of geometry `cfg`."""
    tensors = []
    for name, weight in random_expert(cfg, seed).items():
        results = [r.as_dict() for r in compare_formats(weight)]
        tensors.append({"name": name, "shape": list(weight.shape), "results": results})
    return {
        "mode": "tensors",
        "geometry": cfg.name,
        "seed": seed,
        "distribution": DISTRIBUTION,
        "tensors": tensors,
    }


def render_markdown(report: dict) -> str:
    """`report.md` of any mode: the settings, then the table."""
    if report["mode"] == "model":
        return render_model_markdown(report)
    if report["mode"] == "kv":
        return render_kv_markdown(report)
    if report["mode"] == "decode":
        return render_decode_markdown(report)
    return _render_tensors(report)


def _render_tensors(report: dict) -> str:
    """The per-tensor table: one row per tensor and format."""
    lines = [
        f"# Per-tensor quantization error: one random {report['geometry']} expert",
        "",
        f"Made by `gptoss-lite quant-error --tensors --geometry {report['geometry']} "
        f"--seed {report['seed']}`. Weights: {report['distribution']}. Blocks run along the input "
        "axis in every format; bits per weight count codes and per-block scales.",
        "",
        "| tensor [out, in] | format | stored | bits/weight | SQNR dB | rel. Frobenius | cosine "
        "| max abs err |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for tensor in report["tensors"]:
        shape = "×".join(map(str, tensor["shape"]))
        for r in tensor["results"]:
            lines.append(
                f"| {tensor['name']} {shape} | {r['format']} | {r['stored']} | "
                f"{r['bits_per_weight']:.3f} | {r['sqnr_db']:.2f} | {r['rel_frobenius']:.4f} | "
                f"{r['cosine']:.5f} | {r['max_abs_error']:.4g} |"
            )
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    """Write `report.md` and `report.json` into `out` (created if needed); return both paths."""
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "report.md", out / "report.json"
    md.write_text(render_markdown(report))
    js.write_text(json.dumps(report, indent=2) + "\n")
    return md, js
