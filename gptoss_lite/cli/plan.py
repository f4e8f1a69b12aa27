"""`gptoss-lite plan`: print the memory plan of a model on a profile, without weights or a GPU.

The model is a preset name, a Hub-like id whose last part is a preset (`openai/gpt-oss-20b`),
or a local checkpoint folder / `config.json`. The human output is a table of bytes per category,
the context chosen and what bound it, and the KV-cache growth per token (codes and scales, in
the formats of --kv-cache-dtype or the profile), and on a GPU what stays in host RAM against what
the host leaves tensors (`--host-ram` plans for another machine's RAM); `--json` prints
`Plan.to_json()` for scripts. With `--parallel N` (or auto, as `serve` picks) the KV budget is
split between N sequences, and the context shown is each one's.
A quantized K cache adds one warning line on stderr.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from ..config import ModelConfig, preset, preset_names, read_config
from ..errors import GptossError
from ..memory.categories import CATEGORIES
from ..memory.plan import CONTEXT_GRANULE, Plan
from ..memory.plan import plan as make_plan
from ..memory.profiles import resolve_profile
from ..model.kv_quant import UNQUANTIZED, KVDtypes
from ..units import GIB, mib
from .common import warn_kv
from .options import (
    Gib,
    budget_option,
    context_option,
    cpu_experts_option,
    kv_cache_option,
    model_option,
    parallel_option,
    profile_option,
)


@click.command()
@model_option(
    "Preset (gpt-oss-20b, gpt-oss-120b), Hub id, checkpoint folder or config.json.",
    default="gpt-oss-20b",
)
@profile_option(default="auto", name="profile_name")
@context_option("Context to check (tokens) [default: the largest that fits].")
@click.option(
    "--prefill-chunk",
    type=int,
    default=None,
    help="Prompt tokens per forward pass; default: the profile's.",
)
@budget_option()
@kv_cache_option()
@cpu_experts_option()
@click.option(
    "--host-ram",
    type=Gib(),
    default=None,
    metavar="GIB",
    help="Host RAM to plan a GPU run's host-side tensors in, in GiB [default: this machine's].",
)
@parallel_option(default="1")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(
    model: str,
    profile_name: str,
    context: int | None,
    prefill_chunk: int | None,
    budget: float | None,
    kv_cache_dtype: KVDtypes | None,
    cpu_experts: int | str | None,
    host_ram: float | None,
    parallel: int | None,
    as_json: bool,
) -> None:
    """Show how a model fits a device: weights, KV cache, activations, and the context."""
    config = model_config(model)
    profile = resolve_profile(profile_name, budget_gib=budget)
    if kv_cache_dtype is not None:
        profile = replace(profile, kv_cache_dtype=kv_cache_dtype)
    result = make_plan(
        config,
        profile,
        context,
        prefill_chunk=prefill_chunk,
        cpu_experts=cpu_experts,
        host_memory=None if host_ram is None else round(host_ram * GIB),
        parallel=parallel,
    )
    about = profile.description
    if budget is not None:
        about = f"{about} (budget set to {budget:g} GiB by --budget)".lstrip()
    click.echo(result.to_json() if as_json else render(result, about))
    warn_kv(result)


def model_config(model: str) -> ModelConfig:
    """A config from a local folder or config.json, else from a preset name or Hub id."""
    path = Path(model).expanduser()
    if path.is_dir():
        return read_config(path)
    if path.is_file():
        if path.name != "config.json":
            raise GptossError(f"--model {model}: expected a folder or a config.json file")
        return read_config(path.parent)
    if model.split("/")[-1].lower() in preset_names():
        return preset(model)
    raise GptossError(
        f"--model {model}: not a folder, a config.json or a known model "
        f"({', '.join(preset_names())})"
    )


def render(p: Plan, description: str = "") -> str:
    """The plan as a table of MiB / GiB per category, then the context and KV notes."""
    title = f"{p.model} on {p.profile} ({p.device})"
    lines = [f"{title}: {description}" if description else title, ""]
    lines.append(_row(f"on {p.device}", "MiB", "GiB"))
    lines += [_row(CATEGORIES[name], *_sizes(n)) for name, n in p.weights.items()]
    lines.append(_row("weights", *_sizes(p.weights_bytes)))
    kv = "" if p.kv_cache_dtype == UNQUANTIZED else f" {p.kv_cache_dtype}"
    tokens = f"{p.context:,} tokens" + (f" x {p.parallel}" if p.parallel > 1 else "")
    lines.append(_row(f"KV cache{kv} ({tokens})", *_sizes(p.kv_bytes)))
    lines.append(_row(f"activations (chunk {p.prefill_chunk})", *_sizes(p.activation_bytes)))
    lines.append(_row("reserve (context, allocator)", *_sizes(p.reserve_bytes)))
    lines.append(_row("total", *_sizes(p.total_bytes)))
    lines.append(_row("budget", *_sizes(p.budget_bytes)))
    for name, n in p.host_weights.items():
        lines.append(_row(f"{CATEGORIES[name]}, on the host", *_sizes(n)))
    return "\n".join([*lines, "", *_notes(p)])


def _notes(p: Plan) -> list[str]:
    why = {
        "budget": f"the most that fits the budget, rounded down to a multiple of {CONTEXT_GRANULE}",
        "cap": "the cap of the profile or the model; the budget would allow more",
        "requested": "as requested, and it fits",
    }[p.bound]
    phases = {k: v for k, v in p.activations.items() if k != "resident"}
    peak = max(phases, key=phases.get)
    split = []
    if p.cpu_experts:
        split = [
            f"experts: {p.cpu_experts} layers' in host RAM (run by the CPU kernel), the other "
            f"layers' on {p.device}"
        ]
    if p.host_room_bytes is not None:
        split.append(
            f"host RAM: {p.host_bytes / GIB:.2f} GiB used of {p.host_room_bytes / GIB:.2f} GiB "
            "available (the RAM less the cpu profile's system headroom and reserve)"
        )
    each = f" for each of {p.parallel} sequences" if p.parallel > 1 else ""
    sequences = []
    if p.parallel > 1:
        sequences = [
            f"sequences: {p.parallel} decoded together (serve), each with a KV cache of "
            f"{p.kv_sequence_bytes:,} B ({mib(p.kv_sequence_bytes, 1)} MiB)"
        ]
    return [
        *split,
        f"context: {p.context:,} tokens{each} ({why})",
        *sequences,
        f"KV cache: {p.kv_bytes_per_token:,} B per token (K {p.kv_cache_dtype.k}, V "
        f"{p.kv_cache_dtype.v}, full-attention layers) + {mib(p.kv_ring_bytes)} MiB of "
        f"sliding-window rings{' per sequence' if p.parallel > 1 else ''}",
        f"activations: peak in the {peak} phase ({mib(phases[peak], 1)} MiB) + "
        f"{mib(p.activations['resident'], 1)} MiB resident",
    ]


def _row(label: str, mib: str, gib: str) -> str:
    return f"  {label:<38}{mib:>12}{gib:>10}"


def _sizes(n: int) -> tuple[str, str]:
    return mib(n, 1), f"{n / GIB:.3f}"
