"""Where a decode step's time goes: each part's milliseconds, the bytes it reads and its GB/s.

`profile_step` prefills a random prompt, decodes a few warm-up tokens, times `steps` greedy decode
steps as they run, then runs as many again under Python's profiler and sorts their time into
parts by the function that spent it: the embedding row, the RoPE tables, the norms, the qkv and
output projections, attention over the cache, the cache update, the router, the experts, the
head, sampling. Where the compiled CPU step runs the whole model in one call, its parts are the
ones it times itself (`kernels/cpu/decode.phase_times`), waits between threads included. What no
part claims is the Python between them (dispatch, allocation, small torch operations): the
"rest". The profiler slows Python down, so the table gives the unprofiled step time beside the
profiled one. Bytes are what each part must read (`memory/plan`'s counts), so GB/s says how
close each part streams to the machine's read rate.
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time
from dataclasses import dataclass, field

import torch

from ..engine.generate import next_token, prefill
from ..engine.runner import Runner
from ..engine.sampling import Sampling
from ..kernels.cpu import decode as cpu_decode
from ..memory.plan import kv_slot_bytes
from ..model import transformer
from ..model.cache import KVCache
from ..model.moe import route
from ..model.rope import Rotary, apply_rotary
from ..units import GB

WARMUP_STEPS = 4
GREEDY = Sampling(temperature=0)


@dataclass
class Part:
    name: str
    seconds: float  # per decode step
    nbytes: int = 0  # read per decode step

    @property
    def gb_s(self) -> float | None:
        return self.nbytes / self.seconds / GB if self.nbytes and self.seconds > 0 else None


@dataclass
class StepProfile:
    layers: int
    context: int  # tokens in the cache at the middle step
    threads: int
    step_seconds: float  # median unprofiled step
    profiled_seconds: float  # mean step under the profiler
    parts: list[Part] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)


def profile_step(runner: Runner, prompt_tokens: int, steps: int, seed: int = 0) -> StepProfile:
    """Profile `steps` greedy decode steps after a `prompt_tokens` random prompt."""
    model, cache, config = runner.model, runner.cache, runner.config
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, config.vocab_size, (prompt_tokens,), generator=generator)

    def decode(n: int, times: list[float] | None = None) -> None:
        token = next_token(prefill(model, cache, prompt.to(runner.device))[-1], GREEDY)
        for _ in range(n):
            start = time.perf_counter()
            logits = model(torch.tensor([token], device=runner.device), cache, last_only=True)
            token = next_token(logits[-1], GREEDY)
            if times is not None:
                times.append(time.perf_counter() - start)

    with torch.inference_mode():
        cache.rewind(0)
        decode(WARMUP_STEPS)
        cache.rewind(0)
        unprofiled: list[float] = []
        decode(steps, unprofiled)
        cache.rewind(0)
        token = next_token(prefill(model, cache, prompt.to(runner.device))[-1], GREEDY)
        profiler = cProfile.Profile()
        with cpu_decode.phase_times() as phases:
            start = time.perf_counter()
            profiler.enable()
            for _ in range(steps):
                logits = model(torch.tensor([token], device=runner.device), cache, last_only=True)
                token = next_token(logits[-1], GREEDY)
            profiler.disable()
            profiled = (time.perf_counter() - start) / steps
    context = prompt_tokens + steps // 2
    result = StepProfile(
        config.num_layers,
        context,
        torch.get_num_threads(),
        statistics.median(unprofiled),
        profiled,
    )
    result.parts = _parts(model, cache, pstats.Stats(profiler), phases, steps, context)
    return result


def _key(fn) -> tuple[str, int, str] | None:
    code = getattr(fn, "__code__", None)
    return None if code is None else (code.co_filename, code.co_firstlineno, code.co_name)


def _bytes(model: transformer.Transformer, cache: KVCache, context: int) -> dict[str, int]:
    """What each part of a decode step reads, from the loaded tensors themselves."""
    c = model.config
    experts = model.mlp[0].experts
    gate_up = sum(t[0].nbytes for t in experts.tensors()[:3])
    down = sum(t[0].nbytes for t in experts.tensors()[3:])
    attended = c.num_full_layers * context + c.num_sliding_layers * min(context, c.sliding_window)

    def dense(w: torch.Tensor) -> int:  # as decode reads it: bf16, or its q8 form (cpu-q8)
        return cpu_decode.q8_nbytes(*w.shape) if model.int8_dense else w.nbytes

    per_layer = {
        "qkv": lambda a, m: dense(a.qkv_weight) + a.qkv_bias.nbytes,
        "out": lambda a, m: dense(a.out_weight) + a.out_bias.nbytes,
        "router": lambda a, m: m.router_weight.nbytes + m.router_bias.nbytes,
    }
    out = {
        k: sum(f(a, m) for a, m in zip(model.attn, model.mlp, strict=True))
        for k, f in per_layer.items()
    }
    out["gate_up"] = c.num_layers * c.experts_per_token * gate_up
    out["down"] = c.num_layers * c.experts_per_token * down
    out["attention"] = attended * kv_slot_bytes(c, cache.kv_dtypes)
    out["head"] = dense(model.unembedding)
    out["embedding"] = model.embedding[0].nbytes
    return out


def _parts(
    model: transformer.Transformer,
    cache: KVCache,
    stats: pstats.Stats,
    phases: dict[str, float],
    steps: int,
    context: int,
) -> list[Part]:
    table = stats.stats  # key -> (calls, primitive calls, own time, cumulative time, callers)
    nbytes = _bytes(model, cache, context)

    def cumulative(fn, caller=None) -> float:
        row = table.get(_key(fn))
        if row is not None and caller is not None:
            row = row[4].get(_key(caller))
        return 0.0 if row is None else row[3] / steps

    parts = [
        Part("embedding row", cumulative(transformer.Transformer.embed), nbytes["embedding"]),
        Part("RoPE tables", cumulative(Rotary.cos_sin)),
    ]
    fused = cumulative(cpu_decode.decode_step)
    if fused and phases.get("all"):
        ph = {k: v / steps for k, v in phases.items()}
        inside = sum(v for k, v in ph.items() if k != "all")
        parts += [
            Part("norms", ph["norms"]),
            Part("qkv projection", ph["qkv"], nbytes["qkv"]),
            Part(
                "attention over the cache (+RoPE, cache write)",
                ph["attention"],
                nbytes["attention"],
            ),
            Part("output projection", ph["out"], nbytes["out"]),
            Part("router (+top-k)", ph["router"], nbytes["router"]),
            Part("experts gate_up (+SwiGLU)", ph["gate_up"], nbytes["gate_up"]),
            Part("experts down", ph["down"], nbytes["down"]),
            Part("head (lm_head)", ph["head"], nbytes["head"]),
            Part("waits between threads", ph["wait"]),
            Part("thread start/join", ph["all"] - inside),
            Part("call overhead (ctypes, plan check)", fused - ph["all"]),
        ]
    else:
        linear = model.linear
        projections = cumulative(linear, transformer.AttentionBlock.forward)
        parts += [
            Part("norms", cumulative(transformer.rms_norm)),
            Part("RoPE", cumulative(apply_rotary)),
            Part("qkv + output projections", projections, nbytes["qkv"] + nbytes["out"]),
            Part("cache update", cumulative(KVCache.update)),
            Part("attention over the cache", cumulative(model.attn[0].attend), nbytes["attention"]),
            Part("router (+top-k)", cumulative(route), nbytes["router"]),
            Part(
                "experts", cumulative(model.mlp[0].run_experts), nbytes["gate_up"] + nbytes["down"]
            ),
            Part(
                "head (lm_head)",
                cumulative(linear, transformer.Transformer.layers_forward),
                nbytes["head"],
            ),
        ]
    parts.append(Part("sampling", cumulative(next_token)))
    return parts


def describe(profile: StepProfile) -> str:
    """The profile as a table: one line a part, then the rest and the totals."""
    p = profile
    head = (
        f"one decode step, {p.layers} layers, {p.context} tokens in the cache, {p.threads} "
        f"threads: {1000 * p.step_seconds:.1f} ms (median), {1000 * p.profiled_seconds:.1f} ms "
        "under the profiler"
    )
    lines = [head, f"  {'part':<48} {'ms':>8} {'MB read':>9} {'GB/s':>6}"]
    rest = p.profiled_seconds - sum(part.seconds for part in p.parts)
    for part in [*p.parts, Part("rest (Python between the parts)", rest)]:
        mb = f"{part.nbytes / 1e6:,.1f}" if part.nbytes else ""
        gb_s = f"{part.gb_s:.1f}" if part.gb_s else ""
        lines.append(f"  {part.name:<48} {1000 * part.seconds:8.2f} {mb:>9} {gb_s:>6}")
    total = p.nbytes / p.step_seconds / GB
    lines.append(
        f"  {'step (unprofiled)':<48} {1000 * p.step_seconds:8.2f} {p.nbytes / 1e6:9,.1f} "
        f"{total:6.1f}"
    )
    return "\n".join(lines)
