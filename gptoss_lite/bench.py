"""Speed and memory of one runner: prefill tok/s, decode tok/s, achieved bandwidth, peak memory.

`bench` feeds a random prompt and decodes greedily, timing each phase with the device
synchronized, and relates the decode time to the bytes a decode step must read
(`decode_bytes_per_token`: the routed experts' packed MXFP4 bytes, the attention and router
weights, the lm_head, and the KV cache it attends over). `bench_transformers` runs HF
transformers on the same checkpoint for a side-by-side figure.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from .chat.stats import peak_memory
from .config import ModelConfig
from .engine.generate import prefill
from .engine.graphs import GraphedDecodeStep
from .engine.runner import Runner
from .memory.categories import category_of
from .memory.plan import decode_bytes_per_token, kv_slot_bytes


@dataclass
class BenchResult:
    engine: str
    device: str
    prompt_tokens: int
    gen_tokens: int
    prefill_seconds: float
    decode_seconds: float  # for gen_tokens decode steps
    decode_bytes_per_token: int
    peak_memory_bytes: int | None
    peak_memory_kind: str

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds

    @property
    def decode_tok_s(self) -> float:
        return self.gen_tokens / self.decode_seconds

    @property
    def ms_per_token(self) -> float:
        return 1000 * self.decode_seconds / self.gen_tokens

    @property
    def decode_gb_s(self) -> float:
        return self.decode_bytes_per_token * self.decode_tok_s / 1e9

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in ("prefill_tok_s", "decode_tok_s", "ms_per_token", "decode_gb_s"):
            out[name] = getattr(self, name)
        return out


def resident_bytes(runner: Runner) -> dict[str, int]:
    """Bytes of the loaded weights: all of them, and the packed MXFP4 expert blocks + scales."""
    params = dict(runner.model.named_parameters())
    packed = [
        t for name, t in params.items() if category_of(name) == "experts" and t.dtype == torch.uint8
    ]
    return {
        "weights": sum(t.nbytes for t in params.values()),
        "experts_packed": sum(t.nbytes for t in packed),
    }


def bench(
    runner: Runner, prompt_tokens: int, gen_tokens: int, seed: int = 0, cuda_graph: bool = False
) -> BenchResult:
    """Prefill `prompt_tokens` random tokens, then decode `gen_tokens` greedily. With
    `cuda_graph` each step is a graph replay; the first step (warm-up and capture) runs before
    the clock starts, and `gen_tokens` more are timed."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, runner.config.vocab_size, (prompt_tokens,), generator=g)
    device = runner.device
    _reset_peak(device)
    runner.cache.rewind(0)
    start = _now(device)
    logits = prefill(runner.model, runner.cache, prompt.to(device), runner.prefill_chunk)
    prefill_seconds = _now(device) - start
    token = logits[-1].argmax().view(1)
    if cuda_graph:
        step = GraphedDecodeStep(runner.model, runner.cache)
        token = step(token)[-1].argmax().view(1)
    else:
        step = partial(runner.model, cache=runner.cache, last_only=True)
    start = _now(device)
    with torch.inference_mode():
        for _ in range(gen_tokens):
            token = step(token)[-1].argmax().view(1)
    decode_seconds = _now(device) - start
    return _result(
        "gptoss-lite",
        runner.config,
        device,
        prompt_tokens,
        gen_tokens,
        prefill_seconds,
        decode_seconds,
        kv_slot_bytes(runner.config, runner.cache.kv_dtypes),
    )


def bench_transformers(
    folder: Path, prompt_tokens: int, gen_tokens: int, device: torch.device, seed: int = 0
) -> BenchResult:
    """The same measurement with HF transformers' GptOssForCausalLM on the same checkpoint."""
    from transformers import GptOssForCausalLM, Mxfp4Config

    config = GptOssForCausalLM.config_class.from_pretrained(folder)
    quant = Mxfp4Config(dequantize=device.type == "cpu")  # CPU: transformers must dequantize
    model = GptOssForCausalLM.from_pretrained(
        folder, quantization_config=quant, dtype=torch.bfloat16, device_map=str(device)
    )
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, config.vocab_size, (1, prompt_tokens), generator=g).to(device)
    _reset_peak(device)
    with torch.inference_mode():
        start = _now(device)
        out = model(prompt, use_cache=True)
        prefill_seconds = _now(device) - start
        past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        start = _now(device)
        for _ in range(gen_tokens):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        decode_seconds = _now(device) - start
    return _result(
        "transformers",
        ModelConfig.from_hf(config.to_dict()),
        device,
        prompt_tokens,
        gen_tokens,
        prefill_seconds,
        decode_seconds,
    )


def _result(
    engine: str,
    config: ModelConfig,
    device: torch.device,
    prompt_tokens: int,
    gen_tokens: int,
    prefill_seconds: float,
    decode_seconds: float,
    kv_slot: int | None = None,
) -> BenchResult:
    peak = peak_memory(device)
    return BenchResult(
        engine=engine,
        device=str(device),
        prompt_tokens=prompt_tokens,
        gen_tokens=gen_tokens,
        prefill_seconds=prefill_seconds,
        decode_seconds=decode_seconds,
        # the cache holds the prompt plus, on average, half the generated tokens
        decode_bytes_per_token=decode_bytes_per_token(
            config, prompt_tokens + gen_tokens // 2, kv_slot, dense_experts=engine == "transformers"
        ),
        peak_memory_bytes=peak[0] if peak else None,
        peak_memory_kind=peak[1] if peak else "unknown",
    )


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
