"""`bench`: the bytes a decode step reads, and the command on a tiny checkpoint."""

import json

import pytest
from click.testing import CliRunner
from conftest import GEOMETRIES

from gptoss_lite.cli import main
from gptoss_lite.config import preset
from gptoss_lite.memory.plan import decode_bytes_per_token
from gptoss_lite.model.mxfp4 import packed_nbytes


def test_20b_decode_reads_3_71_gb_per_token():
    # users.md: 4 routed experts x 24 layers (1.27 GB) + attention (1.27 GB) + lm_head (1.16 GB).
    c = preset("gpt-oss-20b")
    expert = 5760 * 2880 * 17 // 32 + 2880 * 2880 * 17 // 32 + (5760 + 2880) * 2  # MXFP4 + bias
    attention = (5120 * 2880 + 5120 + 2880 * 4096 + 2880 + 64) * 2
    router = (32 * 2880 + 32) * 2
    attention += 64 * 2  # the sinks are held in fp32
    norms = 2 * 2880 * 4
    lm_head_row_and_norm = 201088 * 2880 * 2 + 2880 * 2 + 2880 * 4
    expected = 24 * (4 * expert + attention + router + norms) + lm_head_row_and_norm
    assert decode_bytes_per_token(c, 0) == expected
    assert round(expected / 1e9, 2) == 3.71
    # Each cached token adds k and v (2 x 8 heads x 64 x bf16) on the 12 full layers.
    assert decode_bytes_per_token(c, 1000) - expected == 1000 * 12 * 2048 + 12 * 128 * 2048


@pytest.mark.parametrize("compare", [False, True])
def test_bench_command_on_a_tiny_checkpoint(checkpoint, compare):
    folder = checkpoint("g1")
    args = ["bench", "--model", str(folder), "--device", "cpu", "--prompt-tokens", "12",
            "--gen-tokens", "3", "--json"]  # fmt: skip
    result = CliRunner().invoke(main, args + (["--compare", "transformers"] if compare else []))
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # stderr carries transformers' progress bars
    config = GEOMETRIES["g1"]
    e, h, i = config.num_experts, config.hidden_size, config.intermediate_size
    packed = config.num_layers * e * (packed_nbytes(2 * i, h) + packed_nbytes(h, i))
    assert payload["load"]["experts_packed"] == packed
    assert payload["load"]["weights"] > packed
    runs = payload["results"]
    assert [r["engine"] for r in runs] == ["gptoss-lite", "transformers"][: 1 + compare]
    for r in runs:
        assert (r["prompt_tokens"], r["gen_tokens"]) == (12, 3)
        assert r["decode_tok_s"] == pytest.approx(3 / r["decode_seconds"])
        assert r["decode_gb_s"] == pytest.approx(
            r["decode_bytes_per_token"] * r["decode_tok_s"] / 1e9
        )


def test_bench_needs_one_model_source():
    result = CliRunner().invoke(main, ["bench"])
    assert result.exit_code == 1
    assert "give exactly one of --model or --geometry" in result.output
