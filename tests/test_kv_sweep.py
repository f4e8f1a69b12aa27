"""`quant-error --kv`: the sweep of K/V cache formats against the bf16 cache, and its report."""

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from conftest import GEOMETRIES

import gptoss_lite
from gptoss_lite.cli import main
from gptoss_lite.memory.plan import plan
from gptoss_lite.memory.profiles import load_profile
from gptoss_lite.model.kv_quant import KVDtypes
from quantize.divergence import kl_divergence
from quantize.kv_sweep import kv_error_report

PAIRS = (KVDtypes("q8", "q8"), KVDtypes("fp8", "q8"))


@pytest.fixture(scope="module")
def report(checkpoint):
    return kv_error_report(
        checkpoint("g1"), pairs=PAIRS, tokens=64, context=32, device="cpu", dtype="fp32",
        profile="rtx4090", plan_config=gptoss_lite.config.preset("gpt-oss-20b"),
    )  # fmt: skip


def test_each_pair_equals_a_fresh_load_with_that_cache(report, checkpoint):
    """The sweep swaps caches under one model; runners loaded with each pair must agree."""
    generator = torch.Generator().manual_seed(0)  # the sweep's random ids, seed 0
    ids = torch.randint(0, GEOMETRIES["g1"].vocab_size, (64,), generator=generator)

    def logits(kv: str) -> list[torch.Tensor]:
        runner = gptoss_lite.load(
            checkpoint("g1"), device="cpu", dtype=torch.float32, context=32, kv_cache_dtype=kv
        )
        return [runner.logits(s)[:-1] for s in ids.view(2, 32).tolist()]

    reference = logits("bf16")
    assert report["tokens"]["positions"] == 2 * 31
    for pair, row in zip(PAIRS, report["rows"][1:], strict=True):
        assert (row["k"], row["v"]) == (pair.k, pair.v)
        pairs = zip(reference, logits(str(pair)), strict=True)
        kld = torch.cat([kl_divergence(a, b) for a, b in pairs])
        assert row["kld"]["mean"] == pytest.approx(float(kld.mean()), rel=1e-9)
        assert row["kld"]["max"] == pytest.approx(float(kld.max()), rel=1e-9)
        assert row["kld"]["mean"] > 0 and 0 < row["same_top1"]["rate"] <= 1


def test_context_column_is_the_plan_of_each_pair(report):
    gpt20, rtx4090 = gptoss_lite.config.preset("gpt-oss-20b"), load_profile("rtx4090")
    base = plan(gpt20, rtx4090).context
    reference, *pairs = report["rows"]
    assert (reference["k"], reference["v"], reference["kld"]) == ("bf16", "bf16", None)
    assert reference["plan"]["context"] == base
    for pair, row in zip(PAIRS, pairs, strict=True):
        expected = plan(gpt20, replace(rtx4090, kv_cache_dtype=pair))
        assert row["plan"]["context"] == expected.context > base
        assert row["plan"]["bytes_per_token"] == expected.kv_bytes_per_token
        assert row["context_vs_bf16"] == pytest.approx(expected.context / base)


def test_cli_writes_one_table_in_markdown_and_json(tmp_path):
    out = tmp_path / "out"
    args = ["--kv", "--geometry", "tiny", "--layers", "2", "--pair", "q8", "--pair", "bf16,fp8"]
    args += ["--tokens", "24", "--context", "12", "--device", "cpu", "--out", str(out)]
    result = CliRunner().invoke(main, ["quant-error", *args])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "report.json").read_text())
    assert data["mode"] == "kv" and data["plan_model"] == "tiny"
    assert [(r["k"], r["v"]) for r in data["rows"]] == [
        ("bf16", "bf16"),
        ("q8", "q8"),
        ("bf16", "fp8"),
    ]
    md = (out / "report.md").read_text()
    assert md in result.stdout and md.count("\n| q8 | q8 | ") == 1
    assert "show the method, not gpt-oss's real sensitivity" in md


def test_kv_and_another_mode_is_refused():
    result = CliRunner().invoke(main, ["quant-error", "--kv", "--tensors"])
    assert result.exit_code == 2 and "--tensors or --model SRC, or --kv" in result.output
