"""Speed and memory of one runner, against the bound this machine's memory bandwidth sets.

`bench` feeds a random prompt and decodes greedily: a short warm-up first (so one-time costs
such as kernel selection, allocator growth and page faults are not timed), then `repeats`
timed runs, each a prefill of the whole prompt and `gen_tokens` decode steps with the device
synchronized; results are medians with their spread, as llama-bench reports. A decode step is
bound by the bytes it must read (`memory.plan.decode_bytes_per_token`: the routed experts, the
other weights, the KV cache it attends over), so `read_bandwidth` measures what this machine
reads per second (on a CPU the compiled kernels' own read probe, with the threads decode uses;
elsewhere a few hundred MB summed, best of a few) after each timed run, and the result says how
far decode is from the fastest of those: on a shared machine the rate moves from minute to
minute, so a probe taken once, at another moment than the runs, could put decode above its own
bound; the fastest probe between the runs only ever overstates the bound, and the slowest says
how much it moved. `bench_transformers` runs HF transformers on the same checkpoint, in a process
of its own (`python -m gptoss_lite.measure.bench transformers ...`), so the peak memory it
reports is its own. `bench_constrained` times decoding held to a grammar against the same
decoding free, run after run in turn, both through the sampler (greedy) that generation uses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..chat.tokens import STOP_TOKENS
from ..config import ModelConfig
from ..engine.generate import next_token, prefill
from ..engine.grammar import Grammar, GrammarMask
from ..engine.graphs import GraphedDecodeStep
from ..engine.runner import Runner
from ..engine.sampling import GREEDY
from ..errors import GptossError
from ..kernels import cpu as cpu_kernels
from ..memory.categories import category_of
from ..memory.plan import decode_bytes_per_token
from ..units import GB, MIB, format_bytes
from .meter import peak_memory

WARMUP_PROMPT = 32  # prompt tokens of the warm-up run (then one decode step), as llama-bench
BANDWIDTH_BYTES = {"cpu": 256 * MIB, "cuda": 1024 * MIB}  # well beyond any cache
BANDWIDTH_ROUNDS = 5


@dataclass
class BenchResult:
    engine: str
    device: str
    kernels: str  # the attention and expert implementation that ran
    prompt_tokens: int
    gen_tokens: int
    prefill_runs: list[float]  # seconds of each timed prefill
    decode_runs: list[float]  # seconds of each run's gen_tokens decode steps
    decode_bytes_per_token: int
    peak_memory_bytes: int | None
    peak_memory_kind: str
    read_runs: list[float] = field(default_factory=list)  # bytes/s read, probed after each run

    @property
    def repeats(self) -> int:
        return len(self.decode_runs)

    @property
    def prefill_seconds(self) -> float:
        return statistics.median(self.prefill_runs)

    @property
    def decode_seconds(self) -> float:
        return statistics.median(self.decode_runs)

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds

    @property
    def decode_tok_s(self) -> float:
        return self.gen_tokens / self.decode_seconds

    @property
    def prefill_tok_s_stdev(self) -> float:
        return _stdev([self.prompt_tokens / s for s in self.prefill_runs])

    @property
    def decode_tok_s_stdev(self) -> float:
        return _stdev([self.gen_tokens / s for s in self.decode_runs])

    @property
    def ms_per_token(self) -> float:
        return 1000 * self.decode_seconds / self.gen_tokens

    @property
    def decode_gb_s(self) -> float:
        return self.decode_bytes_per_token * self.decode_tok_s / GB

    @property
    def read_bytes_per_s(self) -> float | None:
        """The fastest read rate probed between the runs: the bound decode is measured against."""
        return max(self.read_runs, default=None)

    @property
    def bound_ms_per_token(self) -> float | None:
        """The fastest a decode step can be: its bytes at this machine's read bandwidth."""
        if self.read_bytes_per_s is None:
            return None
        return 1000 * self.decode_bytes_per_token / self.read_bytes_per_s

    @property
    def bound_pct(self) -> float | None:
        """Decode speed as a percentage of the bandwidth bound."""
        bound = self.bound_ms_per_token
        return None if bound is None else 100 * bound / self.ms_per_token

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in (
            "repeats",
            "prefill_seconds",
            "decode_seconds",
            "prefill_tok_s",
            "prefill_tok_s_stdev",
            "decode_tok_s",
            "decode_tok_s_stdev",
            "ms_per_token",
            "decode_gb_s",
            "read_bytes_per_s",
            "bound_ms_per_token",
            "bound_pct",
        ):
            out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> BenchResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


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
    runner: Runner,
    prompt_tokens: int,
    gen_tokens: int,
    repeats: int = 3,
    seed: int = 0,
    cuda_graph: bool = False,
) -> BenchResult:
    """Warm up, then `repeats` times: prefill `prompt_tokens` random tokens, decode `gen_tokens`
    greedily. With `cuda_graph` each decode step is a graph replay, captured in the warm-up."""
    model, cache = runner.model, runner.cache
    forward = GraphedDecodeStep(model, cache) if cuda_graph else None

    def first(prompt: torch.Tensor) -> torch.Tensor:
        cache.rewind(0)
        return prefill(model, cache, prompt, runner.prefill_chunk)[-1].argmax().view(1)

    def step(token: torch.Tensor) -> torch.Tensor:
        logits = forward(token) if forward else model(token, cache, last_only=True)
        return logits[-1].argmax().view(1)

    prompt = random_prompt(runner.config, prompt_tokens, seed).to(runner.device)
    probe = ReadProbe(runner.device)
    runs = timed_runs(first, step, prompt, gen_tokens, repeats, runner.device, between=probe)
    plan = runner.plan
    return _result(
        "gptoss-lite",
        runner.config,
        runner.device,
        model.kernel_name,
        prompt_tokens,
        gen_tokens,
        *runs,
        probe,
        kv_slot=None if plan is None else plan.kv_slot_bytes,
        int8_dense=model.int8_dense,
    )


def bench_constrained(
    runner: Runner,
    grammar: Grammar,
    prefix: list[int],
    prompt_tokens: int,
    gen_tokens: int,
    repeats: int = 3,
    seed: int = 0,
) -> tuple[BenchResult, BenchResult]:
    """Decoding free, then held to `grammar` (the reply's `prefix` read first), greedy through
    `next_token`, their timed runs taking turns; a grammar that reaches its end starts over."""
    model, cache, device = runner.model, runner.cache, runner.device
    held: list[GrammarMask] = []  # the constrained runs' mask; empty in the free runs
    constrained = [False]

    def restart() -> None:
        held[:] = [GrammarMask(grammar, prefix, device)] if constrained[0] else []
        if held:
            held[0].request(None)

    def choose(logits: torch.Tensor) -> int:
        allowed = held[0].allowed(logits) if held else None
        return next_token(logits, GREEDY, None, allowed)

    def first(tokens: torch.Tensor) -> int:
        cache.rewind(0)
        restart()
        return choose(prefill(model, cache, tokens, runner.prefill_chunk)[-1])

    def step(token: int) -> int:
        if held and token in STOP_TOKENS:
            restart()
        elif held:
            held[0].request(token)
        return choose(model(torch.tensor([token], device=device), cache, last_only=True)[-1])

    prompt = random_prompt(runner.config, prompt_tokens, seed).to(device)
    runs: dict[bool, tuple[list[float], list[float]]] = {False: ([], []), True: ([], [])}
    probe = ReadProbe(device)
    for _ in range(repeats):
        for constrained[0] in (False, True):
            prefill_runs, decode_runs = timed_runs(first, step, prompt, gen_tokens, 1, device)
            runs[constrained[0]][0].extend(prefill_runs)
            runs[constrained[0]][1].extend(decode_runs)
        probe()  # after a pair: the first free and constrained runs both count in the peak
    kv_slot = None if runner.plan is None else runner.plan.kv_slot_bytes
    free, held_runs = (
        _result(
            name,
            runner.config,
            device,
            model.kernel_name,
            prompt_tokens,
            gen_tokens,
            *runs[flag],
            probe,
            kv_slot=kv_slot,
            int8_dense=model.int8_dense,
        )
        for name, flag in (("gptoss-lite, free", False), ("gptoss-lite, constrained", True))
    )
    return free, held_runs


def bench_transformers(
    folder: Path,
    prompt_tokens: int,
    gen_tokens: int,
    device: torch.device,
    repeats: int = 3,
    seed: int = 0,
    *,
    in_process: bool = False,
) -> BenchResult:
    """The same measurement with HF transformers' GptOssForCausalLM on the same checkpoint, in a
    Python process of its own (`python -m gptoss_lite.measure.bench`) unless `in_process`, so
    that the peak memory it reports is transformers' alone. On the CPU transformers dequantizes the
    experts to bf16, so a decode step reads them in bf16."""
    if not in_process:
        return _apart(folder, prompt_tokens, gen_tokens, device, repeats, seed)
    from transformers import GptOssForCausalLM, Mxfp4Config

    config = GptOssForCausalLM.config_class.from_pretrained(folder)
    dense = device.type == "cpu"  # transformers' MXFP4 kernels need a GPU
    model = GptOssForCausalLM.from_pretrained(
        folder,
        quantization_config=Mxfp4Config(dequantize=dense),
        dtype=torch.bfloat16,
        device_map=str(device),
    )
    past = None

    def first(prompt: torch.Tensor) -> torch.Tensor:
        nonlocal past
        out = model(prompt.view(1, -1), use_cache=True)
        past = out.past_key_values
        return out.logits[:, -1].argmax(-1, keepdim=True)

    def step(token: torch.Tensor) -> torch.Tensor:
        nonlocal past
        out = model(token, past_key_values=past, use_cache=True)
        past = out.past_key_values
        return out.logits[:, -1].argmax(-1, keepdim=True)

    ours = ModelConfig.from_hf(config.to_dict())
    prompt = random_prompt(ours, prompt_tokens, seed).to(device)
    probe = ReadProbe(device)
    runs = timed_runs(first, step, prompt, gen_tokens, repeats, device, between=probe)
    kernels = "transformers, experts dequantized to bf16" if dense else "transformers, MXFP4"
    return _result(
        "transformers",
        ours,
        device,
        kernels,
        prompt_tokens,
        gen_tokens,
        *runs,
        probe,
        dense_experts=dense,
    )


def _apart(folder: Path, *args) -> BenchResult:
    """`bench_transformers(folder, *args)` run by `main` in a child process."""
    names = ("--prompt-tokens", "--gen-tokens", "--device", "--repeats", "--seed")
    command = [sys.executable, "-m", "gptoss_lite.measure.bench", "transformers", str(folder)]
    for name, value in zip(names, args, strict=True):
        command += [name, str(value)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise GptossError(f"--compare transformers failed: {lines[-1]}")
    return BenchResult.from_dict(json.loads(done.stdout))


def read_bandwidth(device: torch.device, nbytes: int | None = None) -> float:
    """Bytes per second this device reads: on a CPU with the compiled kernels, their read probe
    with the threads decode uses (`kernels.cpu.read_rate`); else the best of a few sums over a
    large fp32 array."""
    if device.type == "cpu" and cpu_kernels.available():
        return cpu_kernels.read_rate(nbytes=nbytes or cpu_kernels.PROBE_BYTES)
    nbytes = nbytes or BANDWIDTH_BYTES[device.type]
    data = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    data.sum()  # the first pass faults the pages in
    best = float("inf")
    for _ in range(BANDWIDTH_ROUNDS):
        start = clock(device)
        data.sum()
        best = min(best, clock(device) - start)
    return nbytes / best


class ReadProbe:
    """Called after each timed run: this machine's read rate then (`read_bandwidth`), the peak
    memory taken first, before the probe's buffer can count in it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.rates: list[float] = []
        self.peak: tuple[int, str] | None = None

    def __call__(self) -> None:
        if not self.rates:  # later runs repeat the first's allocations (same prompt, rewound cache)
            self.peak = peak_memory(self.device)
        self.rates.append(read_bandwidth(self.device))


def bandwidth_method(device: torch.device) -> str:
    """How `read_bandwidth` measures on `device`, in words."""
    if device.type == "cpu" and cpu_kernels.available():
        return (
            f"compiled read probe, {torch.get_num_threads()} threads, "
            f"{format_bytes(cpu_kernels.PROBE_BYTES)} in 2 MiB pages, the fastest of "
            f"{len(cpu_kernels.PROBE_PATTERNS)} ways x {cpu_kernels.PROBE_ROUNDS} passes"
        )
    return f"{format_bytes(BANDWIDTH_BYTES[device.type])} summed, best of {BANDWIDTH_ROUNDS}"


def timed_runs(
    first: Callable[[torch.Tensor], torch.Tensor],
    step: Callable[[torch.Tensor], torch.Tensor],
    prompt: torch.Tensor,
    gen_tokens: int,
    repeats: int,
    device: torch.device,
    between: Callable[[], None] | None = None,
) -> tuple[list[float], list[float]]:
    """A warm-up, then per run the seconds of `first(prompt)` and of `gen_tokens` `step`s;
    `between()`, untimed, after each run."""
    prefill_runs, decode_runs = [], []
    with torch.inference_mode():
        step(first(prompt[:WARMUP_PROMPT]))
        _reset_peak(device)
        for _ in range(repeats):
            start = clock(device)
            token = first(prompt)
            middle = clock(device)
            for _ in range(gen_tokens):
                token = step(token)
            prefill_runs.append(middle - start)
            decode_runs.append(clock(device) - middle)
            if between is not None:
                between()
    return prefill_runs, decode_runs


def _result(
    engine: str,
    config: ModelConfig,
    device: torch.device,
    kernels: str,
    prompt_tokens: int,
    gen_tokens: int,
    prefill_runs: list[float],
    decode_runs: list[float],
    probe: ReadProbe,
    kv_slot: int | None = None,
    dense_experts: bool = False,
    int8_dense: bool = False,
) -> BenchResult:
    peak = probe.peak
    # the cache holds the prompt plus, on average, half the generated tokens
    context = prompt_tokens + gen_tokens // 2
    return BenchResult(
        engine=engine,
        device=str(device),
        kernels=kernels,
        prompt_tokens=prompt_tokens,
        gen_tokens=gen_tokens,
        prefill_runs=prefill_runs,
        decode_runs=decode_runs,
        decode_bytes_per_token=decode_bytes_per_token(
            config, context, kv_slot, dense_experts=dense_experts, int8_dense=int8_dense
        ),
        peak_memory_bytes=peak[0] if peak else None,
        peak_memory_kind=peak[1] if peak else "unknown",
        read_runs=list(probe.rates),
    )


def random_prompt(config: ModelConfig, tokens: int, seed: int) -> torch.Tensor:
    """`tokens` token ids drawn uniformly from the vocabulary by a generator seeded `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (tokens,), generator=generator)


def _stdev(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def clock(device: torch.device) -> float:
    """Seconds of `time.perf_counter`, once the device has finished what was queued on it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def main(argv: list[str] | None = None) -> None:
    """`python -m gptoss_lite.measure.bench transformers FOLDER ...`: one JSON `BenchResult`."""
    parser = argparse.ArgumentParser(prog="python -m gptoss_lite.measure.bench")
    parser.add_argument("engine", choices=["transformers"])
    parser.add_argument("folder", type=Path)
    for name in ("--prompt-tokens", "--gen-tokens", "--repeats", "--seed"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--device", required=True)
    args = parser.parse_args(argv)
    result = bench_transformers(
        args.folder,
        args.prompt_tokens,
        args.gen_tokens,
        torch.device(args.device),
        args.repeats,
        args.seed,
        in_process=True,
    )
    json.dump(result.to_dict(), sys.stdout)


if __name__ == "__main__":
    main()
