"""The optional q8 decode mode (`cpu-q8` kernels): the attention projections and the head read as
int8 with a scale per row. Not exact, so it is checked against what it is meant to compute: the
exact step run on the dequantized weights (codes times scales, in fp32), and its codes against
the rounding rule."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import GEOMETRIES

import gptoss_lite
from gptoss_lite.kernels import cpu, kernel_functions
from gptoss_lite.kernels.cpu import decode
from gptoss_lite.measure.bench import bench
from gptoss_lite.measure.step_profile import profile_step

pytestmark = pytest.mark.skipif(not cpu.available(), reason="no C compiler for the CPU kernels")
ISAS = cpu.ISAS[: cpu.ISAS.index(cpu.best_isa()) + 1] if cpu.available() else ()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_codes_are_the_nearest_steps_of_the_row_scale(dtype):
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(37, 200, generator=g) * torch.rand(37, 1, generator=g)).to(dtype)
    w[5] = 0  # a row of zeros: scale 0, codes 0
    codes, scales = decode.q8_form(w)
    most = w.float().abs().amax(dim=1)
    assert torch.equal(scales, most / 127)
    # 127 / max|row| in one fp32 division (torch's scalar / tensor goes by a reciprocal).
    inv = torch.where(most > 0, torch.full_like(most, 127).div(most), torch.zeros_like(most))
    expected = torch.round(w.float() * inv[:, None]).clamp(-127, 127).to(torch.int8)
    assert torch.equal(codes, expected)  # ties to even, as torch.round
    assert codes.abs().amax(dim=1)[most > 0].eq(127).all()  # each row's largest is ±127


def dequantized_copy(runner):
    """The model with its attention projections and head replaced by codes × scales (fp32)."""
    model = runner.model
    for weight_owner, name in [(a, n) for a in model.attn for n in ("qkv_weight", "out_weight")]:
        w = getattr(weight_owner, name)
        codes, scales = decode.q8_form(w)
        w.copy_(codes.float() * scales[:, None])
    codes, scales = decode.q8_form(model.unembedding)
    model.unembedding.copy_(codes.float() * scales[:, None])


@pytest.mark.parametrize("isa", ISAS)
def test_the_q8_step_computes_the_exact_step_of_the_dequantized_weights(
    checkpoint, isa, monkeypatch
):
    monkeypatch.setattr(cpu, "best_isa", lambda: isa)
    folder, ids = checkpoint("g1"), list(range(3, 15))
    q8 = gptoss_lite.load(folder, device="cpu", dtype=torch.float32, context=64, kernels="cpu-q8")
    exact = gptoss_lite.load(folder, device="cpu", dtype=torch.float32, context=64)
    tokens = ids + list(q8.generate(ids, max_new_tokens=10, temperature=0))
    with torch.no_grad():
        dequantized_copy(exact)
    steps = []
    for runner in (q8, exact):  # every token a decode step: a prefill would read the originals
        runner.cache.rewind(0)
        with torch.inference_mode():
            steps.append(
                torch.cat([runner.model(torch.tensor([t]), runner.cache, True) for t in tokens])
            )
    # The same products summed in another grouping (the scale after the row's sum): fp32
    # rounding apart, logits of magnitude ~5 within 1e-4.
    torch.testing.assert_close(steps[0], steps[1], rtol=0, atol=1e-4)


def test_q8_is_a_named_mode_and_never_the_default(checkpoint):
    folder = checkpoint("g1")
    assert kernel_functions("cpu").fused_step.keywords == {"dense": "bf16"}
    q8 = gptoss_lite.load(folder, device="cpu", context=64, kernels="cpu-q8")
    default = gptoss_lite.load(folder, device="cpu", context=64)
    assert q8.model.kernel_name.endswith("q8 decode") and "q8" not in default.model.kernel_name
    ids = list(range(3, 15))
    a = list(q8.generate(ids, max_new_tokens=6, temperature=0))
    b = list(default.generate(ids, max_new_tokens=6, temperature=0))
    assert len(a) == len(b) == 6  # it decodes; how far it is from exact is quant-error's to say
    assert GEOMETRIES["g1"].vocab_size > max(a)


def test_quant_error_measures_the_q8_decode_against_the_exact_one(tmp_path):
    from click.testing import CliRunner

    from gptoss_lite.cli import main

    args = ["quant-error", "--kernels", "cpu-q8", "--geometry", "tiny", "--tokens", "24",
            "--context", "12", "--out", str(tmp_path)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["mode"], report["kernels"]) == ("decode", "cpu-q8")
    assert report["tokens"]["positions"] == 22  # 2 sequences of 12, each scored after a token
    assert report["kld"]["mean"] > 0 and 0 <= report["same_top1"]["rate"] <= 1
    assert set(report["ms_per_token"]) == {"cpu", "cpu-q8"}
    assert "| cpu-q8 |" in (tmp_path / "report.md").read_text()
    refused = CliRunner().invoke(main, [*args[:2], "cpu", *args[3:], "--overwrite"])
    assert refused.exit_code != 0 and "exact reference" in refused.output


def test_bench_and_the_step_profile_count_the_bytes_the_q8_step_reads(checkpoint):
    # The q8 step reads the attention projections and the head as their q8 forms (codes and a
    # scale a row, as q8_form makes them from the model's weights), not as bf16: the bytes
    # bench divides by, and the profile's for the head, are those.
    folder = checkpoint("g1")
    runs = {}
    for kernels in ("cpu", "cpu-q8"):
        runner = gptoss_lite.load(folder, device="cpu", context=64, kernels=kernels)
        runs[kernels] = bench(runner, prompt_tokens=4, gen_tokens=2, repeats=1)
    model = runner.model
    weights = [w for a in model.attn for w in (a.qkv_weight, a.out_weight)] + [model.unembedding]
    saved = sum(w.nbytes - sum(t.nbytes for t in decode.q8_form(w)) for w in weights)
    assert saved > 0
    assert runs["cpu-q8"].decode_bytes_per_token == runs["cpu"].decode_bytes_per_token - saved
    parts = {p.name: p for p in profile_step(runner, prompt_tokens=4, steps=2).parts}
    head = sum(t.nbytes for t in decode.q8_form(model.unembedding))
    assert parts["head (lm_head)"].nbytes == head
