"""`report.md` of `quant-error --model`: the settings, one table row per model, how to read it.

The columns follow llama.cpp's `--kl-divergence` summary (mean KLD ± stderr, median, p90, p99,
max, "Same top p") and ExLlamaV3's `model_diff` (top-k agreement, perplexity of each model).
KLD values are printed to 4 significant digits, since the floor row is many decades below the rest.
"""

from __future__ import annotations

HEADER = (
    "| model | experts | activations + KV | against | mean KLD ± stderr | median | p90 | p99 "
    "| max | same top-1 % | ref top-1 in top-5 % | PPL |"
)


def render_model_markdown(report: dict) -> str:
    """The markdown of a `model_error_report` dict."""
    t = report["tokens"]
    lines = [
        "# Model-level quantization error: gptoss-lite with MXFP4 experts vs a float32 reference",
        "",
        f"Made by `{command(report)}`. Reference: {report['reference']}, of `{report['source']}`.",
        "",
        f"Tokens: {t['sequences']} sequence(s) × {t['context']} {_token_kind(t)}, each run from an "
        f"empty KV cache; {t['positions']} positions scored (every one with a next token in its "
        "sequence). KLD is KL(P_ref ‖ P) of the next-token distributions, per position, in nats; "
        'same top-1: the two argmaxes agree (llama.cpp\'s "Same top p"); ref top-1 in top-5: the '
        "reference's argmax is among the model's 5 likeliest tokens. ± is one standard error.",
        "",
        HEADER,
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(_row(r) for r in report["rows"]),
        "",
        f"Reference perplexity: {_ppl(report['reference_perplexity'])}"
        + (" (random tokens: perplexity is not meaningful)." if t["kind"] == "random" else "."),
        "",
        "Reading it: the transformers row is the cost of MXFP4 alone, inside the reference "
        "implementation; gptoss-lite fp32 is that cost in this runner; the other dtypes add their "
        "activations and KV cache (the runner keeps the cache in the activation dtype), so the gap "
        "between a row and the fp32 one is the cost of that dtype. The row against "
        '"transformers fp32, same MXFP4 experts" is the floor: both implementations holding the '
        "same weights.",
    ]
    return "\n".join(lines) + "\n"


def command(report: dict) -> str:
    """The `gptoss-lite quant-error --model` command line that made `report`."""
    t = report["tokens"]
    parts = ["gptoss-lite quant-error --model", report["source"]]
    parts += ["--tokens", str(t["requested"]), "--context", str(t["context"])]
    parts += ["--prompts", t["file"]] if t["kind"] == "text" else ["--seed", str(t["seed"])]
    for dtype in report["dtypes"]:
        parts += ["--dtype", dtype]
    return " ".join([*parts, "--device", report["device"]])


def _token_kind(tokens: dict) -> str:
    if tokens["kind"] == "text":
        return f"tokens of `{tokens['file']}`"
    return f"random token ids (uniform over the non-special ids, seed {tokens['seed']})"


def _row(r: dict) -> str:
    k, top1, top5 = r["kld"], r["same_top1"], r["ref_top1_in_top5"]
    cells = [
        r["model"],
        r["experts"],
        r["dtype"],
        r["against"],
        f"{k['mean']:.4g} ± {k['stderr']:.2g}",
        *(f"{k[name]:.4g}" for name in ("median", "p90", "p99", "max")),
        _percent(top1),
        _percent(top5),
        _ppl(r["perplexity"]),
    ]
    return "| " + " | ".join(cells) + " |"


def _percent(rate: dict) -> str:
    return f"{100 * rate['rate']:.2f} ± {100 * rate['stderr']:.2f}"


def _ppl(value: float | None) -> str:
    return "N/A" if value is None else f"{value:.4f}"
