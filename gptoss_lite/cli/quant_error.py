"""`gptoss-lite quant-error`: measure quantization error and write report.md + report.json.

Four modes, exactly one per run: `--tensors`, the per-tensor error of MXFP4 and the bitsandbytes
4-bit formats on a random expert of a preset geometry (`quantize/report.py`); `--model SRC`,
the KL divergence and top-1 agreement of this runner with MXFP4 experts against a float32
transformers reference on a checkpoint with dense bf16 experts (`quantize/kld.py`); and `--kv`,
the same measures for each K/V cache format against the bf16 cache, on `--model SRC` (any
checkpoint) or random weights of `--geometry` (`--layers` of them), with the context each buys
on `--profile` (`quantize/kv_sweep.py`); and `--kernels NAME`, the same measures for a decode
mode that is not exact (cpu-q8) against the exact CPU decode step (`quantize/decode_error.py`).
"""

from __future__ import annotations

from pathlib import Path

import click

from quantize.decode_error import decode_error_report
from quantize.kld import DTYPES, model_error_report
from quantize.kv_sweep import PAIRS, kv_error_report
from quantize.report import render_markdown, tensor_error_report, write_report

from ..checkpoint.synthetic_memory import SyntheticCheckpoint
from ..config import ModelConfig
from ..model.kv_quant import KVDtypes
from ..outputs import check_outputs
from .options import (
    KVCacheDtype,
    context_option,
    device_option,
    geometry_option,
    kernels_option,
    overwrite_option,
)


@click.command("quant-error")
@click.option(
    "--tensors",
    is_flag=True,
    help="Per-tensor error (SQNR, rel. Frobenius, cosine, max) of MXFP4 vs bitsandbytes "
    "NF4/FP4 on a random expert.",
)
@click.option(
    "--model",
    "-m",
    "src",
    metavar="SRC",
    help="Model-level KL divergence and top-1 agreement of gptoss-lite with MXFP4 experts vs "
    "transformers in float32, on SRC: a checkpoint folder or Hub id with dense bf16 experts.",
)
@click.option(
    "--kv",
    is_flag=True,
    help="KV-cache formats: each K,V pair against the bf16 cache (KL, top-1, context bought), "
    "on --model SRC or random weights of --geometry.",
)
@kernels_option(
    "Decode with these kernels (cpu-q8) one token at a time against the exact CPU decode step: "
    "KL divergence, top-1 agreement and ms/token, on --model SRC or random weights of "
    "--geometry (--layers of them)."
)
@geometry_option(
    "Architecture preset whose expert shapes are used (--tensors), or whose random weights are "
    "measured (--kv without --model).",
    "gpt-oss-20b",
)
@click.option(
    "--layers",
    type=click.IntRange(min=1),
    default=None,
    help="Keep only the first N layers of --geometry (--kv) [default: all].",
)
@click.option(
    "--pair",
    "pairs",
    type=KVCacheDtype(),
    multiple=True,
    help=f"A K,V pair to measure (--kv), repeatable [default: {' '.join(map(str, PAIRS))}].",
)
@click.option(
    "--profile",
    "-p",
    default="rtx4090",
    show_default=True,
    help="Memory profile whose planned context each pair reports (--kv).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the random weights (--tensors, --kv) and of the random token ids.",
)
@click.option(
    "--tokens",
    type=click.IntRange(min=2),
    default=2048,
    show_default=True,
    help="Tokens to evaluate (--model, --kv): random ids, or the first N of --prompts.",
)
@context_option(
    "Tokens per sequence, each run from an empty KV cache, like llama.cpp's -c (--model).",
    default=512,
    min=2,
)
@click.option(
    "--prompts",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A text file tokenized as a whole, instead of random ids (--model); gives perplexities.",
)
@click.option(
    "--dtype",
    "dtypes",
    type=click.Choice(list(DTYPES)),
    multiple=True,
    default=("fp32", "bf16"),
    show_default=True,
    help="Activation and KV-cache dtypes of gptoss-lite to measure, one row each (--model).",
)
@device_option(
    "Device of the reference and of gptoss-lite, e.g. cpu or cuda (--model) [default: cuda "
    "if there is one]."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out/quant-error"),
    show_default=True,
    help="Folder for report.md and report.json.",
)
@overwrite_option("an earlier report in --out")
def quant_error(
    tensors: bool,
    src: str | None,
    kv: bool,
    kernels: str,
    geometry: ModelConfig,
    layers: int | None,
    pairs: tuple[KVDtypes, ...],
    profile: str,
    seed: int,
    tokens: int,
    context: int,
    prompts: Path | None,
    dtypes: tuple[str, ...],
    device: str | None,
    out: Path,
    overwrite: bool,
) -> None:
    """Measure how much quantization changes a model, and write a report."""
    decode = kernels != "auto"
    if tensors + kv + decode + (src is not None and not (kv or decode)) != 1:
        raise click.UsageError(
            "say what to measure: --tensors or --model SRC, or --kv, or --kernels (one of them)"
        )
    check_outputs(out, ("report.md", "report.json"), overwrite)
    if tensors:
        report = tensor_error_report(geometry, seed)
    elif decode:
        report = decode_error_report(
            src
            or SyntheticCheckpoint(geometry.with_(num_layers=layers or geometry.num_layers), seed),
            kernels=kernels,
            tokens=tokens,
            context=context,
            prompts=prompts,
            seed=seed,
            log=lambda message: click.echo(message, err=True),
        )
    elif kv:
        layers = layers or geometry.num_layers
        report = kv_error_report(
            src or SyntheticCheckpoint(geometry.with_(num_layers=layers), seed),
            pairs=pairs or PAIRS,
            tokens=tokens,
            context=context,
            prompts=prompts,
            seed=seed,
            device=device,
            profile=profile,
            plan_config=None if src else geometry,
            log=lambda message: click.echo(message, err=True),
        )
    else:
        report = model_error_report(
            src,
            tokens=tokens,
            context=context,
            prompts=prompts,
            seed=seed,
            device=device,
            dtypes=tuple(dict.fromkeys(dtypes)),
            log=lambda message: click.echo(message, err=True),
        )
    md, js = write_report(report, out)
    click.echo(render_markdown(report))
    click.echo(f"wrote {md} and {js}")
