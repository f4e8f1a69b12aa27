"""`bench`: the bytes a decode step reads, and the command on a tiny checkpoint."""

import json
import statistics

import pytest
import torch
from click.testing import CliRunner
from conftest import GEOMETRIES

import gptoss_lite
from gptoss_lite.cli import main
from gptoss_lite.config import preset
from gptoss_lite.measure.bench import WARMUP_PROMPT, BenchResult, timed_runs
from gptoss_lite.memory.plan import decode_bytes_per_token
from gptoss_lite.model.mxfp4 import packed_nbytes


def test_20b_decode_reads_3_71_gb_per_token():
    # What a token reads: 4 routed experts x 24 layers (1.27 GB), attention (1.27 GB), lm_head.
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
            "--gen-tokens", "3", "-r", "2", "--json"]  # fmt: skip
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
        assert len(r["prefill_runs"]) == len(r["decode_runs"]) == r["repeats"] == 2
        assert r["decode_seconds"] == statistics.median(r["decode_runs"])
        # the read rate is probed after each run; the bound is the fastest probe
        assert len(r["read_runs"]) == 2 and min(r["read_runs"]) > 0
        assert r["read_bytes_per_s"] == max(r["read_runs"])
        assert r["bound_ms_per_token"] == pytest.approx(
            1000 * r["decode_bytes_per_token"] / r["read_bytes_per_s"]
        )
        assert r["bound_pct"] == pytest.approx(100 * r["bound_ms_per_token"] / r["ms_per_token"])
        assert r["peak_memory_kind"] == "peak RSS" and r["peak_memory_bytes"] > 0
    # The cache holds the prompt and, on average, half the decoded tokens: 12 + 1.
    # the kernels that ran are the ones the runner picks on this machine (torch or the CPU kernel)
    assert runs[0]["kernels"] == gptoss_lite.load(folder, device="cpu").model.kernel_name
    assert runs[0]["decode_bytes_per_token"] == decode_bytes_per_token(config, 13)
    if compare:  # transformers dequantizes the experts to bf16 on the CPU, and reads them so
        assert runs[1]["decode_bytes_per_token"] == decode_bytes_per_token(
            config, 13, dense_experts=True
        )
        assert runs[1]["kernels"] == "transformers, experts dequantized to bf16"


def test_bench_refuses_more_tokens_than_the_context_before_loading(checkpoint):
    args = ["bench", "--model", str(checkpoint("g1")), "--device", "cpu", "--context", "16",
            "--prompt-tokens", "12", "--gen-tokens", "8"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.output == (
        "error: 12 prompt + 8 generated tokens exceed the context of 16; "
        "pass a larger --context or fewer tokens\n"
    )


def test_transformers_failing_in_its_process_is_one_line(tmp_path):
    from gptoss_lite import GptossError
    from gptoss_lite.measure.bench import bench_transformers

    with pytest.raises(GptossError, match="^--compare transformers failed: ") as err:
        bench_transformers(tmp_path / "nothing", 4, 1, torch.device("cpu"), 1)
    assert "\n" not in str(err.value)


def test_bench_needs_one_model_source():
    result = CliRunner().invoke(main, ["bench"])
    assert result.exit_code == 1
    assert "give exactly one of --model or --geometry" in result.output


def test_warm_up_then_each_run_is_a_whole_prefill_and_the_decode_steps():
    calls = []

    def first(prompt):
        calls.append(("first", len(prompt)))
        return torch.zeros(1)

    def step(token):
        calls.append(("step",))
        return token

    def between():
        calls.append(("between",))

    cpu = torch.device("cpu")
    prefill_runs, decode_runs = timed_runs(first, step, torch.arange(40), 3, 2, cpu, between)
    assert len(prefill_runs) == len(decode_runs) == 2
    warm_up = [("first", WARMUP_PROMPT), ("step",)]
    run = [("first", 40), ("step",), ("step",), ("step",), ("between",)]
    assert calls == warm_up + 2 * run


def test_medians_spreads_and_the_bound_are_computed_from_the_runs():
    r = BenchResult(
        engine="gptoss-lite",
        device="cpu",
        kernels="torch",
        prompt_tokens=100,
        gen_tokens=10,
        prefill_runs=[1.0, 4.0, 2.0],
        decode_runs=[2.0, 1.0, 5.0],
        decode_bytes_per_token=3 * 10**9,
        peak_memory_bytes=None,
        peak_memory_kind="unknown",
        read_runs=[15e9, 20e9, 17e9],
    )
    assert (r.prefill_seconds, r.decode_seconds, r.repeats) == (2.0, 2.0, 3)
    assert (r.prefill_tok_s, r.decode_tok_s, r.ms_per_token) == (50.0, 5.0, 200.0)
    assert r.decode_tok_s_stdev == pytest.approx(statistics.stdev([5.0, 10.0, 2.0]))
    assert r.decode_gb_s == 15.0  # 3 GB per token at 5 tok/s
    assert r.read_bytes_per_s == 20e9  # the fastest probe
    assert r.bound_ms_per_token == 150.0  # 3 GB at 20 GB/s
    assert r.bound_pct == 75.0
    assert BenchResult.from_dict(r.to_dict()) == r


def test_bench_parallel_alternates_rounds_and_reports_the_ratio(checkpoint, monkeypatch):
    """`--parallel 3`: a warm-up round of 1 and of 3 streams, then per repeat one of each; the
    aggregate counts every stream's tokens after the last first token."""
    from gptoss_lite.engine.batch import Batch

    rounds = []
    add = Batch.add

    def counted(batch, request):
        rounds.append(len(batch.running) + 1)
        return add(batch, request)

    monkeypatch.setattr(Batch, "add", counted)
    folder = checkpoint("g1")
    args = ["bench", "--model", str(folder), "--device", "cpu", "--prompt-tokens", "6",
            "--gen-tokens", "4", "-r", "2", "--parallel", "3", "--json"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["parallel"]
    assert rounds == [1, 1, 2, 3] * 3  # rounds of 1 and 3 streams, each added at once
    assert report["streams"] == 3 and len(report["solo_runs"]) == len(report["batch_runs"]) == 2
    assert report["speedup"] == report["batch_tok_s"] / report["solo_tok_s"]
    assert report["solo_tok_s"] == statistics.median(report["solo_runs"]) > 0


def test_bench_parallel_refuses_what_it_does_not_measure(checkpoint):
    args = ["bench", "--model", str(checkpoint("g1")), "--parallel", "2", "--cuda-graph"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "drop --compare, --cuda-graph" in result.output
