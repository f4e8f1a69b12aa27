"""The memory report: measured against the plan on tiny models, in memory and from files."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from conftest import GEOMETRIES

import gptoss_lite
from gptoss_lite import GptossError
from gptoss_lite.checkpoint.reader import open_checkpoint
from gptoss_lite.checkpoint.synthetic import tensor_nbytes
from gptoss_lite.checkpoint.synthetic_memory import SyntheticCheckpoint
from gptoss_lite.cli import main
from gptoss_lite.kernels import cpu as cpu_kernels
from gptoss_lite.measure.meter import CpuMeter
from gptoss_lite.measure.vram_report import measure_memory
from gptoss_lite.measure.vram_report_files import PNG_SKIPPED, write_report
from gptoss_lite.memory.plan import plan
from gptoss_lite.memory.profiles import load_profile

G1 = GEOMETRIES["g1"].with_(max_context=4096)
CPU = load_profile("cpu")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cpu(chunk: int):
    return replace(CPU, prefill_chunk=chunk)


@pytest.fixture(scope="module")
def report():
    return measure_memory(
        SyntheticCheckpoint(G1, seed=3),
        profile=cpu(32),
        context=512,
        prompt_tokens=100,
        gen_tokens=3,
    )


@pytest.fixture(scope="module")
def written(report, tmp_path_factory):
    return write_report(report, tmp_path_factory.mktemp("report"))


# ------------------------------------------------------------------ files and schema


def test_files_written(written):
    assert [f.name for f in written] == ["report.md", "report.json", "report.png"]
    md = written[0].read_text()
    assert md.startswith("# Memory profile: g1 (synthetic, seed 3) on cpu")
    assert "**PLAN HELD: " in md and "![memory chart](report.png)" in md
    assert "| experts | 0.24 | 0.24 | +0.00% |" in md  # 3 layers × 8 experts × 10,304 B


def test_png_is_a_valid_png(written):
    import matplotlib.image

    raw = written[2].read_bytes()
    assert raw[:8] == PNG_SIGNATURE and raw[12:16] == b"IHDR"
    height, width, _ = matplotlib.image.imread(written[2]).shape
    assert (width, height) == (13 * 110, 5 * 110)


def test_json_schema(written):
    data = json.loads(written[1].read_text())
    assert data["schema"] == "gptoss-lite/memory-report/1"
    assert {
        "model",
        "device",
        "profile",
        "context",
        "prefill_chunk",
        "plan",
        "weights",
        "cache_bytes",
        "phases",
        "comparison",
        "verdict",
        "measured_with",
    } <= set(data)
    assert (data["device"], data["context"], data["prefill_chunk"]) == ("cpu", 512, 32)
    assert (
        data["kernels"] == (cpu_kernels.kernel_name() if cpu_kernels.available() else "torch")
        and data["cap_bytes"] is None
    )
    assert [p["name"] for p in data["phases"]] == ["load", "prefill", "decode"]
    keys = {
        "tokens",
        "seconds",
        "tokens_per_s",
        "start",
        "allocated",
        "peak",
        "resident",
        "resident_peak",
        "activations",
        "error",
    }
    assert all(keys <= set(p) for p in data["phases"])
    names = [r["name"] for r in data["comparison"]]
    assert names == [
        "experts",
        "attention",
        "router",
        "norms",
        "embedding",
        "lm_head",
        "weights",
        "KV cache",
        "activations (peak)",
        "tensors at peak",
        "RSS peak (vs budget)",
    ]
    assert data["verdict"]["held"] is True


# ------------------------------------------------------------------ numbers


def test_weights_per_category_equal_the_plan_to_the_byte(report):
    assert report.weights == report.plan.weights and report.host_weights == {}
    assert sum(report.weights.values()) == report.plan.weights_bytes
    assert all(r.diff_pct == 0 for r in report.weight_rows())


def test_numbers_agree_with_each_other(report):
    load, prefill, decode = report.phases
    assert report.cache_bytes == report.plan.kv_bytes  # exact
    ring_pos = 8 * G1.sliding_window
    assert load.reading.allocated == report.plan.weights_bytes + report.cache_bytes + ring_pos
    assert load.reading.peak is None  # CPU tensors are counted from the load on
    assert prefill.start == load.reading.allocated and decode.start == prefill.reading.allocated
    for phase in (prefill, decode):
        assert phase.reading.peak >= phase.start >= load.reading.allocated
        assert phase.reading.resident_peak >= phase.reading.resident > 0
        assert 0 < phase.activations <= report.plan.activation_bytes
    assert report.tensor_peak == max(prefill.reading.peak, decode.reading.peak)


def test_written_checkpoint_equals_in_memory_and_reports_the_same(checkpoint):
    config = GEOMETRIES["g1"]
    ids = list(range(20))
    memory = gptoss_lite.load(SyntheticCheckpoint(config, seed=0), device="cpu", context=64)
    files = gptoss_lite.load(checkpoint("g1"), device="cpu", context=64)
    assert torch.equal(memory.logits(ids), files.logits(ids))
    on_file = measure_memory(
        checkpoint("g1"), profile=cpu(16), context=64, prompt_tokens=20, gen_tokens=2
    )
    assert on_file.weights == on_file.plan.weights and on_file.cache_bytes == on_file.plan.kv_bytes
    assert on_file.verdict()[0] and on_file.model == str(checkpoint("g1"))


@pytest.mark.parametrize("kv", ["q8", "fp8,bf16"])
def test_quantized_cache_is_the_planned_bytes_and_the_plan_holds(kv):
    r = measure_memory(
        SyntheticCheckpoint(G1), profile=cpu(32), context=256, prompt_tokens=40, gen_tokens=2,
        kv_cache_dtype=kv,
    )  # fmt: skip
    assert str(r.plan.kv_cache_dtype) == kv
    bf16 = plan(G1, cpu(32), 256).kv_bytes
    assert r.cache_bytes == r.plan.kv_bytes < bf16  # codes + scales, to the byte
    assert r.verdict()[0], r.verdict()[1]


def test_long_prefill_stays_within_the_chunks_activation_plan():
    """A 1536-token prompt (two key blocks) prefilled in chunks of 64 peaks within the plan for
    a 64-token chunk (+5% tolerance for the op-level accounting); in one chunk it would not,
    so the chunking is what bounds it."""
    source, n = SyntheticCheckpoint(G1), 1536

    def activations(chunk: int) -> int:
        r = measure_memory(source, profile=cpu(chunk), context=n, prompt_tokens=n, gen_tokens=0)
        return r.phase("prefill").activations

    bound = plan(G1, cpu(64), n).activation_bytes
    chunked, whole = activations(64), activations(n)
    assert 0.5 * bound < chunked <= 1.05 * bound
    assert whole > 4 * bound
    assert whole <= 1.05 * plan(G1, cpu(n), n).activation_bytes


def test_cpu_meter_counts_live_tensors_once():
    held = torch.zeros(1000)  # 4000 B
    meter = CpuMeter()
    meter.hold([held, held[:10]])  # a view of the same storage counts once
    with meter.phase() as reading:
        big = torch.ones(1 << 20, dtype=torch.uint8)  # 1 MiB, freed below
        view = held[5:]  # no new storage
        del big
        kept = torch.ones(1000, dtype=torch.uint8)
    assert meter.held == 4000
    assert reading.peak == 4000 + (1 << 20) and reading.allocated == 4000 + 1000
    del kept, view
    with meter.phase() as reading:
        pass
    assert reading.allocated == reading.peak == 4000


def test_verdict_flags_what_the_plan_missed(report):
    tight = replace(report.plan, activations={"resident": 0, "attention": 1000})
    held, line = replace(report, plan=tight).verdict()
    assert not held and "activations (peak)" in line and line.startswith("PLAN NOT HELD: ")
    off = replace(report, weights=report.weights | {"router": report.weights["router"] + 2})
    held, line = off.verdict()
    assert not held and f"router {report.weights['router'] + 2:,} B ≠" in line


def test_without_matplotlib_the_png_is_skipped(report, tmp_path, monkeypatch):
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    files = write_report(report, tmp_path)
    assert [f.name for f in files] == ["report.md", "report.json"]
    assert PNG_SKIPPED in files[0].read_text()


# ------------------------------------------------------------------ CLI


def test_cli_writes_the_report(tmp_path):
    args = [
        "profile",
        "--geometry",
        "tiny",
        "--profile",
        "cpu",
        "--context",
        "256",
        "--prompt-tokens",
        "40",
        "--gen-tokens",
        "2",
        "--out",
        str(tmp_path),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("PLAN HELD: ")
    assert "| weights | 49.38 | 49.38 | +0.00% |" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md", "report.png"]
    assert json.loads((tmp_path / "report.json").read_text())["model"] == "tiny (synthetic, seed 0)"


def test_cli_keeps_the_experts_asked_for_in_host_ram(tmp_path):
    args = ["profile", "--geometry", "tiny", "--profile", "cpu", "--context", "256"]
    args += ["--prompt-tokens", "8", "--gen-tokens", "1", "--cpu-experts", "1", "-o", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "report.json").read_text())["plan"]["cpu_experts"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--geometry", "gpt-oss-7b"], "error: unknown model preset 'gpt-oss-7b'; known: "),
        (["--geometry", "tiny", "--profile", "rtx9090"], "error: unknown profile 'rtx9090'"),
        (["--geometry", "tiny", "--model", "x"], "error: pass exactly one of --model"),
        ([], "error: pass exactly one of --model"),
        (["--model", "/nonexistent/ckpt"], "error: model '/nonexistent/ckpt' is neither"),
        (
            [
                "--geometry",
                "tiny",
                "--profile",
                "cpu",
                "--context",
                "256",
                "--prompt-tokens",
                "300",
            ],
            "error: the prompt (300 tokens) + 4 new tokens exceed the context of 256 tokens",
        ),
        (["--geometry", "tiny", "--profile", "cpu", "--enforce"], "error: --enforce caps"),
    ],
)
def test_cli_bad_input_is_one_line(args, message, tmp_path):
    result = CliRunner().invoke(main, ["profile", *args, "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.startswith(message) and result.output.count("\n") == 1, result.output


def test_synthetic_checkpoint_has_the_written_tensors(checkpoint):
    written = open_checkpoint(checkpoint("g1"))
    memory = SyntheticCheckpoint(GEOMETRIES["g1"])
    assert {n: (i.shape, i.dtype) for n, i in written.tensors.items()} == {
        n: (i.shape, i.dtype) for n, i in memory.tensors.items()
    }
    assert memory.nbytes == written.nbytes == tensor_nbytes(GEOMETRIES["g1"])
    with pytest.raises(GptossError, match="has no tensor 'lm_head.bias'"):
        memory.read("lm_head.bias")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_profile_without_cuda_is_one_line(tmp_path):
    args = ["profile", "--geometry", "tiny", "--profile", "rtx4090", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.output == (
        "error: this profile runs on CUDA and no CUDA device is available; "
        "use --profile cpu (or --device cpu)\n"
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_report_reads_the_allocator():
    r = measure_memory(
        SyntheticCheckpoint(G1),
        profile=replace(cpu(32), device="cuda"),
        context=512,
        prompt_tokens=100,
        gen_tokens=2,
        enforce=True,
    )
    load, prefill, _ = r.phases
    assert r.weights == r.plan.weights and r.cap_bytes == CPU.memory_bytes
    assert load.reading.allocated >= r.plan.weights_bytes + r.cache_bytes
    assert prefill.reading.peak >= prefill.start and load.reading.resident_peak > 0
    assert r.verdict()[0], r.verdict()[1]


def test_an_earlier_report_is_kept_unless_overwrite(tmp_path):
    (tmp_path / "report.md").write_text("mine")
    args = ["profile", "--geometry", "tiny", "--profile", "cpu", "--prompt-tokens", "8",
            "--gen-tokens", "1", "--out", str(tmp_path)]  # fmt: skip
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and "pass --overwrite" in refused.output
    assert (tmp_path / "report.md").read_text() == "mine"
    replaced = CliRunner().invoke(main, [*args, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert (tmp_path / "report.md").read_text() != "mine"


def test_overwrite_failing_mid_write_keeps_the_earlier_report(report, tmp_path, monkeypatch):
    import errno

    from gptoss_lite.measure import vram_report_files

    first = write_report(report, tmp_path / "out")
    before = {f.name: f.read_bytes() for f in first}

    def full_disk(report, path):
        path.write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vram_report_files, "draw_chart", full_disk)
    with pytest.raises(GptossError, match="No space left on device; nothing was written"):
        write_report(replace(report, prompt_tokens=99), tmp_path / "out")
    assert {f.name: f.read_bytes() for f in (tmp_path / "out").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_profile_without_cuda_is_one_line_for_every_command(checkpoint):
    folder = str(checkpoint("g1"))
    line = "error: this profile runs on CUDA and no CUDA device is available; "
    for args in (
        ["run", "--model", folder, "--profile", "rtx4090", "hello"],
        ["chat", "--model", folder, "--profile", "rtx4090"],
        ["bench", "--model", folder, "--profile", "rtx4090"],
        ["profile", "--model", folder, "--profile", "rtx4090"],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and result.output.startswith(line), result.output
        assert result.output.count("\n") == 1
    with pytest.raises(GptossError, match="no CUDA device is available; use --profile cpu"):
        gptoss_lite.load(SyntheticCheckpoint(G1), profile="rtx4090")
    with pytest.raises(GptossError, match="--device cuda:1: no CUDA device is available here"):
        gptoss_lite.load(SyntheticCheckpoint(G1), device="cuda:1")
    # The plan is arithmetic: it needs no GPU.
    result = CliRunner().invoke(main, ["plan", "--model", folder, "--profile", "rtx4090"])
    assert result.exit_code == 0, result.output


def test_all_sliding_model_runs_at_the_context_its_caps_allow(tmp_path):
    # `synth --layers 1`: layer 0 is sliding, so nothing grows with the context.
    one = G1.with_(num_layers=1)
    runner = gptoss_lite.load(SyntheticCheckpoint(one), profile=cpu(32))
    assert (runner.plan.kv_bytes_per_token, runner.context) == (0, one.max_context)
    assert len(list(runner.generate(range(20), max_new_tokens=12, temperature=0))) == 12
    args = ["profile", "--geometry", "tiny", "--profile", "cpu", "--prompt-tokens", "16",
            "--gen-tokens", "2", "--out", str(tmp_path)]  # fmt: skip
    result = CliRunner().invoke(main, args, env={"GPTOSS_LITE_BUDGET": "8"})
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "report.json").read_text())["plan"]["budget_bytes"] == 8 << 30


def test_parallel_sequences_each_hold_their_planned_kv_cache():
    """Three sequences: each one's KV cache is the plan's to the byte, and the decode steps of
    all three together stay within the planned activations."""
    r = measure_memory(
        SyntheticCheckpoint(G1, seed=3), profile=cpu(32), context=256, prompt_tokens=40,
        gen_tokens=3, parallel=3,
    )  # fmt: skip
    held, line = r.verdict()
    assert held, line
    per_sequence = r.plan.kv_sequence_bytes
    assert r.sequence_bytes == [per_sequence] * 3 and r.cache_bytes == 3 * per_sequence
    rows = [row for row in r.rows() if row.name.startswith("KV cache, sequence")]
    assert [row.name for row in rows] == [f"KV cache, sequence {i} of 3" for i in (1, 2, 3)]
    assert all(row.plan == row.measured == per_sequence for row in rows)
    assert r.phase("decode").tokens == 3 and r.phase("decode").error is None
