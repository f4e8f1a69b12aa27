"""`gptoss-lite synth`: write random weights in the exact published checkpoint layout.

A thin shell over `gptoss_lite.checkpoint.synthetic.write_synthetic`: it takes a preset
geometry (optionally with fewer layers), shows a progress bar on stderr while the tensors stream
to disk, and prints the files it wrote with their sizes, the tensor bytes and the time taken.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from ..checkpoint.synthetic import tensor_nbytes, write_synthetic
from ..config import ModelConfig
from .options import geometry_option, overwrite_option


# fmt: off
@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@geometry_option("Architecture whose shapes to copy.", default="tiny")
@click.option("--layers", type=click.IntRange(min=1), default=None,
              help="Number of layers (default: the geometry's).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed; one seed gives the same weights in both layouts.")
@click.option("--layout", type=click.Choice(["hf", "original"]), default="hf", show_default=True,
              help="Hugging Face repo root, or OpenAI's original/ folder format.")
@click.option("--shards", type=click.IntRange(min=1), default=None,
              help="Number of .safetensors files (default: as published for 20b/120b, else 1).")
@overwrite_option("OUT")
def synth(out: Path, geometry: ModelConfig, layers: int | None, seed: int, layout: str,
          shards: int | None, overwrite: bool) -> None:
    """Write a random gpt-oss checkpoint to OUT, for tests and benchmarks without a download."""
    config = geometry
    if layers is not None:
        config = config.with_(num_layers=layers)
    start = time.perf_counter()
    with click.progressbar(length=tensor_nbytes(config), label=f"writing {out}",
                           file=sys.stderr) as bar:
        write_synthetic(out, config, seed=seed, layout=layout, shards=shards,
                         overwrite=overwrite, progress=bar.update)
    seconds = time.perf_counter() - start
    title = f"{config.name}, {config.num_layers} layers, {layout} layout, seed {seed}"
    click.echo(render(out, title, tensor_nbytes(config), seconds))
# fmt: on


def render(folder: Path, title: str, tensor_bytes: int, seconds: float) -> str:
    """The files of `folder` with their sizes, then the totals and the write speed."""
    files = sorted(folder.iterdir())
    width = max(len(f.name) for f in files)
    lines = [f"wrote {folder} ({title})"]
    lines += [f"  {f.name:<{width}}  {f.stat().st_size:>17,} B" for f in files]
    lines.append(
        f"{tensor_bytes:,} B of tensors in {len(files)} files, {seconds:.1f} s "
        f"({tensor_bytes / max(seconds, 1e-9) / 1e6:,.0f} MB/s)"
    )
    return "\n".join(lines)
