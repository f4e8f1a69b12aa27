"""`quant-error --kv`: what each K/V cache format costs, measured against the unquantized cache.

One model (a checkpoint, or random weights of a preset geometry made in memory) runs the same
tokens (random ids, or a text file) cut into sequences, each from an empty cache: first with
K and V in bf16 (the reference), then once per (K, V) pair of formats with a cache in those
formats, the weights and activations unchanged. Every position with a next token in its sequence
is compared with the reference (`divergence.py`: KL(P_ref ‖ P) in nats, mean ± stderr, median,
p99, max; top-1 agreement, the reference's top-1 in the top 5). The context column is the plan of
the model (of the full preset geometry, for random weights of fewer layers) on a profile with
that pair: what the bytes saved buy. The sequences are compared one at a time, so at most two
sequences' logits are held.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from gptoss_lite.checkpoint.synthetic_memory import SyntheticCheckpoint
from gptoss_lite.config import ModelConfig
from gptoss_lite.engine.runner import load
from gptoss_lite.errors import GptossError
from gptoss_lite.memory.plan import plan
from gptoss_lite.memory.profiles import load_profile
from gptoss_lite.model.cache import KVCache
from gptoss_lite.model.kv_quant import UNQUANTIZED, KVDtypes

from .divergence import Positions, compare_positions, summarize_kld, summarize_rate
from .kld import DTYPES, cut, model_name, scored_ids, token_summary

PAIRS = tuple(
    KVDtypes.parse(p) for p in ("q8", "bf16,q8", "q8,bf16", "fp8", "bf16,fp8", "fp8,bf16")
)


def kv_error_report(
    model: str | Path | SyntheticCheckpoint,
    *,
    pairs: tuple[KVDtypes, ...] = PAIRS,
    tokens: int = 2048,
    context: int = 512,
    prompts: Path | None = None,
    seed: int = 0,
    device: str | None = None,
    dtype: str = "bf16",
    profile: str = "rtx4090",
    plan_config: ModelConfig | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Per (K, V) pair: KL divergence and top-1 agreement against the bf16/bf16 cache, and the
    context the pair gets from the planner on `profile` (for `plan_config`, by default the
    model's). Returns a JSON-ready dict (`mode` "kv")."""
    if dtype not in DTYPES:
        raise GptossError(f"unknown dtype {dtype!r}; use {', '.join(DTYPES)}")
    pairs = tuple(p for p in dict.fromkeys(pairs) if p != UNQUANTIZED)
    if not pairs:
        raise GptossError("no K/V pair to measure besides the bf16,bf16 reference")
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    runner = load(model, device=where, dtype=DTYPES[dtype], context=context)
    config = runner.config
    sequences = cut(scored_ids(runner.folder, config.vocab_size, tokens, prompts, seed), context)
    caches = {
        kv: KVCache(config, sequences.shape[1], device=where, dtype=DTYPES[dtype], kv_dtypes=kv)
        for kv in (UNQUANTIZED, *pairs)
    }
    log(f"{len(pairs)} K/V pairs against bf16,bf16 on {sequences.shape[0]} sequence(s), {where}")
    measured: dict[KVDtypes, list[Positions]] = {kv: [] for kv in pairs}
    for sequence in sequences.tolist():
        runner.cache = caches[UNQUANTIZED]
        reference = runner.logits(sequence)[:-1]
        for kv in pairs:
            runner.cache = caches[kv]
            measured[kv].append(compare_positions(reference, runner.logits(sequence)[:-1]))
    contexts = _contexts(plan_config or config, profile, (UNQUANTIZED, *pairs))
    rows = [_row(UNQUANTIZED, None, contexts)]
    rows += [_row(kv, Positions.concat(measured[kv]), contexts) for kv in pairs]
    return {
        "mode": "kv",
        "model": model_name(model),
        "device": str(where),
        "dtype": dtype,
        "profile": profile,
        "plan_model": (plan_config or config).name,
        "tokens": token_summary(tokens, prompts, seed, sequences),
        "rows": rows,
    }


def _contexts(config: ModelConfig, profile: str, pairs) -> dict[KVDtypes, dict | None]:
    """The planner's context and KV bytes per token for each pair (None where it cannot fit)."""
    base = load_profile(profile)
    out = {}
    for kv in pairs:
        try:
            p = plan(config, replace(base, kv_cache_dtype=kv))
        except GptossError:
            out[kv] = None
        else:
            out[kv] = {
                "context": p.context,
                "bound": p.bound,
                "bytes_per_token": p.kv_bytes_per_token,
            }
    return out


def _row(kv: KVDtypes, p: Positions | None, contexts: dict) -> dict:
    fit, base = contexts[kv], contexts[UNQUANTIZED]
    gain = fit["context"] / base["context"] if fit and base else None
    return {
        "k": kv.k,
        "v": kv.v,
        "kld": None if p is None else summarize_kld(p.kld),
        "same_top1": None if p is None else summarize_rate(p.same_top1),
        "ref_top1_in_top5": None if p is None else summarize_rate(p.ref_top1_in_top5),
        "plan": fit,
        "context_vs_bf16": gain,
    }


# ---------------------------------------------------------------------------- report.md

HEADER = (
    "| K | V | mean KLD ± stderr | median | p99 | max | same top-1 % | ref top-1 in top-5 % "
    "| KV B/token | context | × bf16 |"
)


def render_kv_markdown(report: dict) -> str:
    """The markdown of a `kv_error_report` dict."""
    t = report["tokens"]
    kind = (
        f"tokens of `{t['file']}`"
        if t["kind"] == "text"
        else f"random token ids (seed {t['seed']})"
    )
    lines = [
        "# KV-cache quantization error: each K/V format against the bf16 cache",
        "",
        f"Model: {report['model']}, {report['dtype']} activations, on {report['device']}. "
        f"Tokens: {t['sequences']} sequence(s) × {t['context']} {kind}, each from an empty "
        f"cache; {t['positions']} positions scored. KLD is KL(P_bf16 ‖ P) of the next-token "
        "distributions, per position, in nats; ± is one standard error. The context is what "
        f"the planner gives {report['plan_model']} on profile {report['profile']} with that "
        "cache.",
        "",
        HEADER,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(_markdown_row(r) for r in report["rows"]),
        "",
        "On random weights these figures show the method, not gpt-oss's real sensitivity to a "
        "quantized cache: measure a real checkpoint (`--model`) for that.",
    ]
    return "\n".join(lines) + "\n"


def _markdown_row(r: dict) -> str:
    k, fit = r["kld"], r["plan"]
    if k is None:
        measured = ["(reference)", "", "", "", "", ""]
    else:
        measured = [
            f"{k['mean']:.4g} ± {k['stderr']:.2g}",
            *(f"{k[name]:.4g}" for name in ("median", "p99", "max")),
            *(f"{100 * r[name]['rate']:.2f}" for name in ("same_top1", "ref_top1_in_top5")),
        ]
    plan_cells = (
        ["n/a", "does not fit", ""]
        if fit is None
        else [f"{fit['bytes_per_token']:,}", f"{fit['context']:,}", _times(r["context_vs_bf16"])]
    )
    return "| " + " | ".join([r["k"], r["v"], *measured, *plan_cells]) + " |"


def _times(gain: float | None) -> str:
    return "" if gain is None else f"{gain:.2f}"
