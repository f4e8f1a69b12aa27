"""The model-level report of `quant-error --model`: KL divergence of the runner against a reference.

SRC is a checkpoint with dense bf16 experts (`save_pretrained` layout). The reference is
transformers' GptOssForCausalLM in float32 on SRC (`reference.py`); the subject is gptoss-lite on
the same weights, its experts quantized to MXFP4 as they are loaded (`gptoss_lite.load(SRC)`),
once per activation dtype, which is also its KV-cache dtype. The tokens (random ids, or a
text file) are cut into sequences of `context` tokens, each run from an empty cache; every position
with a next token in its sequence is scored (`divergence.py`). Rows: transformers with MXFP4
round-tripped experts (the cost of MXFP4 alone), gptoss-lite per dtype (MXFP4, then MXFP4 + bf16
activations/KV), and the floor: gptoss-lite float32 against transformers with the same experts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from gptoss_lite.chat.tokenizer import load_tokenizer
from gptoss_lite.chat.tokens import N_TEXT
from gptoss_lite.checkpoint.synthetic_memory import SyntheticCheckpoint
from gptoss_lite.config import ModelConfig
from gptoss_lite.engine.runner import load
from gptoss_lite.errors import GptossError

from .divergence import (
    Positions,
    compare_positions,
    negative_log_likelihood,
    perplexity,
    summarize_kld,
    summarize_rate,
)
from .reference import DESCRIPTION, load_reference, reference_logits, round_trip_experts
from .source import Source, read_source, resolve_source

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
REFERENCE, SAME_WEIGHTS = "reference", "transformers fp32, same MXFP4 experts"


def model_error_report(
    src: str,
    *,
    tokens: int = 2048,
    context: int = 512,
    prompts: Path | None = None,
    seed: int = 0,
    device: str | None = None,
    dtypes: tuple[str, ...] = ("fp32", "bf16"),
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """KLD, top-1 agreement and perplexity of gptoss-lite (MXFP4 experts) against the float32
    reference, on `tokens` random ids (seeded) or the first `tokens` tokens of the text file
    `prompts`, cut into sequences of `context` tokens; one runner row per activation/KV dtype.
    `log` is told what is being run. Returns a JSON-ready dict (`mode` "model")."""
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise GptossError(f"unknown dtype {unknown[0]!r}; use {', '.join(DTYPES)}")
    source = dense_source(src)
    folder = source.folder
    config = ModelConfig.from_hf(source.config, folder.name)
    sequences = cut(scored_ids(folder, config.vocab_size, tokens, prompts, seed), context)
    targets = sequences[:, 1:] if prompts is not None else None
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    log(f"reference: {DESCRIPTION}, on {where}")
    reference, same_weights = _reference_logits(folder, sequences, where)
    rows = [_row("transformers", "fp32", REFERENCE, _compare(reference, same_weights, targets))]
    for dtype in dtypes:
        log(f"gptoss-lite, MXFP4 experts, {dtype} activations and KV cache, on {where}")
        logits = _runner_logits(folder, sequences, where, dtype)
        rows.append(_row("gptoss-lite", dtype, REFERENCE, _compare(reference, logits, targets)))
        if dtype == "fp32":
            floor = _compare(same_weights, logits, targets)
            rows.append(_row("gptoss-lite", dtype, SAME_WEIGHTS, floor))
    return {
        "mode": "model",
        "source": str(folder),
        "device": str(where),
        "reference": DESCRIPTION,
        "dtypes": list(dtypes),
        "tokens": token_summary(tokens, prompts, seed, sequences),
        "reference_perplexity": _perplexity(reference, targets),
        "rows": rows,
    }


def token_summary(
    tokens: int, prompts: Path | None, seed: int, sequences: torch.Tensor
) -> dict[str, object]:
    """What was scored: random ids (with their seed) or a text file, cut into `sequences`."""
    return {
        "kind": "random" if prompts is None else "text",
        "file": None if prompts is None else str(prompts),
        "seed": seed if prompts is None else None,
        "requested": tokens,
        "sequences": sequences.shape[0],
        "context": sequences.shape[1],
        "positions": sequences.shape[0] * (sequences.shape[1] - 1),
    }


def model_name(model: str | Path | SyntheticCheckpoint) -> str:
    """The measured model in words: a checkpoint's path, or random weights of a geometry."""
    if isinstance(model, SyntheticCheckpoint):
        c = model.config
        return f"{c.name} geometry, {c.num_layers} layers, random weights (seed {model.seed})"
    return str(model)


def dense_source(src: str) -> Source:
    """SRC checked to hold dense experts, with its config (a one-line `GptossError` if not)."""
    method = _quant_method(Path(src).expanduser() / "config.json")
    if method is not None:
        raise GptossError(
            f"{src} is already quantized ({method}); quant-error --model needs the checkpoint "
            "with dense bf16 experts as its reference (the one `gptoss-lite quantize` reads)"
        )
    return read_source(resolve_source(src))


def _quant_method(config: Path) -> str | None:
    """The quant_method of a config.json; None when there is none (or no readable file)."""
    try:
        quantization = json.loads(config.read_text()).get("quantization_config")
        return (quantization.get("quant_method") or "unknown method") if quantization else None
    except (OSError, ValueError, AttributeError):
        return None  # read_source says what is wrong with the file


def text_ids(folder: Path, prompts: Path, vocab_size: int) -> torch.Tensor:
    """Token ids of the whole text file `prompts`, with the tokenizer of `folder` (or tiktoken)."""
    try:
        text = prompts.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GptossError(f"cannot read --prompts {prompts}: {exc}") from None
    ids = torch.tensor(load_tokenizer(folder).encode(text), dtype=torch.long)
    if ids.numel() and int(ids.max()) >= vocab_size:
        raise GptossError(
            f"{prompts} gives token id {int(ids.max())}, beyond this model's vocabulary of "
            f"{vocab_size}; use random tokens (leave out --prompts)"
        )
    return ids


def scored_ids(
    folder: Path | None, vocab_size: int, tokens: int, prompts: Path | None, seed: int
) -> torch.Tensor:
    """`tokens` ids to score: drawn at random from the text vocabulary (generator seeded `seed`),
    or the first of the text file `prompts` read with the tokenizer of `folder`."""
    if prompts is None:
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, min(vocab_size, N_TEXT), (tokens,), generator=generator)
    return text_ids(folder, prompts, vocab_size)[:tokens]


def cut(ids: torch.Tensor, context: int) -> torch.Tensor:
    """`ids` as whole sequences `[S, C]` of C = min(context, len) tokens; the rest is dropped."""
    context = min(context, ids.numel())
    if context < 2 or ids.numel() // context * (context - 1) < 2:
        raise GptossError(
            f"{ids.numel()} tokens with --context {context} leave fewer than 2 positions to score; "
            "give more tokens or a longer --context"
        )
    return ids[: ids.numel() // context * context].view(-1, context)


def _reference_logits(
    folder: Path, sequences: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference logits `[S, C, V]`, then those of the same model with MXFP4 round-trip experts."""
    model = load_reference(folder, device)
    reference = reference_logits(model, sequences)
    round_trip_experts(model)
    return reference, reference_logits(model, sequences)


def _runner_logits(
    folder: Path, sequences: torch.Tensor, device: torch.device, dtype: str
) -> torch.Tensor:
    """Logits `[S, C, V]` (float32, CPU) of gptoss-lite in `dtype`, each sequence from empty;
    the dense experts of `folder` are quantized to MXFP4 as they are loaded."""
    runner = load(folder, device=device, dtype=DTYPES[dtype], context=sequences.shape[1])
    return torch.stack([runner.logits(seq.tolist()).cpu() for seq in sequences])


def _compare(
    reference: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor | None
) -> Positions:
    """Every position with a next token in its sequence (the last one of each has none)."""
    parts = []
    for k, (ref, got) in enumerate(zip(reference, logits, strict=True)):
        parts.append(compare_positions(ref[:-1], got[:-1], None if targets is None else targets[k]))
    return Positions.concat(parts)


def _perplexity(logits: torch.Tensor, targets: torch.Tensor | None) -> float | None:
    if targets is None:
        return None
    return perplexity(
        torch.cat(
            [negative_log_likelihood(x[:-1], t) for x, t in zip(logits, targets, strict=True)]
        )
    )


def _row(model: str, dtype: str, against: str, p: Positions) -> dict:
    return {
        "model": model,
        "experts": "MXFP4",
        "dtype": dtype,
        "against": against,
        "kld": summarize_kld(p.kld),
        "same_top1": summarize_rate(p.same_top1),
        "ref_top1_in_top5": summarize_rate(p.ref_top1_in_top5),
        "perplexity": None if p.nll is None else perplexity(p.nll),
    }
