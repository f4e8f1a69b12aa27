"""Error metrics on known answers; MXFP4 vs bitsandbytes on CPU; the quant-error command."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from gptoss_lite.cli import main
from gptoss_lite.config import preset
from gptoss_lite.model.mxfp4 import dequantize, quantize_mxfp4
from quantize.compare import compare_formats
from quantize.metrics import error_metrics
from quantize.report import random_expert, tensor_error_report


def known_perturbation(snr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x and x + n with n orthogonal to x and Σn² = Σx² / snr exactly (in float64)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=gen, dtype=torch.float64)
    n = torch.randn(100_000, generator=gen, dtype=torch.float64)
    n -= (n @ x) / (x @ x) * x
    n *= torch.sqrt((x @ x) / (snr * (n @ n)))
    return x, x + n


def test_sqnr_rel_error_and_cosine_of_a_known_perturbation():
    x, y = known_perturbation(snr=100.0)  # 20 dB
    m = error_metrics(x, y, chunk_elements=7_777)  # chunk boundaries must not matter
    assert m.sqnr_db == pytest.approx(20.0, abs=1e-9)
    assert m.rel_frobenius == pytest.approx(0.1, rel=1e-9)
    assert m.cosine == pytest.approx(1 / math.sqrt(1.01), rel=1e-12)  # ‖x‖ / ‖x + n‖
    assert m.max_abs_error == pytest.approx(float((y - x).abs().max()), rel=1e-15)


def test_max_abs_error_and_edge_cases():
    x = torch.ones(1000)
    y = x.clone()
    y[123] += 0.5
    y[999] -= 0.25
    m = error_metrics(x, y, chunk_elements=100)
    assert m.max_abs_error == 0.5
    assert m.sqnr_db == pytest.approx(10 * math.log10(1000 / 0.3125))
    exact = error_metrics(x, x)
    assert exact.sqnr_db == math.inf and exact.rel_frobenius == 0.0 and exact.cosine == 1.0
    assert error_metrics(torch.zeros(4), torch.ones(4)).sqnr_db == -math.inf
    assert error_metrics(-x, x).cosine == -1.0
    with pytest.raises(ValueError):
        error_metrics(torch.zeros(4), torch.zeros(5))


def test_compare_formats_runs_bitsandbytes_on_cpu():
    weight = random_expert(preset("tiny"), seed=1)["gate_up_proj"]  # (128, 64) bf16
    results = {r.name: r for r in compare_formats(weight)}
    bits = {name: r.bits_per_weight for name, r in results.items()}
    assert bits["mxfp4"] == 4.25
    assert bits["bnb-nf4-b32"] == bits["bnb-fp4-b32"] == 5.0
    assert bits["bnb-nf4-b64"] == bits["bnb-fp4-b64"] == 4.5
    assert 4.125 < bits["bnb-nf4-b64-dq"] < 4.15  # uint8 absmax + an fp32 one per 256 blocks
    for r in results.values():
        assert 12 < r.metrics.sqnr_db < 30 and r.metrics.cosine > 0.97
    assert results["bnb-nf4-b32"].metrics.sqnr_db > results["bnb-nf4-b64"].metrics.sqnr_db
    blocks, scales = quantize_mxfp4(weight)
    direct = error_metrics(weight.float(), dequantize(blocks, scales, torch.float32))
    assert results["mxfp4"].metrics == direct


def test_random_expert_has_the_geometry_and_outliers():
    cfg = preset("gpt-oss-20b")
    weights = random_expert(cfg.with_(hidden_size=256, intermediate_size=512), seed=0)
    assert weights["gate_up_proj"].shape == (1024, 256) and weights["down_proj"].shape == (256, 512)
    w = weights["gate_up_proj"].float()
    kurtosis = float((w**4).mean() / (w**2).mean() ** 2)
    assert 0.015 < float(w.std()) < 0.03 and kurtosis > 3.5  # heavier-tailed than a Gaussian (3)


def test_tensor_report_and_cli(tmp_path):
    report = tensor_error_report(preset("tiny"), seed=2)
    assert [t["name"] for t in report["tensors"]] == ["gate_up_proj", "down_proj"]
    assert len(report["tensors"][0]["results"]) == 6
    result = CliRunner().invoke(
        main,
        ["quant-error", "--tensors", "--geometry", "tiny", "--seed", "2", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "report.json").read_text()) == report
    table = (tmp_path / "report.md").read_text()
    assert "| gate_up_proj 128×64 | mxfp4 |" in table and "| 4.250 |" in table


def test_cli_needs_a_mode(tmp_path):
    result = CliRunner().invoke(main, ["quant-error", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--tensors" in result.output


def test_bitsandbytes_import_is_quiet():
    """Its CPU backend logs a warning about an optional package at import: the user never sees it.
    A fresh interpreter, since the import happens once per process."""
    code = (
        "import torch; from quantize.compare import FORMATS; "
        "FORMATS['bnb-nf4-b32'][1](torch.ones(64, 64))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""
