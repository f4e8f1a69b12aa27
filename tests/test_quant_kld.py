"""`quant-error --model`: KL divergence of gptoss-lite (MXFP4 experts) against a float32 reference.

First the statistics on inputs with known answers (identical distributions, a hand-computed KL,
the standard-error and percentile formulas), then the whole report on a random tiny bf16
GptOssForCausalLM saved by transformers (experts widened so the MoE matters, as in
test_quantized_load.py): finite numbers, MXFP4 costs KLD > 0, the runner matches transformers
holding the same MXFP4 experts, md and json agree, the CLI, and bad input as one line.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from click.testing import CliRunner

from gptoss_lite.cli import main
from gptoss_lite.errors import GptossError
from quantize.convert import plan_conversion, write_quantized
from quantize.divergence import (
    ROWS_PER_BLOCK,
    compare_positions,
    kl_divergence,
    mean_stderr,
    negative_log_likelihood,
    perplexity,
    summarize_kld,
    summarize_rate,
)
from quantize.kld import REFERENCE, SAME_WEIGHTS, cut, model_error_report
from quantize.report import render_markdown, write_report

transformers = pytest.importorskip("transformers")
from test_quantize_convert import tiny_config  # noqa: E402  (needs transformers)

# ------------------------------------------------------------------ statistics, known answers


def test_identical_distributions_give_zero_kld_and_full_agreement():
    logits = torch.randn(10, 50, generator=torch.Generator().manual_seed(0))
    p = compare_positions(logits, logits.clone())
    assert torch.equal(p.kld, torch.zeros(10, dtype=torch.float64))
    assert p.same_top1.all() and p.ref_top1_in_top5.all()


def test_hand_computed_kl_and_its_direction():
    p, q = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.5, 0.25])
    # KL(P‖Q) = ½·ln 2 + ¼·ln ½ + ¼·ln 1 = ¼·ln 2
    assert kl_divergence(p.log()[None], q.log()[None]).item() == pytest.approx(math.log(2) / 4)
    p, q = torch.tensor([0.9, 0.1], dtype=torch.float64), torch.tensor([0.5, 0.5])
    forward = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # reference first
    assert kl_divergence(p.log()[None], q.log()[None]).item() == pytest.approx(forward, rel=1e-12)
    assert kl_divergence(q.log()[None], p.log()[None]).item() != pytest.approx(forward)
    # a token the reference never picks adds nothing: KL([1, 0] ‖ [½, ½]) = ln 2
    never = torch.tensor([[0.0, -math.inf]])
    assert kl_divergence(never, torch.zeros(1, 2)).item() == pytest.approx(math.log(2))


def test_blocked_rows_equal_one_direct_computation():
    gen = torch.Generator().manual_seed(1)
    rows = 2 * ROWS_PER_BLOCK + 7
    ref, got = torch.randn(rows, 30, generator=gen), torch.randn(rows, 30, generator=gen)
    lp, lq = ref.double().log_softmax(-1), got.double().log_softmax(-1)
    direct = (lp.exp() * (lp - lq)).sum(-1)
    torch.testing.assert_close(kl_divergence(ref, got), direct, rtol=0, atol=1e-14)


def test_top1_and_top5_agreement():
    ref = torch.zeros(2, 10)
    ref[:, 0] = 5.0  # the reference's argmax is token 0 in both rows
    got = torch.arange(10.0).repeat(2, 1)  # token 9 first, token 0 last ...
    got[0, 0] = 6.5  # ... except row 0, where token 0 ranks 3rd
    p = compare_positions(ref, got)
    assert p.same_top1.tolist() == [False, False]
    assert p.ref_top1_in_top5.tolist() == [True, False]


def test_standard_errors_match_a_direct_computation():
    values = torch.rand(1000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mean, stderr = mean_stderr(values)
    assert mean == pytest.approx(statistics.fmean(values.tolist()), rel=1e-12)
    assert stderr == pytest.approx(statistics.stdev(values.tolist()) / math.sqrt(1000), rel=1e-9)
    hits = torch.tensor([True] * 30 + [False] * 10)
    rate = summarize_rate(hits)
    assert rate["rate"] == 0.75
    assert rate["stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 39), rel=1e-12)


def test_percentiles_interpolate_between_order_statistics():
    s = summarize_kld(torch.arange(101.0).flip(0))
    assert (s["median"], s["p90"], s["p99"], s["max"], s["min"]) == (50, 90, 99, 100, 0)
    assert summarize_kld(torch.tensor([0.0, 10.0]))["median"] == 5.0


def test_uniform_logits_have_perplexity_equal_to_the_vocabulary():
    nll = negative_log_likelihood(torch.zeros(4, 37), torch.tensor([0, 5, 36, 2]))
    assert perplexity(nll) == pytest.approx(37.0)


def test_tokens_are_cut_into_whole_sequences():
    assert cut(torch.arange(10), 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert cut(torch.arange(5), 64).shape == (1, 5)
    with pytest.raises(GptossError, match="fewer than 2 positions"):
        cut(torch.arange(2), 64)


# ------------------------------------------------------------------ a tiny bf16 checkpoint


def save_dense(folder, vocab_size: int | None = None):
    """A random tiny bf16 gpt-oss saved by transformers, experts widened so the MoE matters."""
    config = tiny_config()
    config.vocab_size = vocab_size or config.vocab_size
    torch.manual_seed(0)
    model = transformers.GptOssForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.experts.gate_up_proj.normal_(0, 0.15)
            layer.mlp.experts.down_proj.normal_(0, 0.15)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return save_dense(tmp_path_factory.mktemp("kld") / "bf16")


@pytest.fixture(scope="module")
def report(dense):
    return model_error_report(str(dense), tokens=192, context=48, device="cpu")


def numbers(tree):
    if isinstance(tree, dict):
        return [x for value in tree.values() for x in numbers(value)]
    if isinstance(tree, list):
        return [x for value in tree for x in numbers(value)]
    return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def rows_by(report):
    return {(r["model"], r["dtype"], r["against"]): r for r in report["rows"]}


def test_report_numbers(report):
    assert all(math.isfinite(x) for x in numbers(report))
    assert report["tokens"] | {"positions": 4 * 47} == report["tokens"]
    rows = rows_by(report)
    assert set(rows) == {
        ("transformers", "fp32", REFERENCE),
        ("gptoss-lite", "fp32", REFERENCE),
        ("gptoss-lite", "fp32", SAME_WEIGHTS),
        ("gptoss-lite", "bf16", REFERENCE),
    }
    for key in [k for k in rows if k[2] == REFERENCE]:
        row = rows[key]
        assert row["kld"]["mean"] > 0 and row["kld"]["median"] > 0  # MXFP4 moved the weights
        assert 0 < row["same_top1"]["rate"] <= row["ref_top1_in_top5"]["rate"] <= 1
        assert row["perplexity"] is None  # random tokens
    assert report["reference_perplexity"] is None
    # The runner in float32 and transformers with the same MXFP4 experts: rounding apart.
    floor = rows["gptoss-lite", "fp32", SAME_WEIGHTS]
    assert floor["kld"]["max"] < 1e-9 and floor["same_top1"]["rate"] == 1.0
    runner = rows["gptoss-lite", "fp32", REFERENCE]["kld"]["mean"]
    assert runner == pytest.approx(rows["transformers", "fp32", REFERENCE]["kld"]["mean"], rel=1e-4)


def test_markdown_and_json_agree(report, tmp_path):
    md, js = write_report(report, tmp_path)
    assert json.loads(js.read_text()) == report
    text = md.read_text()
    assert text == render_markdown(report)
    table = [line for line in text.splitlines() if line.startswith("| ") and "MXFP4" in line]
    assert len(table) == len(report["rows"])
    for line, row in zip(table, report["rows"], strict=True):
        assert line.startswith(f"| {row['model']} | MXFP4 | {row['dtype']} | {row['against']} |")
        assert f"{row['kld']['mean']:.4g} ± {row['kld']['stderr']:.2g}" in line
        assert f"{row['kld']['p99']:.4g}" in line
        assert f"{100 * row['same_top1']['rate']:.2f}" in line
    assert "Reference perplexity: N/A" in text
    assert f"--model {report['source']} --tokens 192 --context 48 --seed 0" in text


def test_text_file_gives_perplexities(tmp_path, o200k_env):
    folder = save_dense(tmp_path / "bf16", vocab_size=201088)  # o200k ids fit
    prompts = tmp_path / "text.txt"
    prompts.write_text("The quick brown fox jumps over the lazy dog. " * 8)
    report = model_error_report(
        str(folder), tokens=48, context=24, prompts=prompts, device="cpu", dtypes=("fp32",)
    )
    assert report["tokens"]["kind"] == "text" and report["tokens"]["positions"] == 46
    assert all(math.isfinite(x) for x in numbers(report))
    assert all(r["perplexity"] > 1 for r in report["rows"])
    assert report["reference_perplexity"] > 1
    assert "Reference perplexity: N/A" not in render_markdown(report)


# ------------------------------------------------------------------ the command


def run_cli(*args: str):
    return CliRunner().invoke(main, ["quant-error", *args])


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_cli_writes_the_report(dense, tmp_path):
    out = tmp_path / "out"
    result = run_cli(
        "--model", str(dense), "--tokens", "64", "--context", "32", "--dtype", "bf16",
        "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "model" and report["dtypes"] == ["bf16"]
    assert (out / "report.md").read_text() in result.stdout
    assert "gptoss-lite, MXFP4 experts, bf16" in result.stderr


def test_mxfp4_source_is_refused_in_one_line(dense, tmp_path):
    mxfp4 = write_quantized(plan_conversion(str(dense), tmp_path / "mxfp4"))
    line = one_error_line(run_cli("--model", str(mxfp4), "--out", str(tmp_path / "out")))
    assert "already quantized (mxfp4)" in line and "dense bf16 experts" in line
    assert "reference" in line and not (tmp_path / "out").exists()


def test_text_beyond_the_vocabulary_is_refused(dense, tmp_path, o200k_env):
    prompts = tmp_path / "text.txt"
    prompts.write_text("Some text whose tokens the tiny vocabulary does not have.")
    line = one_error_line(
        run_cli("--model", str(dense), "--prompts", str(prompts), "--out", str(tmp_path / "out"))
    )
    assert "beyond this model's vocabulary of 128" in line


@pytest.mark.parametrize("args", [[], ["--tensors", "--model", "x"]])
def test_exactly_one_mode(args):
    result = run_cli(*args)
    assert result.exit_code == 2 and "--tensors or --model SRC" in result.output
