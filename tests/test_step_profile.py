"""`bench --profile-step`: one decode step sorted into parts, with the bytes each part reads."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import GEOMETRIES

import gptoss_lite
from gptoss_lite.cli import main
from gptoss_lite.kernels import cpu
from gptoss_lite.measure.step_profile import profile_step

pytestmark = pytest.mark.skipif(not cpu.available(), reason="no C compiler for the CPU kernels")


def by_name(profile) -> dict:
    return {part.name: part for part in profile.parts}


def test_the_compiled_step_is_sorted_into_its_own_parts(checkpoint):
    runner = gptoss_lite.load(checkpoint("g1"), device="cpu", context=64)
    profile = profile_step(runner, prompt_tokens=10, steps=4)
    parts, model, c = by_name(profile), runner.model, GEOMETRIES["g1"]
    assert (profile.layers, profile.context) == (3, 12)  # the prompt and half the steps
    qkv = sum(a.qkv_weight.nbytes + a.qkv_bias.nbytes for a in model.attn)
    assert parts["qkv projection"].nbytes == qkv
    assert parts["head (lm_head)"].nbytes == model.unembedding.nbytes
    e = model.mlp[0].experts
    per_expert = sum(t[0].nbytes for t in e.tensors())
    routed = parts["experts gate_up (+SwiGLU)"].nbytes + parts["experts down"].nbytes
    assert routed == c.num_layers * c.experts_per_token * per_expert
    assert parts["head (lm_head)"].seconds > 0 and parts["qkv projection"].seconds > 0
    assert all(part.seconds >= 0 for part in profile.parts)
    # What the compiled step timed lies inside the profiled step's time.
    assert sum(part.seconds for part in profile.parts) <= profile.profiled_seconds


def test_the_per_operation_path_is_sorted_by_function(checkpoint):
    runner = gptoss_lite.load(checkpoint("g1"), device="cpu", context=64)
    runner.model.fused_step = None  # the path a model without the compiled step runs
    parts = by_name(profile_step(runner, prompt_tokens=10, steps=4))
    for name in ("norms", "qkv + output projections", "attention over the cache", "experts"):
        assert parts[name].seconds > 0, name
    assert "qkv projection" not in parts


def test_the_command_prints_the_table(checkpoint):
    args = ["bench", "--model", str(checkpoint("g1")), "--device", "cpu", "--prompt-tokens", "8",
            "--gen-tokens", "3", "--profile-step"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].startswith("one decode step, 3 layers, 9 tokens in the cache")
    for part in ("embedding row", "experts down", "head (lm_head)", "rest (Python", "sampling"):
        assert any(line.strip().startswith(part) for line in lines), part
