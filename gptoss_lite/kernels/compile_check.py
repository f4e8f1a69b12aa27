"""Compile every kernel launch ahead of time for real GPUs, without one, and report its resources.

The wrappers (`moe_forward`, `attention`, `batch_attention`, `mxfp4_dequantize`) are called at
the gpt-oss-20b shapes on meta tensors with Triton's launcher replaced by a recorder, so each
launch is captured exactly as the model makes it (signature, constexprs, the alignment
specialization of every argument, grid). Each is then compiled by `triton.compile` for a
`GPUTarget` (ptxas ships in the Triton wheel) and its cubin's resource usage read back with the
wheel's cuobjdump. A nonzero stack frame means register spills: the kernels inline every call
and keep no local arrays.
Compiled kernels land in Triton's cache, so a second run takes seconds.

    python -m gptoss_lite.kernels.compile_check [--arch 80 90] [--json]

needs Triton and no GPU; the interpreter must be off (TRITON_INTERPRET unset) so that the
kernels are real jit functions.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from ..config import ModelConfig, preset
from ..model import kv_quant
from ..model.moe import PackedExperts
from . import MIN_CAPABILITY, attention_triton, moe_triton

ARCHS = (80, 86, 89, 90)  # Ampere (A100, RTX 30xx), Ada (RTX 40xx), Hopper (H100, H200)
DECODE_CONTEXT = 4096  # keys of a full-attention layer in the decode launch
PREFILL_TOKENS = 512  # a prefill chunk of the rtx4090 profile (profiles/rtx4090.toml)
BATCH = 4  # sequences of the batched decode launches (`serve --parallel`'s default at most)


@dataclass(frozen=True)
class Launch:
    """One kernel launch as a wrapper made it: what `triton.compile` needs, and its grid."""

    case: str  # the wrapper call that made it
    fn: JITFunction
    grid: tuple
    args: tuple
    kwargs: dict


@dataclass(frozen=True)
class Report:
    case: str
    kernel: str
    arch: int
    grid: tuple
    num_warps: int
    num_stages: int
    registers: int
    spill_bytes: int  # the stack frame: spilled registers
    shared_bytes: int
    async_copies: int  # cp.async instructions in the PTX: loads the software pipeline overlaps


@contextmanager
def _recording() -> Iterator[list]:
    """Within: `kernel[grid](...)` records (kernel, grid, args, kwargs) instead of launching."""
    calls = []

    def record(fn, *args, grid, warmup, **kwargs):
        calls.append((fn, tuple(grid), args, kwargs))

    with mock.patch.object(JITFunction, "run", record):
        yield calls


def _cases(config: ModelConfig) -> Iterator[tuple[str, Callable[[], object]]]:
    """(name, wrapper call on meta tensors) for every code path the model takes."""
    c, meta = config, dict(device="meta")
    e, h, i, k = c.num_experts, c.hidden_size, c.intermediate_size, c.experts_per_token
    experts = PackedExperts(
        torch.empty(e, 2 * i, h // 32, 16, dtype=torch.uint8, **meta),
        torch.empty(e, 2 * i, h // 32, dtype=torch.uint8, **meta),
        torch.empty(e, 2 * i, dtype=torch.bfloat16, **meta),
        torch.empty(e, h, i // 32, 16, dtype=torch.uint8, **meta),
        torch.empty(e, h, i // 32, dtype=torch.uint8, **meta),
        torch.empty(e, h, dtype=torch.bfloat16, **meta),
    )

    def moe(tokens: int):
        x = torch.empty(tokens, h, dtype=torch.bfloat16, **meta)
        idx = torch.empty(tokens, k, dtype=torch.long, **meta)
        weight = torch.empty(tokens, k, dtype=torch.bfloat16, **meta)
        return lambda: moe_triton.moe_forward(
            x, idx, weight, experts, c.swiglu_alpha, c.swiglu_limit
        )

    def attention(tokens: int, keys: int, window: int | None, k_kind="bf16", v_kind="bf16"):
        q = torch.empty(tokens, c.num_heads, c.head_dim, dtype=torch.bfloat16, **meta)
        shape = (keys, c.num_kv_heads, c.head_dim)
        k, v = (
            kv_quant.empty(kind, *shape, **meta, dtype=torch.bfloat16) for kind in (k_kind, v_kind)
        )
        sinks = torch.empty(c.num_heads, dtype=torch.float32, **meta)
        q_pos = torch.empty(tokens, dtype=torch.long, **meta)
        k_pos = torch.empty(keys, dtype=torch.long, **meta)
        return lambda: attention_triton.attention(q, k, v, sinks, q_pos, k_pos, window)

    def batch(keys: int, window: int | None, k_kind="bf16", v_kind="bf16"):
        """One token of each of BATCH sequences over a pool of `keys` slots each."""
        q = torch.empty(BATCH, c.num_heads, c.head_dim, dtype=torch.bfloat16, **meta)
        shape = (BATCH, keys, c.num_kv_heads, c.head_dim)
        k, v = (
            kv_quant.empty(kind, *shape, **meta, dtype=torch.bfloat16) for kind in (k_kind, v_kind)
        )
        sinks = torch.empty(c.num_heads, dtype=torch.float32, **meta)
        rows = [torch.empty(BATCH, dtype=torch.long, **meta) for _ in range(4)]  # q_pos, seq, ...
        k_pos = torch.empty(*((BATCH, keys) if window else (keys,)), dtype=torch.long, **meta)
        most = window or keys
        return lambda: attention_triton.batch_attention(
            q, k, v, sinks, rows[0], k_pos, *rows[1:], most, window
        )

    ring = c.sliding_window  # a sliding layer attends over its ring plus the new tokens
    yield "moe decode, 1 token", moe(1)
    yield f"moe prefill, {PREFILL_TOKENS} tokens", moe(PREFILL_TOKENS)
    yield f"attention decode, full, {DECODE_CONTEXT} keys", attention(1, DECODE_CONTEXT, None)
    yield f"attention decode, sliding, {ring + 1} keys", attention(1, ring + 1, c.sliding_window)
    chunk2 = 2 * PREFILL_TOKENS  # the second prefill chunk: causal within, all keys before
    yield f"attention prefill, full, {chunk2} keys", attention(PREFILL_TOKENS, chunk2, None)
    for k_kind, v_kind in (("q8", "q8"), ("fp8", "fp8"), ("bf16", "q8")):  # quantized caches
        yield (
            f"attention decode, full, {DECODE_CONTEXT} keys, K {k_kind}, V {v_kind}",
            attention(1, DECODE_CONTEXT, None, k_kind, v_kind),
        )
    yield (
        f"batched decode, {BATCH} sequences, full, {DECODE_CONTEXT} keys",
        batch(DECODE_CONTEXT, None),
    )
    yield f"batched decode, {BATCH} sequences, sliding ring", batch(ring, c.sliding_window)
    yield (
        f"batched decode, {BATCH} sequences, full, {DECODE_CONTEXT} keys, K q8, V q8",
        batch(DECODE_CONTEXT, None, "q8", "q8"),
    )
    sliding = ring + PREFILL_TOKENS
    yield (
        f"attention prefill, sliding, {sliding} keys",
        attention(PREFILL_TOKENS, sliding, c.sliding_window),
    )
    blocks, scales = experts.gate_up_blocks, experts.gate_up_scales
    yield "mxfp4_dequantize, gate_up", lambda: moe_triton.mxfp4_dequantize(blocks, scales)


def launches(config: ModelConfig | None = None) -> list[Launch]:
    """Every distinct kernel launch of the wrappers at `config`'s shapes (gpt-oss-20b)."""
    found, seen = [], set()
    for case, call in _cases(config or preset("gpt-oss-20b")):
        with _recording() as calls:
            call()
        for fn, grid, args, kwargs in calls:
            key = (fn, repr(_signature(fn, args, kwargs, ARCHS[0])[:3]))  # the compiled binary
            if key not in seen:
                seen.add(key)
                found.append(Launch(case, fn, grid, args, kwargs))
    return found


def _signature(fn: JITFunction, args: tuple, kwargs: dict, arch: int):
    """(signature, constexprs, attrs, options) exactly as Triton's launcher specializes them."""
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(
        backend, kwargs, bound, specialization, options
    )
    return signature, constexprs, attrs, options


def compile_launch(launch: Launch, arch: int) -> Report:
    """Compile `launch` for sm_`arch`; raises Triton's error if it does not compile."""
    target = GPUTarget("cuda", arch, 32)
    signature, constexprs, attrs, options = _signature(launch.fn, launch.args, launch.kwargs, arch)
    source = ASTSource(launch.fn, signature, constexprs, attrs)
    kernel = triton.compile(source, target=target, options=options.__dict__)
    usage = _resource_usage(kernel.asm["cubin"])
    return Report(
        case=launch.case,
        kernel=launch.fn.__name__,
        arch=arch,
        grid=launch.grid,
        num_warps=kernel.metadata.num_warps,
        num_stages=kernel.metadata.num_stages,
        registers=usage["REG"],
        spill_bytes=usage["STACK"] + usage["LOCAL"],
        shared_bytes=kernel.metadata.shared,
        async_copies=kernel.asm["ptx"].count("cp.async."),
    )


def _resource_usage(cubin: bytes) -> dict[str, int]:
    """cuobjdump's per-kernel resource line (REG, STACK, SHARED, LOCAL, ...) as numbers."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run(
            [triton.knobs.nvidia.cuobjdump.path, "-res-usage", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    line = next(line for line in out.splitlines() if "REG:" in line)
    return {key: int(value) for key, value in re.findall(r"(\w+):(\d+)", line)}


def kernels() -> list[str]:
    """Names of every launchable kernel the kernel modules define (the helpers excluded)."""
    modules = (moe_triton, attention_triton)
    return sorted(
        name
        for module in modules
        for name, value in vars(module).items()
        if isinstance(value, JITFunction) and name.endswith("_kernel")
    )


def check(archs: tuple[int, ...] = ARCHS) -> list[Report]:
    """Compile every launch for every arch; the reports in launch order, arch by arch."""
    found = launches()
    return [compile_launch(launch, arch) for launch in found for arch in archs]


def table(reports: list[Report]) -> str:
    rows = [
        f"{'kernel':<24} {'sm':>3} {'grid':>14} {'warps':>5} {'regs':>4} {'spill':>5} "
        f"{'shared':>7} {'async':>5}  case"
    ]
    for r in reports:
        grid = "x".join(map(str, r.grid))
        rows.append(
            f"{r.kernel:<24} {r.arch:>3} {grid:>14} {r.num_warps:>5} {r.registers:>4} "
            f"{r.spill_bytes:>5} {r.shared_bytes:>7} {r.async_copies:>5}  {r.case}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="e.g. 80 90")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    opts = parser.parse_args(argv)
    if min(opts.arch) < MIN_CAPABILITY[0] * 10 + MIN_CAPABILITY[1]:
        parser.error(f"the kernels need sm_{MIN_CAPABILITY[0]}{MIN_CAPABILITY[1]} or newer")
    reports = check(tuple(opts.arch))
    if opts.json:
        print(json.dumps({"kernels": kernels(), "reports": [asdict(r) for r in reports]}))
    else:
        print(table(reports))
    return 1 if any(r.spill_bytes for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
