"""`gptoss-lite bench`: prefill and decode speed against this machine's bandwidth bound.

A thin shell over `gptoss_lite.measure.bench`: load (a checkpoint, or random weights of a geometry),
warm up, time `--repeats` runs and print medians ± standard deviations, the decode bandwidth
achieved against the read bandwidth measured here, the kernels that ran and the peak memory.
`--compare transformers` runs HF transformers on the same checkpoint in a process of its own.
`--json-schema FILE` times decoding held to that schema (its final answer) against free decoding,
runs taking turns, and prints the ratio and the schema's compile time, cold and cached.
`--parallel N` measures instead the aggregate decode speed of N streams decoded together against
one alone (`measure.bench_parallel`), their rounds alternated.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import time
from dataclasses import replace

import click

from ..chat.json_schema import check_schema, read_json
from ..chat.reply_grammar import ReplyFormat
from ..chat.tokenizer import load_tokenizer
from ..chat.tokens import CHANNEL, MESSAGE
from ..checkpoint.synthetic_memory import SyntheticCheckpoint
from ..engine.constraint import compile_reply, compiler_for
from ..engine.runner import load
from ..errors import GptossError
from ..kernels.cpu.host_memory import huge_page_bytes
from ..measure import step_profile
from ..measure.bench import (
    BenchResult,
    bandwidth_method,
    bench,
    bench_constrained,
    bench_transformers,
    read_bandwidth,
    resident_bytes,
)
from ..measure.bench_parallel import ParallelResult, bench_parallel
from ..measure.meter import peak_memory
from ..memory.plan import Plan
from ..units import GB, format_bytes
from .common import warn_kv
from .options import (
    budget_option,
    context_option,
    cpu_experts_option,
    device_option,
    geometry_option,
    kernels_option,
    kv_cache_option,
    model_option,
    profile_option,
    take_model_options,
)


@click.command("bench")
@model_option("Local checkpoint folder or Hub repo id.")
@geometry_option("Random weights of this preset geometry, made in memory, instead of --model.")
@profile_option()
@context_option("KV cache size in tokens [default: the largest that fits].")
@click.option("--prompt-tokens", default=512, show_default=True, help="Random prompt length.")
@click.option("--gen-tokens", default=32, show_default=True, help="Tokens to decode greedily.")
@click.option(
    "--repeats",
    "-r",
    default=3,
    show_default=True,
    help="Timed runs after the warm-up; the figures are their median and spread.",
)
@device_option()
@budget_option()
@click.option(
    "--compare",
    type=click.Choice(["transformers"]),
    help="Also run HF transformers on the same checkpoint, in a process of its own, and print "
    "the ratio (needs --model).",
)
@click.option(
    "--cuda-graph",
    is_flag=True,
    help="Decode with the step captured in a CUDA graph (Triton kernels on CUDA; untimed yet).",
)
@click.option(
    "--profile-step",
    is_flag=True,
    help="Instead of timing runs, show where a decode step's time goes: each part's ms, the "
    "bytes it reads and its GB/s, over --gen-tokens steps after --prompt-tokens.",
)
@cpu_experts_option()
@kv_cache_option()
@kernels_option()
@click.option(
    "--json-schema",
    metavar="FILE",
    default=None,
    help="Time decoding held to this JSON schema against free decoding (runs taking turns) "
    "and the schema's compile time.",
)
@click.option(
    "--parallel",
    "streams",
    type=click.IntRange(min=2),
    default=None,
    help="Measure N streams decoded together (each a fresh prompt) against one alone, rounds "
    "alternated: their aggregate decode tok/s and its ratio.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench_command(
    model,
    geometry,
    prompt_tokens,
    gen_tokens,
    repeats,
    compare,
    cuda_graph,
    profile_step,
    json_schema,
    streams,
    as_json,
    **opening,
):
    """Measure prefill and decode tok/s, decode GB/s against the bandwidth bound, peak memory."""
    options = take_model_options(opening)
    if bool(model) == bool(geometry):
        raise GptossError("give exactly one of --model or --geometry")
    if compare and not model:
        raise GptossError("--compare transformers needs a checkpoint folder (--model)")
    if compare and importlib.util.find_spec("transformers") is None:
        raise GptossError("--compare transformers needs HF transformers: pip install transformers")
    if prompt_tokens < 1 or gen_tokens < 1 or repeats < 1:
        raise GptossError("--prompt-tokens, --gen-tokens and --repeats must be at least 1")
    if json_schema and (compare or cuda_graph):
        raise GptossError("--json-schema is measured alone: drop --compare and --cuda-graph")
    if streams and (compare or cuda_graph or json_schema):
        raise GptossError(
            "--parallel measures the batched decode alone: drop --compare, --cuda-graph and "
            "--json-schema"
        )
    options = replace(options, parallel=streams or 1)
    schema = check_schema(read_json(json_schema), strict=False) if json_schema else None

    def fits(plan: Plan) -> None:  # before any weight is read
        if prompt_tokens + gen_tokens > plan.context:
            raise GptossError(
                f"{prompt_tokens} prompt + {gen_tokens} generated tokens exceed the context of "
                f"{plan.context}; pass a larger --context or fewer tokens"
            )

    start = time.perf_counter()
    runner = load(model or SyntheticCheckpoint(geometry), options, on_plan=fits)
    warn_kv(runner.plan)
    loaded = {"seconds": time.perf_counter() - start, **resident_bytes(runner)}
    loaded["huge_page_bytes"] = huge_page_bytes() if runner.device.type == "cpu" else None
    peak = peak_memory(runner.device)
    loaded["peak_memory_bytes"], loaded["peak_memory_kind"] = peak or (None, "unknown")
    if streams:
        together = bench_parallel(runner, streams, prompt_tokens, gen_tokens, repeats)
        if as_json:
            click.echo(json.dumps({"load": loaded, "parallel": together.to_dict()}, indent=2))
        else:
            click.echo(_describe_load(loaded))
            click.echo(_describe_parallel(together))
        return
    if profile_step:
        click.echo(_describe_load(loaded))
        click.echo(
            step_profile.describe(step_profile.profile_step(runner, prompt_tokens, gen_tokens))
        )
        return
    compiled = None
    if schema is not None:
        compiled = _compile(schema, runner.folder)
        prefix = [CHANNEL, *compiled.pop("tokenizer").encode("final"), MESSAGE]
        grammar = compiled.pop("grammar")
        results = list(
            bench_constrained(runner, grammar, prefix, prompt_tokens, gen_tokens, repeats)
        )
    else:
        results = [bench(runner, prompt_tokens, gen_tokens, repeats, cuda_graph=cuda_graph)]
    dev, folder = runner.device, runner.folder
    if compare:
        del runner
        gc.collect()
        results.append(bench_transformers(folder, prompt_tokens, gen_tokens, dev, repeats))
    bandwidth = read_bandwidth(dev)  # last: its buffer must not count in the peaks above
    for r in results:
        r.read_bytes_per_s = bandwidth
    if as_json:
        payload = {
            "load": loaded,
            "read_bytes_per_s": bandwidth,
            "results": [r.to_dict() for r in results],
        }
        if compiled is not None:
            payload["constrained"] = {**compiled, "ratio": _ratio(results[::-1])}
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(_describe_load(loaded))
    for r in results:
        click.echo(_describe(r))
    if compare:
        click.echo(f"decode speed-up over transformers: {_ratio(results):.2f}x")
    if compiled is not None:
        click.echo(
            f"constrained decode: {_ratio(results[::-1]):.3f}x the speed of free decode "
            f"(median of {repeats} runs each, taking turns); schema compiled in "
            f"{compiled['compile_s'] * 1e3:.1f} ms, {compiled['cached_s'] * 1e6:.0f} us from "
            f"the cache (the vocabulary's grammar tables took {compiled['tokenizer_s']:.1f} s, "
            "once per process)"
        )
    click.echo(
        f"this machine reads {bandwidth / GB:,.1f} GB/s on {dev.type} ({bandwidth_method(dev)})"
    )


def _describe_load(loaded: dict) -> str:
    peak = loaded["peak_memory_bytes"]
    peak_text = (
        "unknown" if peak is None else f"{format_bytes(peak)} ({loaded['peak_memory_kind']})"
    )
    huge = loaded["huge_page_bytes"]
    huge_text = "" if huge is None else f", {huge / GB:.2f} GB of memory in 2 MiB pages"
    return (
        f"loaded in {loaded['seconds']:.1f} s: weights {loaded['weights'] / GB:.2f} GB resident, "
        f"experts {loaded['experts_packed'] / GB:.2f} GB packed MXFP4{huge_text}; peak after "
        f"load {peak_text}"
    )


def _describe(r: BenchResult) -> str:
    peak = "unknown"
    if r.peak_memory_bytes is not None:
        peak = f"{format_bytes(r.peak_memory_bytes)} ({r.peak_memory_kind})"
    runs = f"median of {r.repeats} runs" if r.repeats > 1 else "one run"
    return "\n".join(
        [
            f"{r.engine} on {r.device} (kernels: {r.kernels}), {runs} after a warm-up:",
            f"  prefill {r.prompt_tokens} tokens at {r.prefill_tok_s:,.1f} ± "
            f"{r.prefill_tok_s_stdev:,.1f} tok/s",
            f"  decode {r.gen_tokens} tokens at {r.decode_tok_s:,.2f} ± "
            f"{r.decode_tok_s_stdev:,.2f} tok/s: {r.ms_per_token:,.1f} ms/token, "
            f"{r.decode_bytes_per_token / GB:.2f} GB/token read at {r.decode_gb_s:,.2f} GB/s",
            f"  {r.bound_pct:.1f} % of the bandwidth bound ({r.bound_ms_per_token:,.1f} ms/token "
            f"at {r.read_bytes_per_s / GB:,.1f} GB/s)",
            f"  peak memory {peak}",
        ]
    )


def _describe_parallel(r: ParallelResult) -> str:
    rounds = f"medians of {len(r.solo_runs)} rounds each, alternated"
    return "\n".join(
        [
            f"gptoss-lite (kernels: {r.kernels}), {r.gen_tokens} tokens after a {r.prompt_tokens}-"
            f"token prompt per stream, {rounds}:",
            f"  {r.streams} streams together: {r.batch_tok_s:,.2f} tok/s in all "
            f"({r.batch_tok_s / r.streams:,.2f} per stream)",
            f"  1 stream alone: {r.solo_tok_s:,.2f} tok/s",
            f"  aggregate / single: {r.speedup:.2f}x",
        ]
    )


def _ratio(results: list[BenchResult]) -> float:
    return results[0].decode_tok_s / results[1].decode_tok_s


def _compile(schema: dict, folder) -> dict:
    """The schema's grammar and what preparing it cost: the vocabulary's tables (once per
    process), the first compile and a compile answered by the cache."""
    tokenizer = load_tokenizer(folder)
    start = time.perf_counter()
    compiler_for(tokenizer).tokenizer()
    middle = time.perf_counter()
    grammar = compile_reply(ReplyFormat(answer=schema), tokenizer)
    end = time.perf_counter()
    compile_reply(ReplyFormat(answer=schema), tokenizer)
    return {
        "tokenizer": tokenizer,
        "grammar": grammar,
        "tokenizer_s": middle - start,
        "compile_s": end - middle,
        "cached_s": time.perf_counter() - end,
    }
