"""Memory planning: from a model config and a profile to the largest context that fits.

Arithmetic on the config, no weights and no device. The device holds the weights (MXFP4 experts as
published, everything else bf16 except the norms, which the model keeps in fp32; the embedding
table stays on the host when the profile says so), a KV cache (full-attention layers grow per
token by one K and one V row per kv head, codes and scales, in the profile's formats:
`kv_quant.row_bytes`; sliding layers keep a fixed ring of `sliding_window` slots), the peak
activations of one prefill chunk, and the profile's reserve.
`plan()` picks the largest context within the budget (rounded down to `CONTEXT_GRANULE`,
capped by the profile and the model), or checks a requested one and refuses it with the numbers
and the way out (a smaller context, a `--budget` up to the card's memory, a larger profile).
A model with no full-attention layer has a KV cache that does not grow: only the caps bound it.
On a GPU the experts of the first `cpu_experts` layers may stay in host RAM (run there by the CPU
kernel); unless the profile or the caller sets that number, the planner takes the fewest layers
that let the model fit with at least CONTEXT_GRANULE tokens of context. What a GPU plan keeps on
the host (those experts, the embedding table) must fit the host's RAM as `profiles.host_room`
counts it, or the plan is refused; on a cpu device the budget already is the host's RAM.
`parallel` sequences decoded together (`serve --parallel`) each get a KV cache of their own, of
the same context: the budget left for the KV cache is split evenly between them, and the plan's
`context` is each one's. Unless asked, `parallel` is the most, up to MAX_DEFAULT_PARALLEL, that
still give each sequence MIN_SEQUENCE_CONTEXT tokens (or the most one could have, if less).
A decode step of several sequences holds a few rows of activations, far below a prefill chunk's.
The activation model below is what the runner must match: see `activation_phases`.
`decode_bytes_per_token` is the one count of the bytes a decode step reads (bench's bound).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace

from ..config import ModelConfig
from ..errors import GptossError
from ..kernels.cpu.decode import q8_nbytes
from ..model.attention import KEY_BLOCK
from ..model.kv_quant import UNQUANTIZED, KVDtypes, row_bytes
from ..model.mxfp4 import packed_nbytes
from ..units import GIB
from .profiles import Profile, host_memory_bytes, host_room

BF16, FP32, INT64 = 2, 4, 8
CONTEXT_GRANULE = 256  # contexts the planner picks are multiples of this
# Score-sized fp32 tensors alive at once in attention.attention(): the block's scores, turned
# into probabilities in place and freed before the next block (measured on CPU).
ATTN_SCORE_COPIES = 1
LOGITS_ROWS = 1  # prefill computes logits for the chunk's last token only (last_only)
# MXFP4 decode stages an int32 index per byte and the gathered values in bf16 before scaling:
# together the size of one fp32 copy of the matrix.
DEQUANT_FP32_COPIES = 1
MAX_DEFAULT_PARALLEL = 4  # sequences decoded together unless asked: the most, up to this
MIN_SEQUENCE_CONTEXT = 16384  # that leave each sequence this much context (an agent's turn)


@dataclass(frozen=True)
class Plan:
    """Where the bytes go for one model on one profile, and the context that fits."""

    model: str
    profile: str
    device: str
    context: int
    bound: str  # "budget", "cap" or "requested"
    context_granule: int
    prefill_chunk: int
    kv_cache_dtype: KVDtypes
    weights: dict[str, int]  # bytes on the device per category
    host_weights: dict[str, int]  # categories kept in host memory instead
    kv_slot_bytes: int  # one token's K and V in one layer
    kv_bytes_per_token: int  # per sequence
    kv_ring_bytes: int  # the sliding layers' fixed rings, per sequence
    activations: dict[str, int]  # "resident" plus the peak of each phase
    reserve_bytes: int
    budget_bytes: int
    memory_bytes: int  # the card's (or host's): how far --budget may go
    cpu_experts: int = 0  # leading layers whose experts stay in host RAM
    host_room_bytes: int | None = None  # host RAM host_weights may use; None on a cpu device
    parallel: int = 1  # sequences decoded together, each with a KV cache of `context` tokens

    @property
    def weights_bytes(self) -> int:
        return sum(self.weights.values())

    @property
    def host_bytes(self) -> int:
        return sum(self.host_weights.values())

    @property
    def kv_sequence_bytes(self) -> int:
        """One sequence's KV cache."""
        return self.kv_ring_bytes + self.kv_bytes_per_token * self.context

    @property
    def kv_bytes(self) -> int:
        return self.parallel * self.kv_sequence_bytes

    @property
    def activation_bytes(self) -> int:
        phases = [v for k, v in self.activations.items() if k != "resident"]
        return self.activations["resident"] + max(phases)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.activation_bytes + self.reserve_bytes

    def to_json(self) -> str:
        """The plan as JSON: every field plus the derived totals."""
        data = asdict(self)
        derived = ("weights_bytes", "host_bytes", "kv_sequence_bytes", "kv_bytes")
        for key in (*derived, "activation_bytes", "total_bytes"):
            data[key] = getattr(self, key)
        return json.dumps(data, indent=2)


def dense_matrices(config: ModelConfig) -> list[tuple[str, int, int, int]]:
    """The dense matrices decode reads, as (category, how many, rows, columns): each layer's qkv
    and attention output projections, and the head."""
    h, layers = config.hidden_size, config.num_layers
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    return [
        ("attention", layers, q + 2 * kv, h),
        ("attention", layers, h, q),
        ("lm_head", 1, config.vocab_size, h),
    ]


def weight_bytes(config: ModelConfig, *, dense_experts: bool = False) -> dict[str, int]:
    """Checkpoint bytes per category (MXFP4 experts, bf16 rest): they sum to the file sizes.

    With `dense_experts`, the experts as bf16 matrices (a fine-tune's checkpoint, or what HF
    transformers holds after dequantizing)."""
    h, i, e = config.hidden_size, config.intermediate_size, config.num_experts
    layers = config.num_layers
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    matrices = (
        (2 * i * h + h * i) * BF16
        if dense_experts
        else packed_nbytes(2 * i, h) + packed_nbytes(h, i)
    )
    experts = e * (matrices + (2 * i + h) * BF16)
    dense = {"attention": 0, "lm_head": 0}
    for category, count, rows, cols in dense_matrices(config):
        dense[category] += count * rows * cols * BF16
    biases_and_sinks = layers * (q + 2 * kv + h + config.num_heads) * BF16
    return {
        "experts": layers * experts,
        "attention": dense["attention"] + biases_and_sinks,
        "router": layers * (e * h + e) * BF16,
        "norms": (2 * layers + 1) * h * BF16,
        "embedding": config.vocab_size * h * BF16,
        "lm_head": dense["lm_head"],
    }


def held_weights(config: ModelConfig) -> dict[str, int]:
    """Bytes per category as the model holds them: the checkpoint's, but the norm gains and
    the attention sinks in fp32."""
    held = weight_bytes(config)
    held["norms"] = held["norms"] // BF16 * FP32
    held["attention"] += config.num_layers * config.num_heads * (FP32 - BF16)
    return held


def device_weights(
    config: ModelConfig, profile: Profile, cpu_experts: int = 0
) -> tuple[dict[str, int], dict[str, int]]:
    """(bytes on the device, bytes on the host) per category, as the model holds them, with the
    experts of the first `cpu_experts` layers on the host (on a cpu device, the same memory)."""
    on_device = held_weights(config)
    host = {}
    if not profile.embedding_on_device:
        host["embedding"] = on_device.pop("embedding")
    if cpu_experts and profile.device != "cpu":
        host["experts"] = expert_layer_bytes(config) * cpu_experts
        on_device["experts"] -= host["experts"]
    return on_device, host


def expert_layer_bytes(config: ModelConfig) -> int:
    """Bytes of one layer's experts as the model holds them."""
    return held_weights(config)["experts"] // config.num_layers


def kv_slot_bytes(config: ModelConfig, kv: KVDtypes = UNQUANTIZED) -> int:
    """Bytes of one token's K and V in one layer."""
    d = config.head_dim
    return config.num_kv_heads * (row_bytes(kv.k, d) + row_bytes(kv.v, d))


def kv_bytes_per_token(config: ModelConfig, kv: KVDtypes) -> int:
    """KV-cache growth per token: K and V of every full-attention layer."""
    return config.num_full_layers * kv_slot_bytes(config, kv)


def kv_ring_bytes(config: ModelConfig, kv: KVDtypes, ring_slots: int | None = None) -> int:
    """The sliding layers' rings, whatever the context: `ring_slots` slots each (at least, and by
    default, `sliding_window`; more let the cache rewind, as a chat does after each reply)."""
    slots = max(ring_slots or 0, config.sliding_window)
    return config.num_sliding_layers * slots * kv_slot_bytes(config, kv)


def decode_bytes_per_token(
    config: ModelConfig,
    context: int,
    kv_slot: int | None = None,
    *,
    dense_experts: bool = False,
    int8_dense: bool = False,
) -> int:
    """Bytes one decode step must read with `context` tokens in the cache.

    The routed experts' share of the experts (k of E per layer), all of attention, router, norms
    and lm_head, one embedding row, and the K and V attended over: every cached token of a full
    layer, at most the window of a sliding one (`kv_slot` bytes each; default bf16). Weights as
    this runner holds them, or with `dense_experts` as HF transformers does (all bf16); with
    `int8_dense` the attention projections and the head in the q8 form decode then reads."""
    c = config
    weights = weight_bytes(c, dense_experts=True) if dense_experts else held_weights(c)
    if int8_dense:
        for category, count, rows, cols in dense_matrices(c):
            weights[category] -= count * (rows * cols * BF16 - q8_nbytes(rows, cols))
    slot = kv_slot_bytes(c) if kv_slot is None else kv_slot
    routed = weights.pop("experts") * c.experts_per_token // c.num_experts
    row = weights.pop("embedding") // c.vocab_size
    attended = c.num_full_layers * context + c.num_sliding_layers * min(context, c.sliding_window)
    return routed + sum(weights.values()) + row + attended * slot


def activation_phases(config: ModelConfig, chunk: int) -> dict[str, int]:
    """Peak bytes of one prefill chunk of `chunk` tokens, by phase of a layer.

    "resident" lives through the whole forward; the other phases follow each other, so the
    activation peak is resident + the largest phase. Each phase sums the tensors that can be
    alive at once in it, an upper bound of its peak. Assumptions the runner must match:
    - attention: the query chunk against key blocks of attention.KEY_BLOCK, online softmax in fp32;
      ATTN_SCORE_COPIES fp32 [heads, chunk, block] tensors alive at once, and a bool
      visibility mask; sliding layers concatenate ring and chunk keys and values;
    - MoE: ONE expert at a time, its gate_up [2I, H] and down [H, I] dequantized to bf16, the
      decode staging DEQUANT_FP32_COPIES fp32 copies of gate_up; at most `chunk` tokens go
      through it; outputs are weighted and summed in fp32;
    - logits: LOGITS_ROWS rows (the chunk's last token), in bf16 then fp32;
    - RMSNorm: two fp32 copies of its input.
    """
    h, i, d, v = config.hidden_size, config.intermediate_size, config.head_dim, config.vocab_size
    c, nq, kb = chunk, config.num_heads, KEY_BLOCK
    q_width, k_width = nq * d, config.num_kv_heads * d
    normed = c * h * BF16
    attention = (
        normed
        + c * (q_width + 2 * k_width) * BF16  # qkv projection
        + 3 * c * (d // 2) * FP32  # RoPE angles, cos, sin
        + c * (q_width + k_width) * BF16  # q and k after RoPE
        + (config.sliding_window + c) * 2 * k_width * BF16  # ring + chunk keys and values
        + 2 * c * q_width * FP32  # q in fp32, then scaled
        + 2 * kb * k_width * FP32  # one block of keys and values in fp32
        + ATTN_SCORE_COPIES * nq * c * kb * FP32  # scores and what is derived from them
        + 3 * c * kb  # visibility mask and its parts (bool)
        + nq * c * d * FP32  # output accumulator
        + 2 * nq * c * FP32  # running max and denominator
    )
    moe = (
        normed
        + c * config.num_experts * FP32  # router logits
        + c * config.experts_per_token * (INT64 + FP32)  # top-k ids and weights
        + c * h * FP32  # summed expert outputs
        + (2 * i * h + h * i) * BF16  # one expert dequantized: gate_up and down
        + DEQUANT_FP32_COPIES * 2 * i * h * FP32  # decode staging of gate_up
        + c * (h + 2 * i + 2 * i + h) * BF16  # its tokens: rows in, gate_up out, swiglu, down out
        + 2 * c * h * FP32  # down output in fp32, then weighted
    )
    return {
        "resident": 2 * c * h * BF16 + c * INT64,  # residual stream in and out, positions
        "norm": 2 * c * h * FP32 + normed,
        "attention": attention,
        "moe": moe,
        "logits": LOGITS_ROWS * (h * BF16 + v * (BF16 + FP32)),
    }


def plan(
    config: ModelConfig,
    profile: Profile,
    context: int | None = None,
    *,
    prefill_chunk: int | None = None,
    ring_slots: int | None = None,
    cpu_experts: int | str | None = None,
    host_memory: int | None = None,
    parallel: int | None = 1,
) -> Plan:
    """The memory plan of `config` on `profile` for `context` tokens, or the largest that fits.

    Without `context`: the largest multiple of CONTEXT_GRANULE that fits the budget, capped by
    the profile's and the model's max_context. With it: that context, or a `GptossError` with
    the KV bytes needed, the bytes free and the largest context that fits. `ring_slots` sizes
    the sliding layers' rings as the cache will (`KVCache(ring_slots=...)`). `cpu_experts`
    (layers, or "all"; default: the profile's, else the fewest that fit) keeps those layers'
    experts in host RAM. `host_memory` (bytes; default: this host's RAM) is the RAM that what a
    GPU plan keeps on the host must fit, as `host_room` counts it. `parallel` sequences each
    get `context` tokens (None: the default count, see the module's docstring).
    """
    options = dict(
        prefill_chunk=prefill_chunk,
        ring_slots=ring_slots,
        cpu_experts=cpu_experts,
        host_memory=host_memory,
    )
    if parallel is None:
        return _default_parallel(config, profile, context, options)
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise GptossError(f"parallel must be a number of sequences >= 1, got {parallel!r}")
    chunk = profile.prefill_chunk if prefill_chunk is None else prefill_chunk
    if chunk <= 0:
        raise GptossError(f"prefill chunk must be positive, got {chunk}")
    layers = host_expert_layers(config, profile.cpu_experts if cpu_experts is None else cpu_experts)
    if layers is None:
        layers = _fewest_host_layers(config, profile, chunk, ring_slots, parallel)
    draft, free = _draft(config, profile, chunk, ring_slots, layers, parallel)
    fits = _most_that_fits(draft, free, config.max_context)
    if fits == 0:
        raise GptossError(_no_room(draft, free, config.max_context))
    if profile.device != "cpu":
        memory = host_memory_bytes() if host_memory is None else host_memory
        draft = replace(draft, host_room_bytes=host_room(memory))
        if draft.host_bytes > draft.host_room_bytes:
            fewest = _fewest_host_layers(config, profile, chunk, ring_slots, parallel)
            raise GptossError(_no_host_room(draft, memory, expert_layer_bytes(config), fewest))
    if context is None:
        cap = min(profile.max_context, config.max_context)
        return _with_context(draft, min(fits, cap), "cap" if cap <= fits else "budget")
    if context <= 0 or context > config.max_context:
        raise GptossError(f"context {context} is outside 1..{config.max_context} for {config.name}")
    if context * draft.kv_bytes_per_token * parallel > free:
        raise GptossError(_refusal(draft, context, free, fits))
    return _with_context(draft, context, "requested")


def _default_parallel(
    config: ModelConfig, profile: Profile, context: int | None, options: dict
) -> Plan:
    """The plan of the most sequences, up to MAX_DEFAULT_PARALLEL, that each get `context`
    tokens, or without one MIN_SEQUENCE_CONTEXT (or what a single sequence gets, if less)."""
    single = plan(config, profile, context, **options)
    wanted = context or min(MIN_SEQUENCE_CONTEXT, single.context)
    for parallel in range(MAX_DEFAULT_PARALLEL, 1, -1):
        try:
            more = plan(config, profile, context, parallel=parallel, **options)
        except GptossError:
            continue
        if more.context >= wanted:
            return more
    return single


def host_expert_layers(config: ModelConfig, cpu_experts: int | str | None) -> int | None:
    """`cpu_experts` (a layer count or "all") as a layer count; None stays None (the planner's
    choice)."""
    if cpu_experts is None:
        return None
    if cpu_experts == "all":
        return config.num_layers
    if isinstance(cpu_experts, bool) or not isinstance(cpu_experts, int):
        raise GptossError(f"cpu_experts must be a number of layers or 'all', got {cpu_experts!r}")
    if not 0 <= cpu_experts <= config.num_layers:
        raise GptossError(
            f"cpu_experts {cpu_experts}: {config.name} has {config.num_layers} layers; "
            f"use 0..{config.num_layers} or 'all'"
        )
    return cpu_experts


def _fewest_host_layers(
    config: ModelConfig, profile: Profile, chunk: int, ring_slots: int | None, parallel: int
) -> int:
    """The fewest layers whose experts must go to host RAM for the smallest context the planner
    gives (CONTEXT_GRANULE) to fit; 0 on a cpu device or when not even all of them make it fit."""
    if profile.device == "cpu":
        return 0
    for layers in range(config.num_layers + 1):
        draft, free = _draft(config, profile, chunk, ring_slots, layers, parallel)
        if _most_that_fits(draft, free, CONTEXT_GRANULE) == CONTEXT_GRANULE:
            return layers
    return 0


def _draft(
    config: ModelConfig,
    profile: Profile,
    chunk: int,
    ring_slots: int | None,
    cpu_experts: int,
    parallel: int,
) -> tuple[Plan, int]:
    """The plan at context 0 with `cpu_experts` host layers and `parallel` sequences, and the
    bytes left for the KV caches' growth (their total at context 0 is the rings)."""
    weights, host = device_weights(config, profile, cpu_experts)
    slot = kv_slot_bytes(config, profile.kv_cache_dtype)
    draft = Plan(
        model=config.name,
        profile=profile.name,
        device=profile.device,
        context=0,
        bound="budget",
        context_granule=CONTEXT_GRANULE,
        prefill_chunk=chunk,
        kv_cache_dtype=profile.kv_cache_dtype,
        weights=weights,
        host_weights=host,
        kv_slot_bytes=slot,
        kv_bytes_per_token=config.num_full_layers * slot,
        kv_ring_bytes=kv_ring_bytes(config, profile.kv_cache_dtype, ring_slots),
        activations=activation_phases(config, chunk),
        reserve_bytes=profile.reserve_bytes,
        budget_bytes=profile.budget_bytes,
        memory_bytes=profile.memory_bytes,
        cpu_experts=cpu_experts,
        parallel=parallel,
    )
    return draft, draft.budget_bytes - draft.total_bytes


def _most_that_fits(draft: Plan, free: int, max_context: int) -> int:
    """The largest context each sequence gets of `free` bytes, rounded down to CONTEXT_GRANULE,
    at most `max_context`; with no full-attention layer the cache does not grow, so any context
    fits."""
    if free < 0:
        return 0
    per_token = draft.kv_bytes_per_token * draft.parallel
    if per_token == 0 or free // per_token >= max_context:
        return max_context
    return free // per_token // CONTEXT_GRANULE * CONTEXT_GRANULE


def _with_context(draft: Plan, context: int, bound: str) -> Plan:
    return replace(draft, context=context, bound=bound)


def _budget_needed(draft: Plan, context: int) -> str | None:
    """The --budget (GiB, rounded up to 0.01) that holds `context`, if the card has that much."""
    kv_growth = context * draft.kv_bytes_per_token * draft.parallel
    needed = math.ceil((draft.total_bytes + kv_growth) * 100 / GIB) / 100
    if needed * GIB > draft.memory_bytes or needed * GIB <= draft.budget_bytes:
        return None
    return f"--budget {needed:.2f} (GiB; {draft.profile} has {draft.memory_bytes / GIB:.3g})"


def _refusal(draft: Plan, context: int, free: int, fits: int) -> str:
    n = draft.parallel
    kv = n * (draft.kv_ring_bytes + context * draft.kv_bytes_per_token)
    budget = _budget_needed(draft, context)
    each = f" for each of {n} sequences" if n > 1 else ""
    fewer = ", fewer --parallel sequences" if n > 1 else ""
    return (
        f"context {context}{each} needs {kv / GIB:.2f} GiB of KV cache, "
        f"{(free + draft.kv_bytes) / GIB:.2f} GiB are free in profile {draft.profile}; "
        f"the most that fits is {fits}: use --context {fits}"
        + (f", {budget}," if budget else "")
        + fewer
        + " or a larger profile"
    )


def _no_room(draft: Plan, free: int, max_context: int) -> str:
    gib = {
        "weights": draft.weights_bytes,
        "activations": draft.activation_bytes,
        "reserve": draft.reserve_bytes,
        "sliding-window cache": draft.kv_bytes,
    }
    parts = " + ".join(f"{name} {n / GIB:.2f}" for name, n in gib.items())
    smallest = min(CONTEXT_GRANULE, max_context)
    total = f"{sum(gib.values()) / GIB:.2f} GiB"
    if free < 0:
        room = f"{total}, more than its {draft.budget_bytes / GIB:.2f} GiB budget"
    else:
        tokens = free // (draft.kv_bytes_per_token * draft.parallel)  # > 0: else any fits
        each = f" for each of {draft.parallel} sequences" if draft.parallel > 1 else ""
        room = (
            f"{total} of its {draft.budget_bytes / GIB:.2f} GiB budget leave room for {tokens} "
            f"tokens of context{each}, fewer than {smallest}"
        )
    budget = _budget_needed(draft, smallest)
    return f"{draft.model} does not fit profile {draft.profile}: {parts} = {room}" + (
        f"; {budget} would hold {smallest}" if budget else ""
    )


def _no_host_room(draft: Plan, memory: int, layer_bytes: int, fewest: int) -> str:
    """The refusal of a plan that keeps more on the host than its RAM leaves tensors, with the
    way out: fewer host layers if the card takes them, else more RAM, a larger card or model."""
    room = draft.host_room_bytes
    parts = " + ".join(
        f"{f'experts of {draft.cpu_experts} layers' if name == 'experts' else name} {n / GIB:.2f}"
        for name, n in draft.host_weights.items()
    )
    needed = (
        f"{draft.model} on {draft.profile} keeps {draft.host_bytes / GIB:.2f} GiB in host RAM "
        f"({parts}), more than the {room / GIB:.2f} GiB the host leaves tensors "
        f"({memory / GIB:.2f} GiB of RAM less {(memory - room) / GIB:.2f} for the system and "
        "the runtime)"
    )
    others = draft.host_bytes - draft.host_weights.get("experts", 0)
    most = (room - others) // layer_bytes  # host layers the RAM holds beside the rest
    if fewest <= most < draft.cpu_experts:
        return f"{needed}; use --cpu-experts {most} (the card needs at least {fewest})"
    return f"{needed}; use a host with more RAM, a larger card (profile) or a smaller model"
