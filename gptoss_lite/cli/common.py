"""What `run` and `chat` share besides their options: opening a model, reports on stderr.

`open_model` finds the model (resolving it and reading its config once), loads its tokenizer and
makes the prompt (so a missing tokenizer or a prompt too long fails before the slow part),
prints the memory plan on stderr and only then reads the weights. On a terminal, `Progress`
shows the weights loaded and the prompt tokens prefilled on one rewritten stderr line (nothing
when stderr is not a terminal). `read_prompt` takes the prompt from the argument or stdin;
`plan_line`, `kv_warning` and `stats_lines` are the summaries printed on stderr.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TextIO

import click
import torch

from ..chat.reply_grammar import ReplyFormat
from ..chat.stats import ReplyStats
from ..chat.tokenizer import Tokenizer, load_tokenizer
from ..engine.constraint import compile_reply
from ..engine.generate import check_fits
from ..engine.grammar import Grammar
from ..engine.options import ModelOptions
from ..engine.runner import Runner, find_model, load
from ..engine.session import chat_ring_slots
from ..errors import GptossError
from ..measure.meter import peak_memory
from ..memory.plan import Plan
from ..memory.profiles import resolve_profile, run_device
from ..units import format_bytes

# A published measurement on gpt-oss-20b's real weights (llama.cpp's `llama-perplexity
# --kl-divergence`), quoted by `kv_warning`: none can be taken here without the weights.
K_CACHE_COST = (
    "gpt-oss-20b with q8_0 K and V at 8k context: median KL 0.055 nats, 74.9 % same top-1"
)


@dataclass
class Model:
    """A loaded runner, its tokenizer, how long loading took, the prompt it was loaded for and
    the grammar its replies are held to (None: free)."""

    runner: Runner
    tokenizer: Tokenizer
    load_seconds: float
    prompt: list[int]
    grammar: Grammar | None = None


def open_model(
    model: str,
    options: ModelOptions,
    *,
    max_tokens: int | None = None,
    chat: bool = False,
    prompt_of: Callable[[Tokenizer], list[int]] | None = None,
    reply: ReplyFormat | None = None,
) -> Model:
    """Find `model` and its tokenizer, make the prompt with `prompt_of(tokenizer)` and the
    grammar of `reply`, print the memory plan on stderr (refusing a prompt that does not fit it
    with `max_tokens` more), then read the weights as `options` say.

    Every check runs before the slow load. For a chat the sliding-window rings get room to
    rewind over a whole reply."""
    profile = resolve_profile(options.profile, options.device, options.budget)
    run_device(profile, options.device)  # before anything is read or downloaded
    source = find_model(model)  # from the Hub: the weights come after the plan
    tokenizer = load_tokenizer(source.folder)
    prompt = prompt_of(tokenizer) if prompt_of else []
    grammar = None if reply is None else compile_reply(reply, tokenizer)
    ring = chat_ring_slots(source.config, max_tokens) if chat else None

    def show(plan: Plan) -> None:
        if prompt:
            check_fits(len(prompt), max_tokens, plan.context)
        click.echo(plan_line(plan), err=True)
        warn_kv(plan)

    start = time.perf_counter()
    runner = load(
        source,
        replace(options, profile=profile, budget=None),  # the budget is in the profile now
        ring_slots=ring,
        on_plan=show,
        progress=Progress.on_stderr("loading weights", format_bytes),
    )
    runner.progress = Progress.on_stderr("prefill", lambda n: f"{n:,} tokens")
    return Model(runner, tokenizer, time.perf_counter() - start, prompt, grammar)


class Progress:
    """`progress(done, total)` shown as one line rewritten in place, cleared when done."""

    def __init__(self, label: str, unit: Callable[[int], str], stream: TextIO) -> None:
        self.label, self.unit, self.stream = label, unit, stream

    @classmethod
    def on_stderr(cls, label: str, unit: Callable[[int], str]) -> Progress | None:
        """A `Progress` on stderr when it is a terminal, else None (nothing shown)."""
        return cls(label, unit, sys.stderr) if sys.stderr.isatty() else None

    def __call__(self, done: int, total: int) -> None:
        line = f"{self.label}: {self.unit(done)} of {self.unit(total)} ({done / total:.0%})"
        end = "\r\033[K" if done >= total else ""  # erase the line once finished
        self.stream.write(f"\r\033[K{line}{end}")
        self.stream.flush()


def read_prompt(argument: str | None) -> str:
    """The PROMPT argument, else all of stdin when it is not a terminal."""
    if argument is None and not sys.stdin.isatty():
        argument = sys.stdin.read()
    if argument is None or not argument.strip():
        raise GptossError("no prompt: give it as an argument or on stdin")
    return argument


def plan_line(p: Plan) -> str:
    """The memory plan in one line: context, then weights + KV + activations + reserve."""
    parts = {
        "weights": p.weights_bytes,
        "KV cache": p.kv_bytes,
        "activations": p.activation_bytes,
        "reserve": p.reserve_bytes,
    }
    sums = " + ".join(f"{name} {format_bytes(n)}" for name, n in parts.items())
    host = f"; experts of {p.cpu_experts} layers in host RAM" if p.cpu_experts else ""
    each = f" for each of {p.parallel} sequences" if p.parallel > 1 else ""
    return (
        f"{p.model} on {p.profile} ({p.device}): context {p.context:,} tokens{each}; "
        f"{sums} = {format_bytes(p.total_bytes)} of {format_bytes(p.budget_bytes)}{host}"
    )


def kv_warning(p: Plan) -> str | None:
    """One line on the cost of a quantized K cache, or None when K is not quantized."""
    if not p.kv_cache_dtype.quantized_k:
        return None
    return (
        f"warning: K cache in {p.kv_cache_dtype.k}: gpt-oss is sensitive to quantized keys "
        f"({K_CACHE_COST}); measure yours with `gptoss-lite quant-error --kv`"
    )


def warn_kv(p: Plan) -> None:
    """Print `kv_warning` on stderr when there is one."""
    line = kv_warning(p)
    if line is not None:
        click.echo(line, err=True)


def stats_lines(stats: ReplyStats, finish_reason: str, device: torch.device) -> list[str]:
    """Prompt and reply token counts with their speeds, and the peak memory so far."""
    lines = [
        f"prompt: {stats.prompt_tokens:,} tokens ({stats.cached_tokens:,} cached), prefilled at "
        f"{stats.prefill_rate:,.1f} tok/s ({stats.prefill_seconds:.2f} s)",
        f"reply: {stats.generated_tokens:,} tokens ({finish_reason}), decoded at "
        f"{stats.decode_rate:,.1f} tok/s ({stats.decode_seconds:.2f} s)",
    ]
    peak = peak_memory(device)
    if peak is not None:
        lines.append(f"peak memory: {format_bytes(peak[0])} ({peak[1]})")
    return lines
