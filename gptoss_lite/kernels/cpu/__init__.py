"""The compiled CPU kernels: MXFP4 experts straight from the packed bytes, and bf16 decode matvecs.

The C sources here are compiled the first time a kernel is to run on the CPU (`build`: cached, and
one notice where it fails, after which `available()` is False and the torch path runs). It is
called through ctypes with raw pointers, each checked first to be a contiguous CPU tensor of the
dtype and shape the C code reads (else a `GptossError`, never a wrong read). The instruction set
is chosen once, at the first use, from the CPU's features (`avx512bf16`: AVX-512 with VBMI and
BF16, `avx512`, `avx2`, else `portable` C); `GPTOSS_LITE_CPU_ISA` forces one.

Exact mode: activations in fp32, each weight decoded to exactly the float32 `mxfp4.dequantize`
gives, products summed in fp32 (in another order than torch: results agree to fp32 rounding).
Inputs that are bf16 values (a bf16 model's) are multiplied by `avx512bf16`'s bf16 pair product
where it gives the same sums as `avx512`'s fp32 arithmetic (anything below 2**-126 aside, which
it counts as zero).
Threads follow `torch.get_num_threads()`.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache

import torch
import torch.nn.functional as F

from ...errors import GptossError
from ...model.moe import PackedExperts
from .build import load_library
from .host_memory import HostArena

ISAS = ("portable", "avx2", "avx512", "avx512bf16")  # index = the C code's isa number
ISA_ENV = "GPTOSS_LITE_CPU_ISA"
DECODE_ROWS = 8  # rows of a decode step: those of a matrix of another dtype go one at a time
# Up to this many rows times a bf16 matrix are computed here, where torch's bf16 matmul is the
# slower (2-core Zen 4, 5120 x 2880: 1.2-1.5x at 9-16 rows, 1.1x at 24, even at 32, 0.7x at 64).
BF16_ROWS = 24

_i64, _int, _float = ctypes.c_int64, ctypes.c_int, ctypes.c_float
_ptr = ctypes.c_void_p
_SIGNATURES = {
    "gl_best_isa": ([], _int),
    "gl_mxfp4_matmul": (
        [_int, _ptr, _ptr, _ptr, _ptr, _int, _ptr, _ptr, _i64, _i64, _i64, _int],
        None,
    ),
    "gl_mxfp4_experts": (
        [_int, _i64, *[_ptr] * 3, _int, *[_ptr] * 8, _i64, _i64, _float, _float, *[_ptr] * 3, _int],
        None,
    ),
    "gl_bf16_matmul": ([_int, _ptr, _ptr, _ptr, _int, _ptr, _ptr, _i64, _i64, _i64, _int], None),
    "gl_decode_work": ([_ptr, _ptr, _i64, _int], _i64),
    "gl_decode_step": ([_ptr, _int, _i64, *[_ptr] * 7, _int], None),
    "gl_read_probe": ([_int, _ptr, _i64, _int, _i64, _int, _int], ctypes.c_double),
    "gl_quantize_q8": ([_ptr, _int, _i64, _i64, _ptr, _ptr, _int], None),
}
PROBE_BYTES = 512 * 1024 * 1024  # 16 times this machine's last-level cache and more
PROBE_ROUNDS = 5
# (rows in flight per thread, bytes prefetched ahead): as the kernels read, and a plain stream.
PROBE_PATTERNS = ((1, 0), (2, 1024), (4, 1024), (8, 512))


@cache
def _library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (with the notice given) when it cannot be built."""
    lib = load_library()
    if lib is None:
        return None
    for name, (args, result) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


def available() -> bool:
    """True when the compiled kernel library could be built and loaded."""
    return _library() is not None


@cache
def best_isa() -> str:
    """The instruction set the kernels use: the CPU's widest or the one forced."""
    forced = os.environ.get(ISA_ENV, "").strip().lower()
    widest = ISAS[_library().gl_best_isa()]
    if not forced:
        return widest
    if forced not in ISAS:
        raise GptossError(f"{ISA_ENV}={forced!r}: use one of {', '.join(ISAS)}")
    if ISAS.index(forced) > ISAS.index(widest):
        raise GptossError(f"{ISA_ENV}={forced}: this CPU supports at most {widest}")
    return forced


def kernel_name() -> str:
    """The kernels that run on this CPU: "cpu-avx512bf16", "cpu-avx512", "cpu-avx2", ..."""
    return f"cpu-{best_isa()}"


def _p(t: torch.Tensor | None, dtype: torch.dtype, *shape: int) -> int | None:
    """The address of `t`, which the C code reads as a contiguous CPU array of `dtype` and
    `shape` (None: a null pointer); a `GptossError` for any other tensor."""
    if t is None:
        return None
    if t.device.type != "cpu" or not t.is_contiguous():
        raise GptossError(f"the CPU kernels take contiguous CPU tensors, not one on {t.device}")
    if t.dtype != dtype or tuple(t.shape) != shape:
        raise GptossError(
            f"the CPU kernels take a {dtype} tensor of shape {list(shape)} here, "
            f"not {t.dtype} {list(t.shape)}"
        )
    return t.data_ptr()


def _isa(isa: str | None) -> int:
    return ISAS.index(isa or best_isa())


def mxfp4_linear(
    x: torch.Tensor,
    blocks: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None = None,
    isa: str | None = None,
) -> torch.Tensor:
    """x [T, K] · W^T (+ bias) in fp32, W packed MXFP4: blocks [R, K/32, 16], scales [R, K/32];
    bf16 inputs go to the kernels for bf16 values (as the experts' gate_up of a bf16 model).

    The experts kernel's row decoder on its own, with no SwiGLU after it: the one way to check
    every code and scale it decodes (the tests' use; the model runs `experts_forward`)."""
    rows, groups = scales.shape
    t = x.shape[0]
    # Every tensor a pointer is taken from stays referenced until the call returns.
    bf16, x = x.dtype == torch.bfloat16, x.float().contiguous()
    blocks, scales = blocks.contiguous(), scales.contiguous()
    bias = None if bias is None else bias.float().contiguous()
    scratch, y = torch.empty_like(x), torch.empty(t, rows, dtype=torch.float32)
    u8, f32, k = torch.uint8, torch.float32, groups * 32
    _library().gl_mxfp4_matmul(
        _isa(isa),
        _p(blocks, u8, rows, groups, 16),
        _p(scales, u8, rows, groups),
        _p(bias, f32, rows),
        _p(x, f32, t, k),
        bf16,
        _p(scratch, f32, t, k),
        _p(y, f32, t, rows),
        rows,
        groups,
        t,
        torch.get_num_threads(),
    )
    return y


def experts_forward(
    x: torch.Tensor,
    expert_idx: torch.Tensor,
    expert_weight: torch.Tensor,
    experts: PackedExperts,
    alpha: float,
    limit: float,
    isa: str | None = None,
) -> torch.Tensor:
    """Σ_e w_e·expert_e(x) for x [T, H], as `moe.experts_forward`, from the packed bytes."""
    t, hidden = x.shape
    k = expert_idx.shape[1]
    intermediate = experts.down_blocks.shape[2] * experts.down_blocks.shape[3] * 2
    flat = expert_idx.reshape(-1)
    order = torch.argsort(flat, stable=True)  # pairs grouped by expert, tokens in order
    ids, counts = torch.unique_consecutive(flat[order], return_counts=True)
    e, u = experts.gate_up_blocks.shape[0], ids.numel()
    if u and not (ids[0] >= 0 and ids[-1] < e):  # sorted ids; the C code reads expert ids[i]
        raise GptossError(f"expert ids must lie in [0, {e})")
    offsets = torch.zeros(ids.numel() + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    tok = (order // k).contiguous()
    xs = x.float()[tok].contiguous()  # (P, H)
    weights = expert_weight.reshape(-1)[order].float().contiguous()
    bias1 = experts.gate_up_bias[ids].float().contiguous()  # (U, 2I)
    bias2 = experts.down_bias[ids].float().contiguous()  # (U, H)
    xd, ad = torch.empty_like(xs), torch.empty(xs.shape[0], intermediate, dtype=torch.float32)
    out = torch.zeros(t, hidden, dtype=torch.float32)
    u8, f32, i64 = torch.uint8, torch.float32, torch.int64
    i, h, pairs = intermediate, hidden, xs.shape[0]
    _library().gl_mxfp4_experts(
        _isa(isa),
        u,
        _p(ids, i64, u),
        _p(offsets, i64, u + 1),
        _p(xs, f32, pairs, h),
        x.dtype == torch.bfloat16,  # then xs holds bf16 values, which the kernels may read as such
        _p(weights, f32, pairs),
        _p(tok, i64, pairs),
        _p(experts.gate_up_blocks, u8, e, 2 * i, h // 32, 16),
        _p(experts.gate_up_scales, u8, e, 2 * i, h // 32),
        _p(bias1, f32, u, 2 * i),
        _p(experts.down_blocks, u8, e, h, i // 32, 16),
        _p(experts.down_scales, u8, e, h, i // 32),
        _p(bias2, f32, u, h),
        hidden,
        intermediate,
        alpha,
        limit,
        _p(xd, f32, pairs, h),
        _p(ad, f32, pairs, i),
        _p(out, f32, t, h),
        torch.get_num_threads(),
    )
    return out.to(x.dtype)


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, isa: str | None = None
) -> torch.Tensor:
    """F.linear, with a few rows (up to BF16_ROWS) times a bf16 matrix done here, each row
    summed alone. A few rows of another dtype go through F.linear one at a time: torch rounds a
    row of a small matmul differently with other rows beside it, and a decode step's rows must
    not."""
    bf16 = weight.dtype == torch.bfloat16
    if x.shape[0] > (BF16_ROWS if bf16 else DECODE_ROWS) or x.device.type != "cpu":
        return F.linear(x, weight, bias)
    if not bf16:
        return torch.cat([F.linear(row, weight, bias) for row in x.split(1)])
    rows, k = weight.shape
    t = x.shape[0]
    xf, weight = x.float().contiguous(), weight.contiguous()
    bias = None if bias is None else bias.float().contiguous()
    y, scratch = torch.empty(t, rows, dtype=torch.float32), torch.empty_like(xf)
    f32 = torch.float32
    _library().gl_bf16_matmul(
        _isa(isa),
        _p(weight, torch.bfloat16, rows, k),
        _p(bias, f32, rows),
        _p(xf, f32, t, k),
        x.dtype == torch.bfloat16,  # then xf holds bf16 values, which the kernels may read as such
        _p(scratch, f32, t, k),
        _p(y, f32, t, rows),
        rows,
        k,
        t,
        torch.get_num_threads(),
    )
    return y.to(x.dtype)


def read_rate(threads: int | None = None, nbytes: int = PROBE_BYTES) -> float:
    """Bytes per second `threads` threads (default torch's) read from RAM: compiled code
    streaming a buffer far larger than the caches from 2 MiB pages, the fastest of a few ways of
    streaming it and of `PROBE_ROUNDS` passes each; what a decode step's reads are bound by."""
    threads = threads or torch.get_num_threads()
    nbytes -= nbytes % (threads * 64 * 8)
    buffer = HostArena(nbytes).empty((nbytes,), torch.uint8)
    buffer.fill_(1)  # faults the pages in
    lib, isa = _library(), _isa(None)
    seconds = min(
        lib.gl_read_probe(isa, buffer.data_ptr(), nbytes, streams, ahead, PROBE_ROUNDS, threads)
        for streams, ahead in PROBE_PATTERNS
    )
    return nbytes / seconds
