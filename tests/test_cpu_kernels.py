"""The compiled CPU kernels (kernels/cpu) against `mxfp4.dequantize` and the torch expert math.

Every instruction set this CPU has is tested, the portable C one always. References are computed
in float64 from the weights `mxfp4.dequantize` decodes (exactly representable), so they are exact
to ~1e-16 and the kernels' fp32 error can be bounded: any order of summing n products has a
first-order error of at most n·u·Σ|products| (u = 2**-24), which is the tolerance used below.
"""

from __future__ import annotations

import subprocess
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gptoss_lite
from gptoss_lite import GptossError
from gptoss_lite.kernels import cpu
from gptoss_lite.kernels.cpu import build
from gptoss_lite.model import moe
from gptoss_lite.model.moe import PackedExperts
from gptoss_lite.model.mxfp4 import dequantize

pytestmark = pytest.mark.skipif(not cpu.available(), reason="no C compiler for the CPU kernels")
# Every instruction set this CPU runs, narrowest first.
ISAS = cpu.ISAS[: cpu.ISAS.index(cpu.best_isa()) + 1] if cpu.available() else ()
BF16_ISA = "avx512bf16"  # the instruction set whose MXFP4 rows read bf16 inputs as bf16
needs_bf16 = pytest.mark.skipif(
    BF16_ISA not in ISAS, reason="this CPU has no AVX-512 BF16 and VBMI"
)
U = 2.0**-24  # fp32 unit roundoff
TINY = 2.0**-149  # smallest fp32 subnormal: the absolute error of a product that underflows
SLOPE = 1.1  # Lipschitz constant of g·sigmoid(alpha·g) in g (its derivative peaks at 1.0998)
ALPHA, LIMIT = 1.702, 7.0


def summation_bound(n: int, abs_sum: torch.Tensor) -> torch.Tensor:
    return n * U * abs_sum + n * TINY


# ------------------------------------------------------------------ MXFP4 matmul


@pytest.mark.parametrize("isa", ISAS)
def test_every_code_and_scale_decodes_exactly(isa):
    # Row r has scale r (0..255) in every block, plus a 257th row (odd: not a whole tile of 2)
    # with scale 127; the bytes cycle through all 256 values, so every code meets every scale
    # in both nibbles. One-hot inputs make each output a single product: W[r, k] itself.
    rows, groups = 257, 3
    blocks = (torch.arange(rows * groups * 16) % 256).to(torch.uint8).view(rows, groups, 16)
    scales = torch.cat([torch.arange(256), torch.tensor([127])]).to(torch.uint8)
    scales = scales[:, None].expand(rows, groups).contiguous()
    eye = torch.eye(groups * 32)
    got = cpu.mxfp4_linear(eye, blocks, scales, isa=isa)  # (K, rows) = W^T
    ref = dequantize(blocks, scales, torch.float32).T
    finite = ref.isfinite().all(dim=0)  # rows whose weights all fit fp32
    assert finite.sum() == rows - 3 and torch.equal(got[:, finite], ref[:, finite])
    # Scales 253 and 254 overflow fp32 for the larger codes, and 255 (NaN in the OCP spec, unused
    # by checkpoints) decodes as 2**128 = inf, all as in the reference; a non-finite weight makes
    # the outputs it meets non-finite (and 0·inf = NaN).
    assert not got[:, ~finite][~ref[:, ~finite].isfinite()].isfinite().any()


@needs_bf16
def test_the_bf16_input_kernels_decode_every_code_and_scale_exactly():
    # As above, with bf16 inputs, which the bf16 pair product reads: every weight comes out
    # exactly, except those below 2**-126 (scale 0, and code 0.5 at scale 1), which that
    # instruction counts as zero.
    rows, groups = 257, 3
    blocks = (torch.arange(rows * groups * 16) % 256).to(torch.uint8).view(rows, groups, 16)
    scales = torch.cat([torch.arange(256), torch.tensor([127])]).to(torch.uint8)
    scales = scales[:, None].expand(rows, groups).contiguous()
    eye = torch.eye(groups * 32, dtype=torch.bfloat16)
    got = cpu.mxfp4_linear(eye, blocks, scales, isa=BF16_ISA)
    ref = dequantize(blocks, scales, torch.float32).T
    ref = torch.where(ref.abs() < 2.0**-126, torch.zeros_like(ref), ref)
    assert (ref[:, :2] == 0).any() and (ref[:, 1] != 0).any()  # the flush is exercised
    finite = ref.isfinite().all(dim=0)  # non-finite weights: as the fp32 kernels (above)
    assert finite.sum() == rows - 3 and torch.equal(got[:, finite], ref[:, finite])
    assert not got[:, ~finite][~ref[:, ~finite].isfinite()].isfinite().any()


@needs_bf16
@pytest.mark.parametrize("tokens", [1, 3, 11])
def test_bf16_inputs_sum_bit_for_bit_as_the_fp32_kernel_sums_them(tokens):
    # The bf16 pair product adds a lane's two exact products in the order of the fp32 kernel's
    # two fused multiply-adds, each rounded: the same floats wherever nothing falls below
    # 2**-126 (normal scales, inputs near 1).
    g = torch.Generator().manual_seed(tokens)
    rows, groups = 45, 5
    blocks = torch.randint(0, 256, (rows, groups, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(100, 150, (rows, groups), dtype=torch.uint8, generator=g)
    x = torch.randn(tokens, groups * 32, generator=g).bfloat16()
    bias = torch.randn(rows, generator=g)
    ours = cpu.mxfp4_linear(x, blocks, scales, bias, isa=BF16_ISA)
    assert torch.equal(ours, cpu.mxfp4_linear(x.float(), blocks, scales, bias, isa="avx512"))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("tokens", [1, 3, 11])
def test_matmul_matches_dequantize_and_linear(isa, tokens):
    g = torch.Generator().manual_seed(tokens)
    rows, groups = 45, 5  # odd row count
    blocks = torch.randint(0, 256, (rows, groups, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(100, 150, (rows, groups), dtype=torch.uint8, generator=g)  # finite sums
    x = torch.randn(tokens, groups * 32, generator=g)
    bias = torch.randn(rows, generator=g)
    w = dequantize(blocks, scales, torch.float64)
    ref = F.linear(x.double(), w, bias.double())
    bound = summation_bound(groups * 32 + 1, x.double().abs() @ w.abs().T + bias.abs())
    got = cpu.mxfp4_linear(x, blocks, scales, bias, isa=isa).double()
    assert ((got - ref).abs() <= bound).all()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_mxfp4_row_sums_the_same_alone_or_with_other_inputs(isa, dtype):
    # One input goes through the four-row kernel, several through the two-row one: each row's
    # sum must come out bit for bit the same, every code and scale included (inf and NaN too),
    # for fp32 inputs and for bf16 ones (which some instruction sets read as bf16).
    g = torch.Generator().manual_seed(5)
    rows, groups = 257, 3  # rows not a whole number of fours
    blocks = (torch.arange(rows * groups * 16) % 256).to(torch.uint8).view(rows, groups, 16)
    scales = torch.cat([torch.arange(256), torch.tensor([127])]).to(torch.uint8)
    scales = scales[:, None].expand(rows, groups).contiguous()
    x = torch.randn(3, groups * 32, generator=g).to(dtype)
    bias = torch.randn(rows, generator=g)
    together = cpu.mxfp4_linear(x, blocks, scales, bias, isa=isa)
    for j in range(3):
        alone = cpu.mxfp4_linear(x[j : j + 1], blocks, scales, bias, isa=isa)
        torch.testing.assert_close(alone, together[j : j + 1], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_expert_sums_a_token_the_same_alone_or_with_others(isa, dtype):
    # A token alone in its experts takes the four-row kernels, tokens sharing them the two-row
    # ones: its output must not change by a bit.
    g = torch.Generator().manual_seed(9)
    packed = random_experts(4, 96, 160, g)
    x = torch.randn(3, 96, generator=g).to(dtype)
    idx = torch.tensor([[2, 0]] * 3)
    weight = torch.rand(3, 2, generator=g)
    together = cpu.experts_forward(x, idx, weight, packed, ALPHA, LIMIT, isa=isa)
    for t in range(3):
        alone = cpu.experts_forward(
            x[t : t + 1], idx[t : t + 1], weight[t : t + 1], packed, ALPHA, LIMIT, isa=isa
        )
        assert torch.equal(alone, together[t : t + 1])


# ------------------------------------------------------------------ experts


def random_experts(e: int, h: int, i: int, g: torch.Generator) -> PackedExperts:
    def packed(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = torch.randint(0, 256, (e, rows, cols // 32, 16), dtype=torch.uint8, generator=g)
        return blocks, torch.randint(
            119, 125, (e, rows, cols // 32), dtype=torch.uint8, generator=g
        )

    b1, s1 = packed(2 * i, h)
    b2, s2 = packed(h, i)
    return PackedExperts(
        b1, s1, torch.randn(e, 2 * i, generator=g), b2, s2, torch.randn(e, h, generator=g)
    )


def expert_reference(x, idx, weight, experts):
    """The model's own experts_forward in float64, and a bound on the kernel's fp32 error.

    gate_up sums H products and a bias (n·u); SwiGLU carries that error with slope at most
    SLOPE·(LIMIT+1) in the gate and LIMIT in up, and rounds a few ulps itself; down adds the
    error of summing I more products and a bias; the weighted sum of k experts adds k·u."""
    as64 = PackedExperts(*(t if t.dtype == torch.uint8 else t.double() for t in experts.tensors()))
    ref = moe.experts_forward(x.double(), idx, weight.double(), as64, ALPHA, LIMIT)
    h, i = x.shape[1], experts.down_blocks.shape[2] * 32
    bound = torch.zeros_like(ref)
    for t in range(x.shape[0]):
        for slot, e in enumerate(idx[t].tolist()):
            w1 = dequantize(experts.gate_up_blocks[e], experts.gate_up_scales[e], torch.float64)
            w2 = dequantize(experts.down_blocks[e], experts.down_scales[e], torch.float64)
            xt = x[t].double()
            pre = w1 @ xt + as64.gate_up_bias[e]
            e1 = summation_bound(h + 1, w1.abs() @ xt.abs() + as64.gate_up_bias[e].abs())
            a = moe.swiglu(pre, ALPHA, LIMIT)
            ea = SLOPE * (LIMIT + 1) * e1[::2] + LIMIT * e1[1::2] + 8 * U * a.abs()
            y = w2 @ a + as64.down_bias[e]
            ey = w2.abs() @ ea + summation_bound(
                i + 1, w2.abs() @ a.abs() + as64.down_bias[e].abs()
            )
            wt = weight[t, slot].double()
            bound[t] += wt * ey + summation_bound(idx.shape[1], (wt * y).abs())
    return ref, bound


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    ("experts", "hidden", "intermediate", "k", "tokens", "threads"),
    [
        (5, 64, 96, 1, 1, 1),  # one expert per token, decode
        (6, 96, 160, 3, 3, 3),  # three experts per token, threads splitting 48 row pairs unevenly
        (4, 96, 64, 3, 11, 2),  # several tokens: more than one 8-token pass per expert
    ],
)
def test_experts_match_the_torch_experts(isa, experts, hidden, intermediate, k, tokens, threads):
    g = torch.Generator().manual_seed(hidden + tokens)
    packed = random_experts(experts, hidden, intermediate, g)
    x = torch.randn(tokens, hidden, generator=g)
    idx = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(tokens)])
    weight = torch.softmax(torch.randn(tokens, k, generator=g), dim=-1)
    ref, bound = expert_reference(x, idx, weight, packed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = cpu.experts_forward(x, idx, weight, packed, ALPHA, LIMIT, isa=isa).double()
    finally:
        torch.set_num_threads(before)
    assert ((got - ref).abs() <= bound).all()
    assert (got - ref).abs().max() > 0 or tokens == 1  # not the reference itself


def test_results_do_not_depend_on_the_thread_count():
    g = torch.Generator().manual_seed(1)
    packed = random_experts(4, 64, 96, g)
    x = torch.randn(5, 64, generator=g)
    idx = torch.randint(0, 4, (5, 2), generator=g)
    weight = torch.rand(5, 2, generator=g)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(cpu.experts_forward(x, idx, weight, packed, ALPHA, LIMIT))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


# ------------------------------------------------------------------ bf16 matvec


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("tokens", [1, 3, 8, 19])
def test_bf16_linear_matches_torch(isa, tokens):
    g = torch.Generator().manual_seed(tokens)
    rows, k = 1001, 88  # odd rows, a row length that is not a whole number of vectors
    w = torch.randn(rows, k, generator=g).bfloat16()
    bias = torch.randn(rows, generator=g).bfloat16()
    x = torch.randn(tokens, k, generator=g).bfloat16()
    ref = F.linear(x.double(), w.double(), bias.double())
    bound = summation_bound(k + 1, x.double().abs() @ w.double().abs().T + bias.double().abs())
    got = cpu.linear(x, w, bias, isa=isa)
    assert got.dtype == torch.bfloat16
    # The kernel sums in fp32 and rounds once to bf16 (2**-9 relative), as torch's own bf16 linear.
    assert ((got.double() - ref).abs() <= bound + 2.0**-8 * ref.abs()).all()
    torch.testing.assert_close(got, F.linear(x, w, bias), rtol=2**-7, atol=0)


@pytest.mark.parametrize("isa", ISAS)
def test_a_bf16_row_sums_the_same_alone_or_with_other_inputs(isa):
    # One input goes through the four-row kernel, several through the two-row one: each row's
    # fp32 sum must come out bit for bit the same (the decode step relies on it).
    g = torch.Generator().manual_seed(7)
    rows, k = 203, 2888  # rows not a whole number of fours, k not of vectors
    w = torch.randn(rows, k, generator=g).bfloat16()
    x = torch.randn(11, k, generator=g)  # more than one pass of MAX_TOKENS inputs
    together = cpu.linear(x, w, isa=isa)
    for j in range(11):
        assert torch.equal(cpu.linear(x[j : j + 1], w, isa=isa), together[j : j + 1])


def bf16_rows(x: torch.Tensor, w: torch.Tensor, isa: str) -> torch.Tensor:
    """x [T, K] · w^T by the bf16 row kernels of `isa`, in fp32 as they sum it (`linear`
    rounds to x's dtype); bf16 x goes to the kernels for bf16 values."""
    t, (rows, k) = x.shape[0], w.shape
    xf, y, scratch = x.float().contiguous(), torch.empty(t, rows), torch.empty(t, k)
    f32 = torch.float32
    cpu._library().gl_bf16_matmul(
        cpu.ISAS.index(isa),
        cpu._p(w, torch.bfloat16, rows, k),
        None,
        cpu._p(xf, f32, t, k),
        x.dtype == torch.bfloat16,
        cpu._p(scratch, f32, t, k),
        cpu._p(y, f32, t, rows),
        rows,
        k,
        t,
        1,
    )
    return y


@needs_bf16
def test_bf16_inputs_sum_bit_for_bit_as_the_fp32_bf16_rows_sum_them():
    # The pair kernels put a lane's elements l and 16 + l in one pair, the first where the
    # instruction adds first: the fp32 kernel's lane order, so the same floats, alone (four
    # rows a pass), with up to three others (four rows a pass) and with more (two rows a pass).
    g = torch.Generator().manual_seed(3)
    rows, k = 203, 2880
    w = torch.randn(rows, k, generator=g).bfloat16()
    x = torch.randn(6, k, generator=g).bfloat16()
    together = bf16_rows(x, w, BF16_ISA)
    assert torch.equal(together, bf16_rows(x.float(), w, "avx512"))
    assert torch.equal(bf16_rows(x[:3], w, BF16_ISA), together[:3])
    for j in range(6):
        assert torch.equal(bf16_rows(x[j : j + 1], w, BF16_ISA), together[j : j + 1])


def test_bf16_linear_leaves_larger_inputs_to_torch(monkeypatch):
    monkeypatch.setattr(cpu, "_library", lambda: pytest.fail("the kernel ran"))
    x, w = torch.randn(cpu.BF16_ROWS + 1, 32).bfloat16(), torch.randn(5, 32).bfloat16()
    assert torch.equal(cpu.linear(x, w), F.linear(x, w))
    x32, w32 = x.float(), w.float()
    assert torch.equal(cpu.linear(x32[:1], w32), F.linear(x32[:1], w32))


# ------------------------------------------------------------------ build, cache, dispatch


def test_library_is_cached_by_source_compiler_machine_and_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    compiler = build.compiler()
    first = build.compile_library(compiler, build.FLAGS)
    assert first.parent == tmp_path / "gptoss-lite" / "kernels"
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary left

    def no_compiler(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(subprocess, "run", no_compiler)
    assert build.compile_library(compiler, build.FLAGS) == first
    with pytest.raises(AssertionError, match="compiled again"):
        build.compile_library(compiler, (*build.FLAGS, "-DOTHER"))
    assert list(first.parent.iterdir()) == [first]  # the failed build left nothing
    monkeypatch.setattr(build.platform, "machine", lambda: "riscv64")
    assert build.library_path(compiler, build.FLAGS) != first  # another machine's library
    monkeypatch.undo()
    monkeypatch.setattr(build, "compiler_version", lambda path: "gcc 99.1")
    assert build.library_path(compiler, build.FLAGS) != first  # the same path, upgraded


def fake_compiler(folder: Path, script: str) -> str:
    """A compiler at `folder/cc` that runs the shell `script` (after answering --version)."""
    path = folder / "cc"
    path.write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo "fake cc 1.0" && exit 0\n{script}\n')
    path.chmod(0o755)
    return str(path)


def test_a_failed_build_says_why_in_one_line_and_keeps_the_log(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fails = "echo 'In file included from x.c:1:' >&2; echo 'x.c:3:7: error: boom' >&2; exit 1"
    monkeypatch.setenv("CC", fake_compiler(tmp_path, fails))
    assert build.load_library() is None
    [record] = caplog.records
    notice = record.getMessage()
    assert "\n" not in notice and record.levelname == "WARNING"
    assert "failed: x.c:3:7: error: boom (full output: " in notice and "slow torch path" in notice
    log = Path(notice.split("(full output: ")[1].split(")")[0])
    assert "In file included from x.c:1:" in log.read_text()  # the whole output is kept


def test_a_build_without_openmp_says_it_runs_on_one_thread(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    real = build.compiler()
    refuse = 'echo "cc: error: unsupported option -fopenmp" >&2; exit 1'
    no_openmp = f'case "$*" in *-fopenmp*) {refuse};; esac\nexec {real} "$@"'
    monkeypatch.setenv("CC", fake_compiler(tmp_path, no_openmp))
    assert build.load_library() is not None
    [record] = caplog.records
    assert "built without OpenMP" in record.getMessage() and "one thread" in record.getMessage()
    assert "unsupported option -fopenmp" in record.getMessage()


def test_without_a_compiler_the_torch_path_runs_and_says_so(monkeypatch, caplog):
    from gptoss_lite.engine.runner import _kernels
    from gptoss_lite.kernels import kernel_functions

    monkeypatch.setattr(build, "compiler", lambda: None)
    cpu._library.cache_clear()
    try:
        assert not cpu.available()
        assert _kernels("auto", torch.device("cpu")) == "torch"
        with pytest.raises(GptossError, match="need a C compiler"):
            kernel_functions("cpu")
    finally:
        cpu._library.cache_clear()
    [notice] = [r.getMessage() for r in caplog.records]  # one notice, however often asked
    assert "slow torch path" in notice and "install one (gcc or clang" in notice


def test_nothing_is_built_when_nothing_runs_on_the_cpu_kernels(checkpoint, monkeypatch):
    # As on a GPU machine without a compiler: neither the model's kernels nor any experts in
    # host RAM are the compiled CPU ones, so the library is never asked for.
    monkeypatch.setattr(cpu, "_library", lambda: pytest.fail("the CPU kernels were built"))
    runner = gptoss_lite.load(checkpoint("g1"), device="cpu", context=64, kernels="torch")
    assert runner.model.kernel_name == "torch"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("int32 ids", r"torch.int64 tensor of shape \[\d+\] here, not torch.int32"),
        ("int8 blocks", r"torch.uint8 tensor of shape \[4, 128, 2, 16\] here, not torch.int8"),
        ("fewer experts", r"expert ids must lie in \[0, 3\)"),
        ("negative id", r"expert ids must lie in \[0, 4\)"),
        ("wider scales", r"shape \[4, 128, 2\] here, not torch.uint8 \[4, 128, 3\]"),
    ],
)
def test_the_kernel_boundary_refuses_wrong_dtypes_and_shapes(change, message):
    g = torch.Generator().manual_seed(2)
    packed = random_experts(4, 64, 64, g)
    x, weight = torch.randn(3, 64, generator=g), torch.rand(3, 2, generator=g)
    idx = torch.tensor([[0, 3], [1, 2], [3, 1]])
    if change == "int32 ids":
        idx = idx.int()
    elif change == "int8 blocks":
        packed = replace(packed, gate_up_blocks=packed.gate_up_blocks.view(torch.int8))
    elif change == "fewer experts":
        packed = PackedExperts(*(t[:3] for t in packed.tensors()))
    elif change == "negative id":
        idx[1, 0] = -1
    else:
        wider = torch.cat([packed.gate_up_scales] * 2, dim=2)[..., :3].contiguous()
        packed = replace(packed, gate_up_scales=wider)
    with pytest.raises(GptossError, match=message):
        cpu.experts_forward(x, idx, weight, packed, ALPHA, LIMIT)


def test_the_bf16_kernel_refuses_a_bias_of_the_wrong_length():
    w, x = torch.randn(5, 32).bfloat16(), torch.randn(1, 32).bfloat16()
    with pytest.raises(GptossError, match=r"shape \[5\] here, not torch.float32 \[4\]"):
        cpu.linear(x, w, torch.randn(4).bfloat16())


def test_isa_is_chosen_once_and_can_be_forced(monkeypatch):
    assert cpu.kernel_name() == f"cpu-{ISAS[-1]}"  # the widest this CPU has
    cpu.best_isa.cache_clear()
    try:
        monkeypatch.setenv(cpu.ISA_ENV, "portable")
        assert cpu.kernel_name() == "cpu-portable"
        cpu.best_isa.cache_clear()
        monkeypatch.setenv(cpu.ISA_ENV, "sse9")
        with pytest.raises(GptossError, match="use one of portable, avx2, avx512"):
            cpu.best_isa()
    finally:
        monkeypatch.delenv(cpu.ISA_ENV)
        cpu.best_isa.cache_clear()


# ------------------------------------------------------------------ in the model


def test_model_runs_the_experts_from_the_packed_bytes(checkpoint, monkeypatch):
    runner = gptoss_lite.load(checkpoint("g2"), device="cpu", dtype=torch.float32, context=64)
    assert runner.model.kernel_name == cpu.kernel_name()
    ids = list(range(5, 25))
    ref = gptoss_lite.load(
        checkpoint("g2"), device="cpu", dtype=torch.float32, context=64, kernels="torch"
    ).logits(ids)
    monkeypatch.setattr(moe.mxfp4, "dequantize", lambda *a: pytest.fail("a dense copy was made"))
    # Both sum fp32 products in different orders (see the tests above): logits of magnitude
    # ~5 agree to ~1e-6; 1e-4 leaves room for a near-tied routing decision to stay the same.
    torch.testing.assert_close(runner.logits(ids), ref, rtol=0, atol=1e-4)


def test_host_experts_split_runs_the_same_code_on_cpu(checkpoint):
    # Both "devices" are the CPU here: the split layers still hand their activations to the
    # host-side kernel and take the result back, through the code a GPU run uses.
    folder = checkpoint("g1")
    ids = list(range(3, 30))
    whole = gptoss_lite.load(folder, device="cpu", dtype=torch.float32, context=64)
    split = gptoss_lite.load(folder, device="cpu", dtype=torch.float32, context=64, cpu_experts=2)
    assert split.plan.cpu_experts == 2 and split.model.host_experts == 2
    names = [f.name for f in fields(PackedExperts)]
    assert split.model.host_parameters() == {f"mlp.{n}.{name}" for n in (0, 1) for name in names}
    kinds = [block.run_experts.__qualname__.split(".")[0] for block in split.model.mlp]
    assert kinds == ["on_host", "on_host", "experts_forward"]
    assert split.model.kernel_name.endswith(f"host experts {cpu.kernel_name()}")
    assert torch.equal(split.logits(ids), whole.logits(ids))  # the same kernel on both sides
    every = gptoss_lite.load(
        folder, device="cpu", dtype=torch.float32, context=64, cpu_experts="all"
    )
    assert every.model.host_experts == 3
    with pytest.raises(GptossError, match=r"cpu_experts 4: \S+ has 3 layers; use 0\.\.3 or 'all'"):
        gptoss_lite.load(folder, device="cpu", context=64, cpu_experts=4)


def test_the_read_probe_gives_a_rate():
    # From 0.1 GB/s to 10 TB/s: a rate, where a broken clock or an empty pass would give 0 or
    # an absurd figure.
    for threads in (1, 2):
        assert 1e8 < cpu.read_rate(threads, 64 * 1024 * 1024) < 1e13
