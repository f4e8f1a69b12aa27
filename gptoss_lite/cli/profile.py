"""`gptoss-lite profile`: load a model, prefill and decode, and report memory against the plan.

A thin shell over `gptoss_lite.measure.vram_report`: `--model` loads a real checkpoint (folder
or Hub id), `--geometry GEOMETRY` random weights of a preset geometry made in memory (check the
fit before a 13 GB download); `--parallel N` gives N sequences a KV cache each, checked one by
one, and decodes them together. It prints the verdict and the plan-vs-measured table, and writes
report.md, report.json and report.png into `--out` (an earlier report there is replaced whole,
or kept).
"""

from __future__ import annotations

from pathlib import Path

import click

from ..checkpoint.synthetic_memory import SyntheticCheckpoint
from ..config import ModelConfig
from ..errors import GptossError
from ..measure.vram_report import measure_memory
from ..measure.vram_report_files import PNG_SKIPPED, REPORT_FILES, comparison_table, write_report
from ..outputs import check_outputs
from .common import warn_kv
from .options import (
    budget_option,
    context_option,
    cpu_experts_option,
    device_option,
    geometry_option,
    kv_cache_option,
    model_option,
    overwrite_option,
    parallel_option,
    profile_option,
    take_model_options,
)


# fmt: off
@click.command("profile")
@model_option("Checkpoint folder or Hub repo id to load.")
@geometry_option("Random weights of this preset geometry, made in memory, instead of --model.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the synthetic weights and of the random prompt.")
@profile_option()
@context_option("Context (tokens) to size the KV cache for [default: the largest that fits].")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Random prompt tokens to prefill (in the profile's chunks).")
@click.option("--gen-tokens", type=click.IntRange(min=0), default=4, show_default=True,
              help="Tokens to decode greedily after the prefill.")
@device_option()
@budget_option()
@click.option("--enforce/--no-enforce", default=None,
              help="Cap the CUDA allocator at the profile's card memory (default: on for CUDA).")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path),
              default=Path("profile-report"), show_default=True,
              help="Folder for report.md, report.json and report.png.")
@overwrite_option("an earlier report in --out")
@kv_cache_option()
@cpu_experts_option()
@parallel_option(default="1")
def profile_command(model: str | None, geometry: ModelConfig | None, seed: int,
                    prompt_tokens: int, gen_tokens: int, enforce: bool | None, out: Path,
                    overwrite: bool, **opening) -> None:
    """Measure memory per phase (load, prefill, decode) and compare it with the plan."""
    options = take_model_options(opening)
    if (model is None) == (geometry is None):
        raise GptossError("pass exactly one of --model PATH|HUB_ID and --geometry GEOMETRY")
    check_outputs(out, REPORT_FILES, overwrite)
    source = SyntheticCheckpoint(geometry, seed) if geometry else model
    report = measure_memory(source, options, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens,
                            enforce=enforce, seed=seed)
    warn_kv(report.plan)
    files = write_report(report, out)
    click.echo("\n".join([report.verdict()[1], "", *comparison_table(report.rows()), ""]))
    click.echo("wrote " + ", ".join(str(f) for f in files))
    if not any(f.suffix == ".png" for f in files):
        click.echo(PNG_SKIPPED)
# fmt: on
