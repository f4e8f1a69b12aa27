"""`gptoss-lite quantize SRC DST`: make an MXFP4 checkpoint from one with dense bf16 experts."""

from __future__ import annotations

import sys

import click

from quantize.convert import DEFAULT_SHARD_BYTES, plan_conversion, write_quantized

from .options import overwrite_option


@click.command("quantize")
@click.argument("src")
@click.argument("dst", type=click.Path(file_okay=False))
@click.option(
    "--shard-size",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_SHARD_BYTES / 1e9,
    show_default=True,
    help="Largest output shard, in GB (1e9 bytes); memory use does not depend on it.",
)
@overwrite_option("DST")
def quantize(src: str, dst: str, shard_size: float, overwrite: bool) -> None:
    """Quantize the MoE experts of SRC to MXFP4, writing the published layout to DST.

    SRC is a gpt-oss checkpoint folder with dense bf16 experts (as transformers saves a
    fine-tune), or a Hugging Face Hub id. DST must be a new or empty folder (or --overwrite); SRC
    is only read.
    """
    plan = plan_conversion(src, dst, int(shard_size * 1e9), overwrite)
    with click.progressbar(length=plan.total_bytes, label="quantizing", file=sys.stderr) as bar:
        write_quantized(plan, progress=bar.update)
    click.echo(
        f"wrote {plan.destination}: {len(plan.shards)} shard(s), {plan.total_bytes / 1e9:.2f} GB"
    )
