"""`gptoss-lite bench`: prefill and decode speed, achieved bandwidth and peak memory."""

from __future__ import annotations

import json
import time

import click
import torch

from ..bench import bench, bench_transformers, resident_bytes
from ..chat.stats import peak_memory
from ..checkpoint.synthetic_memory import SyntheticCheckpoint
from ..engine.runner import load
from ..errors import GptossError
from .common import warn_kv
from .options import (
    context_option,
    cpu_experts_option,
    device_option,
    geometry_option,
    kv_cache_option,
    model_option,
    profile_option,
)


@click.command("bench")
@model_option("Local checkpoint folder or Hub repo id.")
@geometry_option("Random weights of this preset geometry, made in memory, instead of --model.")
@profile_option()
@context_option("KV cache size in tokens [default: the largest that fits].")
@click.option("--prompt-tokens", default=512, show_default=True, help="Random prompt length.")
@click.option("--gen-tokens", default=32, show_default=True, help="Tokens to decode greedily.")
@device_option()
@click.option(
    "--compare",
    type=click.Choice(["transformers"]),
    help="Also run HF transformers on the same checkpoint and print the ratio (needs --model).",
)
@click.option(
    "--cuda-graph",
    is_flag=True,
    help="Decode with the step captured in a CUDA graph (Triton kernels on CUDA; untimed yet).",
)
@cpu_experts_option()
@kv_cache_option()
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench_command(
    model, geometry, profile, context, prompt_tokens, gen_tokens, device, compare, cuda_graph,
    cpu_experts, kv_cache_dtype, as_json,
):  # fmt: skip
    """Measure prefill tok/s, decode tok/s and GB/s, and peak memory."""
    if bool(model) == bool(geometry):
        raise GptossError("give exactly one of --model or --geometry")
    if compare and not model:
        raise GptossError("--compare transformers needs a checkpoint folder (--model)")
    if prompt_tokens < 1 or gen_tokens < 1:
        raise GptossError("--prompt-tokens and --gen-tokens must be at least 1")
    source = model or SyntheticCheckpoint(geometry)
    start = time.perf_counter()
    runner = load(
        source,
        device=device,
        profile=profile,
        context=context,
        cpu_experts=cpu_experts,
        kv_cache_dtype=kv_cache_dtype,
    )
    warn_kv(runner.plan)
    load_seconds = time.perf_counter() - start
    loaded = {"seconds": load_seconds, **resident_bytes(runner)}
    peak = peak_memory(runner.device)
    loaded["peak_memory_bytes"], loaded["peak_memory_kind"] = peak or (None, "unknown")
    results = [bench(runner, prompt_tokens, gen_tokens, cuda_graph=cuda_graph)]
    if compare:
        del runner
        results.append(
            bench_transformers(model, prompt_tokens, gen_tokens, torch.device(results[0].device))
        )
    if as_json:
        payload = {"load": loaded, "results": [r.to_dict() for r in results]}
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(_describe_load(loaded))
    for r in results:
        click.echo(_describe(r))
    if compare:
        click.echo(f"decode speed-up over transformers: {_ratio(results)}x")


def _describe_load(loaded: dict) -> str:
    peak = loaded["peak_memory_bytes"]
    peak_text = "unknown" if peak is None else f"{peak / 1e9:.2f} GB ({loaded['peak_memory_kind']})"
    return (
        f"loaded in {loaded['seconds']:.1f} s: weights {loaded['weights'] / 1e9:.2f} GB resident, "
        f"experts {loaded['experts_packed'] / 1e9:.2f} GB packed MXFP4; peak after load {peak_text}"
    )


def _describe(r) -> str:
    peak = "unknown"
    if r.peak_memory_bytes is not None:
        peak = f"{r.peak_memory_bytes / 2**30:.2f} GiB ({r.peak_memory_kind})"
    return (
        f"{r.engine} on {r.device}: prefill {r.prompt_tokens} tokens at {r.prefill_tok_s:,.1f} "
        f"tok/s; decode {r.gen_tokens} tokens at {r.decode_tok_s:,.2f} tok/s "
        f"({r.ms_per_token:,.1f} ms/token, {r.decode_gb_s:,.2f} GB/s of "
        f"{r.decode_bytes_per_token / 1e9:.2f} GB/token); peak {peak}"
    )


def _ratio(results) -> str:
    return f"{results[0].decode_tok_s / results[1].decode_tok_s:.2f}"
