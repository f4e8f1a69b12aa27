"""`gptoss-lite profile`: load a model, prefill and decode, and report memory against the plan.

A thin shell over `gptoss_lite.memory.report`: `--model` loads a real checkpoint (folder or Hub id),
`--synthetic GEOMETRY` random weights of a preset geometry made in memory (check the fit before a
13 GB download). It prints the verdict and the plan-vs-measured table, and writes report.md,
report.json and report.png into `--out`.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..checkpoint.synthetic_memory import SyntheticCheckpoint
from ..config import preset
from ..errors import GptossError
from ..memory.report import measure_memory
from ..memory.report_files import PNG_SKIPPED, REPORT_FILES, comparison_table, write_report
from ..model.kv_quant import KVDtypes
from ..outputs import check_outputs
from .common import warn_kv
from .options import kv_cache_option


# fmt: off
@click.command("profile")
@click.option("--model", "-m", default=None,
              help="Checkpoint folder or Hub repo id to load.")
@click.option("--synthetic", "-s", default=None, metavar="GEOMETRY",
              help="Random weights of a preset geometry made in memory (gpt-oss-20b, "
                   "gpt-oss-120b, tiny) instead of --model.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the synthetic weights and of the random prompt.")
@click.option("--profile", "-p", "profile_name", default=None,
              help="Built-in profile name, a .toml file, or 'auto' to detect this machine "
                   "(the default; with --device cpu: the cpu profile sized to this host).")
@click.option("--context", "-c", type=int, default=None,
              help="Context (tokens) to size the KV cache for; default: the largest that fits.")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Random prompt tokens to prefill (in the profile's chunks).")
@click.option("--gen-tokens", type=click.IntRange(min=0), default=4, show_default=True,
              help="Tokens to decode greedily after the prefill.")
@click.option("--device", "-d", default=None,
              help="torch device (cuda, cuda:1, cpu); default: the profile's.")
@click.option("--enforce/--no-enforce", default=None,
              help="Cap the CUDA allocator at the profile's card memory (default: on for CUDA).")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path),
              default=Path("profile-report"), show_default=True,
              help="Folder for report.md, report.json and report.png.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier report in --out.")
@kv_cache_option
def profile(model: str | None, synthetic: str | None, seed: int, profile_name: str | None,
            context: int | None, prompt_tokens: int, gen_tokens: int, device: str | None,
            enforce: bool | None, out: Path, overwrite: bool,
            kv_cache_dtype: KVDtypes | None) -> None:
    """Measure memory per phase (load, prefill, decode) and compare it with the plan."""
    if (model is None) == (synthetic is None):
        raise GptossError("pass exactly one of --model PATH|HUB_ID and --synthetic GEOMETRY")
    check_outputs(out, REPORT_FILES, overwrite)
    source = SyntheticCheckpoint(preset(synthetic), seed) if synthetic else model
    report = measure_memory(source, profile=profile_name, context=context,
                            prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, device=device,
                            enforce=enforce, seed=seed, kv_cache_dtype=kv_cache_dtype)
    warn_kv(report.plan)
    files = write_report(report, out)
    click.echo("\n".join([report.verdict()[1], "", *comparison_table(report.rows()), ""]))
    click.echo("wrote " + ", ".join(str(f) for f in files))
    if not any(f.suffix == ".png" for f in files):
        click.echo(PNG_SKIPPED)
# fmt: on
