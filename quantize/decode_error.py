"""`quant-error --kernels NAME`: what a decode mode that is not exact costs, against the exact one.

One model (a checkpoint, or random weights of a preset geometry made in memory) decodes the same
tokens (random ids, or a text file) one at a time, each sequence from an empty cache, every
token fed whatever the model predicted (teacher forcing): first with the exact CPU decode step
(the reference), then with the kernels named (e.g. `cpu-q8`: the attention projections and the
head read in int8 with a scale per row). The weights, the caches' formats and the prompt are the
same; each position's next-token distributions are compared (`divergence.py`: KL(P_exact ‖ P)
in nats, top-1 agreement, the exact top-1 in the top 5), with the decode speed of both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from gptoss_lite.checkpoint.synthetic_memory import SyntheticCheckpoint
from gptoss_lite.engine.options import ModelOptions
from gptoss_lite.engine.runner import load
from gptoss_lite.errors import GptossError
from gptoss_lite.kernels import kernel_functions

from .divergence import Positions, compare_positions, summarize_kld, summarize_rate
from .kld import cut, model_name, scored_ids, token_summary

EXACT = "cpu"


def decode_error_report(
    model: str | Path | SyntheticCheckpoint,
    *,
    kernels: str,
    tokens: int = 512,
    context: int = 128,
    prompts: Path | None = None,
    seed: int = 0,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """KL divergence and top-1 agreement of decoding with `kernels` against the exact CPU
    decode step, on the CPU in bf16, and the milliseconds per token of each. Returns a
    JSON-ready dict (`mode` "decode")."""
    if kernels == EXACT:
        raise GptossError(f"--kernels {EXACT} is the exact reference; name another (cpu-q8)")
    runner = load(model, ModelOptions(device="cpu", context=context, kernels=EXACT))
    fast = kernel_functions(kernels).fused_step
    if fast is None:
        raise GptossError(f"kernels {kernels!r} have no decode step of their own to measure")
    config, net, cache = runner.config, runner.model, runner.cache
    sequences = cut(scored_ids(runner.folder, config.vocab_size, tokens, prompts, seed), context)
    steps = {EXACT: runner.model.fused_step, kernels: fast}
    seconds = dict.fromkeys(steps, 0.0)
    log(f"{kernels} against the exact decode step on {sequences.shape[0]} sequence(s) of "
        f"{sequences.shape[1]} tokens")  # fmt: skip
    measured: list[Positions] = []
    with torch.inference_mode():
        for step in steps.values():  # untimed: each mode makes what it reads at its first step
            net.fused_step = step
            cache.rewind(0)
            net(sequences[0, :1], cache, last_only=True)
        for sequence in sequences:
            logits = {}
            for name, step in steps.items():
                net.fused_step = step
                cache.rewind(0)
                start = time.perf_counter()
                rows = [net(token.view(1), cache, last_only=True) for token in sequence[:-1]]
                seconds[name] += time.perf_counter() - start
                logits[name] = torch.cat(rows)
            measured.append(compare_positions(logits[EXACT], logits[kernels]))
    net.fused_step = steps[EXACT]
    p = Positions.concat(measured)
    per_token = {
        k: 1000 * v / (sequences.shape[0] * (sequences.shape[1] - 1)) for k, v in seconds.items()
    }
    return {
        "mode": "decode",
        "model": model_name(model),
        "kernels": kernels,
        "tokens": token_summary(tokens, prompts, seed, sequences),
        "kld": summarize_kld(p.kld),
        "same_top1": summarize_rate(p.same_top1),
        "ref_top1_in_top5": summarize_rate(p.ref_top1_in_top5),
        "ms_per_token": per_token,
    }


def render_decode_markdown(report: dict) -> str:
    """The markdown of a `decode_error_report` dict."""
    t, k = report["tokens"], report["kld"]
    kind = (
        f"tokens of `{t['file']}`"
        if t["kind"] == "text"
        else f"random token ids (seed {t['seed']})"
    )
    ms = report["ms_per_token"]
    lines = [
        f"# Decode with `{report['kernels']}` against the exact CPU decode step",
        "",
        f"Model: {report['model']}, bf16 activations, on the CPU. Tokens: {t['sequences']} "
        f"sequence(s) × {t['context']} {kind}, decoded one at a time from an empty cache; "
        f"{t['positions']} positions scored. KLD is KL(P_exact ‖ P) of the next-token "
        "distributions, per position, in nats; ± is one standard error.",
        "",
        "| kernels | mean KLD ± stderr | median | p99 | max | same top-1 % | exact top-1 in "
        "top-5 % | ms/token |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| {EXACT} (exact) | (reference) | | | | | | {ms[EXACT]:.1f} |",
        f"| {report['kernels']} | {k['mean']:.4g} ± {k['stderr']:.2g} | {k['median']:.4g} | "
        f"{k['p99']:.4g} | {k['max']:.4g} | {100 * report['same_top1']['rate']:.2f} | "
        f"{100 * report['ref_top1_in_top5']['rate']:.2f} | {ms[report['kernels']]:.1f} |",
        "",
        "On random weights these figures show the method, not gpt-oss's real sensitivity: "
        "measure a real checkpoint (`--model`) for that.",
    ]
    return "\n".join(lines) + "\n"
