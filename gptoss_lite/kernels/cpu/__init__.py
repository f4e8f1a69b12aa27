"""The compiled CPU kernels: MXFP4 experts straight from the packed bytes, and bf16 decode matvecs.

`mxfp4_cpu.c` is compiled on first use with the system C compiler (`$CC`, else `cc`/`gcc`) and
cached under the user's cache folder (`$XDG_CACHE_HOME` or `~/.cache`, then
`gptoss-lite/kernels/`), keyed by a hash of the source, the compiler and its flags; the file is
written beside its final name and renamed, so concurrent first uses never see half a library.
It is called through ctypes with raw pointers. The instruction set is chosen once, at the first
use, from the CPU's features (`avx512`, `avx2`, else `portable` C); `GPTOSS_LITE_CPU_ISA` forces
one. Where no compiler works, `available()` is False and a one-line notice on stderr says that
the slower torch path runs and how to get this one.

Exact mode: activations in fp32, each weight decoded to exactly the float32 `mxfp4.dequantize`
gives, products summed in fp32 (in another order than torch: results agree to fp32 rounding).
Threads follow `torch.get_num_threads()`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import GptossError
from ...model.moe import PackedExperts

SOURCE = Path(__file__).with_name("mxfp4_cpu.c")
FLAGS = ("-O3", "-std=c11", "-fPIC", "-shared")
OPENMP = "-fopenmp"
ISAS = ("portable", "avx2", "avx512")  # index = the C code's isa number
ISA_ENV = "GPTOSS_LITE_CPU_ISA"
DECODE_ROWS = 8  # inputs per pass over a bf16 matrix (MAX_TOKENS in the C source)

_i64, _int, _float = ctypes.c_int64, ctypes.c_int, ctypes.c_float
_ptr = ctypes.c_void_p
_SIGNATURES = {
    "gl_best_isa": ([], _int),
    "gl_mxfp4_matmul": ([_int, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _int], None),
    "gl_mxfp4_experts": (
        [_int, _i64, *[_ptr] * 11, _i64, _i64, _float, _float, _ptr, _ptr, _ptr, _int],
        None,
    ),
    "gl_bf16_matmul": ([_int, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _int], None),
}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gptoss-lite" / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compile(compiler: str, flags: tuple[str, ...]) -> Path:
    """The cached library built with `flags`, compiling it if needed (raises CalledProcessError)."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), *map(str.encode, flags)]))
    target = cache_dir() / f"mxfp4_cpu-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *flags, str(SOURCE), "-o", tmp, "-lm"],
            check=True,
            capture_output=True,
            timeout=300,
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@cache
def _library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (with the notice printed) when it cannot be built."""
    compiler = _compiler()
    why = "no C compiler found"
    if compiler is not None:
        # With OpenMP the kernel threads; without it (a compiler lacking libgomp) it runs one.
        for flags in ((*FLAGS, OPENMP), FLAGS):
            try:
                lib = ctypes.CDLL(str(_compile(compiler, flags)))
                break
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
                why = f"{compiler} failed ({type(exc).__name__})"
        else:
            lib = None
    else:
        lib = None
    if lib is None:
        print(
            f"gptoss-lite: {why}: MXFP4 experts run on the slow torch path on CPU; install a C "
            "compiler (gcc or clang; set CC to choose one) for the compiled kernel",
            file=sys.stderr,
        )
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
    """The expert kernel that runs on this CPU: "cpu-avx512", "cpu-avx2", "cpu-portable"."""
    return f"cpu-{best_isa()}"


def supported_isas() -> list[str]:
    """Every instruction set this CPU can run the kernels with, narrowest first."""
    return list(ISAS[: _library().gl_best_isa() + 1])


def _p(t: torch.Tensor | None) -> int | None:
    if t is None:
        return None
    if t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError("the CPU kernels take contiguous CPU tensors")
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
    """x [T, K] · W^T (+ bias) in fp32, W packed MXFP4: blocks [R, K/32, 16], scales [R, K/32]."""
    rows, groups = scales.shape
    # Every tensor a pointer is taken from stays referenced until the call returns.
    x = x.float().contiguous()
    blocks, scales = blocks.contiguous(), scales.contiguous()
    bias = None if bias is None else bias.float().contiguous()
    scratch, y = torch.empty_like(x), torch.empty(x.shape[0], rows, dtype=torch.float32)
    _library().gl_mxfp4_matmul(
        _isa(isa),
        *map(_p, (blocks, scales, bias, x, scratch, y)),
        rows,
        groups,
        x.shape[0],
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
    offsets = torch.zeros(ids.numel() + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    tok = (order // k).contiguous()
    xs = x.float()[tok].contiguous()  # (P, H)
    weights = expert_weight.reshape(-1)[order].float().contiguous()
    bias1 = experts.gate_up_bias[ids].float().contiguous()  # (U, 2I)
    bias2 = experts.down_bias[ids].float().contiguous()  # (U, H)
    xd, ad = torch.empty_like(xs), torch.empty(xs.shape[0], intermediate, dtype=torch.float32)
    out = torch.zeros(t, hidden, dtype=torch.float32)
    packed = (experts.gate_up_blocks, experts.gate_up_scales, bias1)
    packed2 = (experts.down_blocks, experts.down_scales, bias2)
    _library().gl_mxfp4_experts(
        _isa(isa),
        ids.numel(),
        *map(_p, (ids, offsets, xs, weights, tok, *packed, *packed2)),
        hidden,
        intermediate,
        alpha,
        limit,
        *map(_p, (xd, ad, out)),
        torch.get_num_threads(),
    )
    return out.to(x.dtype)


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, isa: str | None = None
) -> torch.Tensor:
    """F.linear, with a few rows times a bf16 matrix done here (torch's bf16 matvec is slow).
    A few rows of another dtype go through F.linear one at a time: torch rounds a row of a small
    matmul differently with other rows beside it, and a decode step's rows must not."""
    if x.shape[0] > DECODE_ROWS or x.device.type != "cpu":
        return F.linear(x, weight, bias)
    if weight.dtype != torch.bfloat16:
        return torch.cat([F.linear(row, weight, bias) for row in x.split(1)])
    rows, k = weight.shape
    xf, weight = x.float().contiguous(), weight.contiguous()
    bias = None if bias is None else bias.float().contiguous()
    y = torch.empty(x.shape[0], rows, dtype=torch.float32)
    _library().gl_bf16_matmul(
        _isa(isa), *map(_p, (weight, bias, xf, y)), rows, k, x.shape[0], torch.get_num_threads()
    )
    return y.to(x.dtype)
