"""The VRAM report of `gptoss-lite profile`: load, prefill and decode for real, then compare.

`measure_memory(model, ...)` loads a model on a profile (a checkpoint folder or Hub id, or a
`SyntheticCheckpoint`: random weights of a real geometry made in memory), prefills a prompt of
random token ids through the runner's chunked prefill, decodes greedily, and reads memory in each
phase (`meter.py`: CUDA allocator counters, or CPU tensor accounting + RSS). The `MemoryReport`
sets each category beside the plan: the weights per category from the loaded tensors (they must
equal the plan's to the byte), the KV cache from its tensors, the activations as the rise of the
tensor peak above what was allocated when the phase began; its verdict says in one line whether
the plan held. `write_report` writes report.md, report.json and report.png (matplotlib optional).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..checkpoint.synthetic_memory import SyntheticCheckpoint
from ..engine.generate import check_fits, decode_step, next_token, prefill
from ..engine.options import ModelOptions
from ..engine.runner import Runner, load
from ..engine.sampling import GREEDY
from ..errors import GptossError
from ..memory.categories import CATEGORIES, category_of
from ..memory.plan import Plan
from ..memory.profiles import Profile, resolve_profile, run_device
from ..units import format_bytes
from .meter import CpuMeter, CudaMeter, Meter, Reading, cap_memory

SCHEMA = "gptoss-lite/memory-report/1"


@dataclass
class Phase:
    """One measured phase: its reading, and the tensor bytes allocated when it began."""

    name: str  # "load", "prefill" or "decode"
    tokens: int
    seconds: float
    start: int
    reading: Reading
    error: str | None = None  # e.g. out of memory under the --enforce cap

    @property
    def activations(self) -> int | None:
        """How far the tensors rose above the phase's start (None where the peak is unknown)."""
        return None if self.reading.peak is None else self.reading.peak - self.start

    def to_dict(self) -> dict:
        rate = self.tokens / self.seconds if self.tokens and self.seconds > 0 else None
        return {
            "name": self.name,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "tokens_per_s": rate,
            "start": self.start,
            **asdict(self.reading),
            "activations": self.activations,
            "error": self.error,
        }


@dataclass
class Row:
    """One line of the plan-vs-measured table."""

    name: str
    plan: int
    measured: int | None

    @property
    def diff_pct(self) -> float | None:
        if self.measured is None or self.plan == 0:
            return None
        return 100.0 * (self.measured - self.plan) / self.plan


@dataclass
class MemoryReport:
    """What `measure_memory` measured, beside the plan it was loaded with."""

    model: str
    device: str
    plan: Plan
    budget_bytes: int
    weights: dict[str, int]  # on the run's device, per category, from the loaded tensors
    host_weights: dict[str, int]  # categories kept in host memory (embedding on a GPU run)
    cache_bytes: int
    phases: list[Phase]
    sequence_bytes: list[int]  # each sequence's KV cache (one unless `--parallel`)
    prompt_tokens: int
    gen_tokens: int
    cap_bytes: int | None  # the allocator cap of --enforce (CUDA)
    kernels: str = "torch"  # the model's attention and expert implementation
    measured_with: dict[str, str] = field(default_factory=dict)

    def phase(self, name: str) -> Phase | None:
        return next((p for p in self.phases if p.name == name), None)

    @property
    def activation_peak(self) -> int | None:
        rises = [p.activations for p in self.phases if p.name != "load"]
        rises = [r for r in rises if r is not None]
        return max(rises) if rises else None

    @property
    def tensor_peak(self) -> int:
        return max(p.reading.peak or p.reading.allocated for p in self.phases)

    @property
    def resident_peak(self) -> int | None:
        peaks = [p.reading.resident_peak for p in self.phases if p.reading.resident_peak]
        return max(peaks) if peaks else None

    def weight_rows(self) -> list[Row]:
        """Plan vs measured bytes of each weight category, on the device then on the host."""
        p, host = self.plan, self.plan.host_weights | self.host_weights
        rows = [Row(c, p.weights.get(c, 0), self.weights.get(c, 0)) for c in _names(p.weights)]
        return rows + [
            Row(f"{c} (host)", p.host_weights.get(c, 0), self.host_weights.get(c, 0))
            for c in _names(host)
        ]

    def sequence_rows(self) -> list[Row]:
        """Plan vs measured KV cache of each sequence, when several are decoded together."""
        if len(self.sequence_bytes) == 1:
            return []
        n, planned = len(self.sequence_bytes), self.plan.kv_sequence_bytes
        return [
            Row(f"KV cache, sequence {i + 1} of {n}", planned, nbytes)
            for i, nbytes in enumerate(self.sequence_bytes)
        ]

    def total_rows(self) -> dict[str, Row]:
        """Plan vs measured totals: weights, KV cache, activations, tensor peak, resident peak."""
        p = self.plan
        planned_tensors = p.weights_bytes + p.kv_bytes + p.activation_bytes
        return {
            "weights": Row("weights", p.weights_bytes, sum(self.weights.values())),
            "kv": Row("KV cache", p.kv_bytes, self.cache_bytes),
            "activations": Row("activations (peak)", p.activation_bytes, self.activation_peak),
            "tensors": Row("tensors at peak", planned_tensors, self.tensor_peak),
            "resident": Row(
                f"{self.resident_label} peak (vs budget)", self.budget_bytes, self.resident_peak
            ),
        }

    def rows(self) -> list[Row]:
        return self.weight_rows() + self.sequence_rows() + list(self.total_rows().values())

    @property
    def resident_label(self) -> str:
        return "CUDA reserved" if self.device.startswith("cuda") else "RSS"

    def verdict(self) -> tuple[bool, str]:
        """(held, one line). Held: weights and KV cache equal the plan to the byte, activations
        and the tensor peak stay within it, the resident peak within the budget, no phase failed."""
        totals = self.total_rows()
        exact = [*self.weight_rows(), *self.sequence_rows(), totals["kv"]]
        bounded = [totals[k] for k in ("activations", "tensors", "resident")]
        problems = [f"{p.name} failed: {p.error}" for p in self.phases if p.error]
        for r in exact:
            if r.measured != r.plan:
                problems.append(f"{r.name} {r.measured:,} B ≠ {r.plan:,} B planned")
        for r in bounded:
            if r.measured is not None and r.measured > r.plan:
                problems.append(
                    f"{r.name} {format_bytes(r.measured)} > {format_bytes(r.plan)} planned"
                )
        if problems:
            return False, "PLAN NOT HELD: " + "; ".join(problems)
        act, peak, resident = bounded
        line = (
            f"PLAN HELD: tensors peaked at {format_bytes(peak.measured)} of "
            f"{format_bytes(peak.plan)} planned "
            f"(weights and KV cache exact to the byte, activations {format_bytes(act.measured)} of "
            f"{format_bytes(act.plan)})"
        )
        if resident.measured is not None:
            line += f"; {self.resident_label} peak {format_bytes(resident.measured)}"
            line += f" within the {format_bytes(resident.plan)} budget"
        return True, line

    def to_dict(self) -> dict:
        """Everything in the report, for report.json."""
        held, line = self.verdict()
        return {
            "schema": SCHEMA,
            "model": self.model,
            "device": self.device,
            "profile": self.plan.profile,
            "context": self.plan.context,
            "prefill_chunk": self.plan.prefill_chunk,
            "prompt_tokens": self.prompt_tokens,
            "gen_tokens": self.gen_tokens,
            "cap_bytes": self.cap_bytes,
            "kernels": self.kernels,
            "measured_with": self.measured_with,
            "plan": json.loads(self.plan.to_json()),
            "weights": {"device": self.weights, "host": self.host_weights},
            "cache_bytes": self.cache_bytes,
            "sequence_bytes": self.sequence_bytes,
            "phases": [p.to_dict() for p in self.phases],
            "comparison": [asdict(r) | {"diff_pct": r.diff_pct} for r in self.rows()],
            "verdict": {"held": held, "line": line},
            "torch": torch.__version__,
        }


def _names(categories: dict[str, int]) -> list[str]:
    return [c for c in CATEGORIES if c in categories]


# ---------------------------------------------------------------------------- measuring


def measure_memory(
    model: str | Path | SyntheticCheckpoint,
    options: ModelOptions | None = None,
    *,
    prompt_tokens: int = 256,
    gen_tokens: int = 4,
    enforce: bool | None = None,
    seed: int = 0,
    **settings,
) -> MemoryReport:
    """Load `model` as `options` say (with any of its fields replaced by `settings`, as `load`
    takes them), prefill `prompt_tokens` random ids, decode `gen_tokens` greedily, and measure
    memory in each phase against the plan.

    `enforce` (default: on for CUDA) caps the CUDA allocator at the profile's card memory, so a
    profile for a smaller card behaves like it on a bigger one; an out-of-memory error in the
    prefill or the decode is then reported as a failed phase instead of raised. With
    `parallel` sequences each gets its KV cache; the prompt goes into the first, and the decode
    steps feed every sequence a token at once (`Transformer.decode`).
    """
    if prompt_tokens < 1 or gen_tokens < 0:
        raise GptossError("the prompt needs at least 1 token and gen tokens cannot be negative")
    options = replace(options or ModelOptions(), **settings)
    prof = resolve_profile(options.profile, options.device, options.budget)
    dev = run_device(prof, options.device)
    options = replace(options, profile=prof, device=dev, budget=None)  # resolved once, here
    meter = CudaMeter(dev) if dev.type == "cuda" else CpuMeter()
    with _capped(enforce, dev, prof) as cap:
        runner, phases = _load(model, options, meter, prompt_tokens, gen_tokens)
        _prefill_and_decode(runner, meter, phases, prompt_tokens, gen_tokens, seed)
    weights, host = weights_by_category(runner.model, dev)
    return MemoryReport(
        model=_model_name(model),
        device=_device_name(dev),
        plan=runner.plan,
        budget_bytes=prof.budget_bytes,
        weights=weights,
        host_weights=host,
        cache_bytes=runner.cache.pool.nbytes,
        phases=phases,
        sequence_bytes=[cache.nbytes for cache in runner.caches],
        prompt_tokens=prompt_tokens,
        gen_tokens=gen_tokens,
        cap_bytes=cap,
        kernels=runner.model.kernels,
        measured_with={"allocated": meter.allocated_means, "resident": meter.resident_means},
    )


def _load(
    model: str | Path | SyntheticCheckpoint,
    options: ModelOptions,
    meter: Meter,
    prompt_tokens: int,
    gen_tokens: int,
) -> tuple[Runner, list[Phase]]:
    """The runner, and the measured load phase (weights and KV cache)."""

    def fits(p: Plan) -> None:  # called with the plan, before any weight is read
        check_fits(prompt_tokens, gen_tokens, p.context)

    start = time.perf_counter()
    try:
        with meter.phase() as reading:
            runner = load(model, options, on_plan=fits)
            meter.hold(_tensors(runner))
    except torch.OutOfMemoryError as exc:
        raise GptossError(f"out of memory while loading: {str(exc).splitlines()[0]}") from None
    return runner, [Phase("load", 0, time.perf_counter() - start, 0, reading)]


def _prefill_and_decode(
    runner: Runner, meter: Meter, phases: list[Phase], n: int, m: int, seed: int
):
    """Prefill n random token ids in the runner's chunks, then m greedy decode steps."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(runner.config.vocab_size, (n,), generator=generator).to(runner.device)

    def run_prefill() -> torch.Tensor:
        return prefill(runner.model, runner.cache, tokens, runner.prefill_chunk)

    def run_decode() -> list[int]:  # m forward passes: the first token comes from the prefill
        tokens = [next_token(logits[-1], GREEDY)]
        for _ in range(m):
            if len(runner.caches) == 1:
                step = decode_step(runner.model, runner.cache, tokens[-1])
            else:  # the same token for every sequence: the memory is the batch's, not its tokens'
                fed = torch.tensor([tokens[-1]] * len(runner.caches), device=runner.device)
                with torch.inference_mode():
                    step = runner.model.decode(fed, runner.caches)[:1]
            tokens.append(next_token(step[-1], GREEDY))
        return tokens

    logits = _phase(meter, phases, "prefill", n, run_prefill)
    if m and logits is not None:
        _phase(meter, phases, "decode", m, run_decode)


def _phase(meter: Meter, phases: list[Phase], name: str, tokens: int, step: Callable):
    """Run `step` as a measured phase appended to `phases`; its result, or None if it ran out
    of memory (the cap of --enforce)."""
    begin, error, result = phases[-1].reading.allocated, None, None
    start = time.perf_counter()
    try:
        with meter.phase() as reading:
            result = step()
    except torch.OutOfMemoryError as exc:
        error = "out of memory: " + str(exc).splitlines()[0]
    phases.append(Phase(name, tokens, time.perf_counter() - start, begin, reading, error))
    return result


def weights_by_category(model: torch.nn.Module, device: torch.device) -> tuple[dict, dict]:
    """Bytes of the model's parameters per category: (on `device`, elsewhere), from the tensors."""
    on_device: dict[str, int] = {}
    host: dict[str, int] = {}
    for name, param in model.named_parameters():
        where = on_device if param.device.type == device.type else host
        category = category_of(name)
        where[category] = where.get(category, 0) + param.numel() * param.element_size()
    return on_device, host


def _tensors(runner: Runner) -> list[torch.Tensor]:
    return [*runner.model.parameters(), *runner.cache.tensors()]


@contextmanager
def _capped(enforce: bool | None, dev: torch.device, prof: Profile) -> Iterator[int | None]:
    """Cap the CUDA allocator at the profile's card memory while the block runs; yields the cap
    in bytes, or None when not enforcing (the default on the CPU)."""
    if enforce is None:
        enforce = dev.type == "cuda"
    if enforce and dev.type != "cuda":
        raise GptossError("--enforce caps the CUDA allocator; it needs a CUDA device")
    if not enforce:
        yield None
        return
    cap_memory(dev, prof.memory_bytes)
    try:
        yield prof.memory_bytes
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)


def _model_name(model: str | Path | SyntheticCheckpoint) -> str:
    if isinstance(model, SyntheticCheckpoint):
        return f"{model.config.name} (synthetic, seed {model.seed})"
    return str(model)


def _device_name(dev: torch.device) -> str:
    return f"{dev} ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else str(dev)
