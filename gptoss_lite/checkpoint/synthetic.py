"""Synthetic checkpoints: random gpt-oss weights written in the exact published file layouts.

`write_synthetic` writes a folder that a loader cannot tell from a download except by its values:
the Hugging Face layout (`config.json`, `generation_config.json`, `model-0000i-of-0000{K-1}`
shards named off by one as published, an index, MXFP4 experts as `_blocks`/`_scales`) or OpenAI's
original layout (`block.N.attn.qkv.weight`, `dtypes.json`, `model--0000i-of-0000K` shards).
Every tensor is cut into fixed-size chunks, each drawn from its own generator seeded by (seed, HF
tensor name, chunk index), so the values depend on neither layout, sharding nor thread count: one
seed gives one model in both layouts, and the fused qkv is exactly cat(q, k, v). Files are
streamed a chunk at a time (a few chunks in RAM, whatever the geometry) into a hidden folder
beside the target, which is renamed into place only once everything is written
(`outputs.staged`). The original names come from the HF ones through the one name table
(`layouts`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig, preset
from ..errors import GptossError
from ..model.mxfp4 import BLOCK, BYTES_PER_BLOCK
from ..outputs import staged
from .layouts import GLOBAL, LAYOUTS, layer_names
from .safetensors import INDEX, NAMES, StreamWriter, TensorSpec

CHUNK = 1 << 22  # elements per independently seeded piece of a tensor
BIAS_STD = 0.02
NORM_STD = 0.05  # norm gains are 1 + N(0, NORM_STD)
SINK_STD = 1.0
EMBED_STD = 1.0
# E8M0 exponents are a tensor's centre exponent plus one of these, picked by 2 random bits.
_SPREAD = torch.tensor([-1, 0, 0, 1])
# RMS of a uniformly random FP4 code (mean square 8.5625) times 2**spread (mean square 1.5625).
_MXFP4_RMS = math.sqrt(8.5625 * 1.5625)
WORKERS = max(1, min(4, os.cpu_count() or 1))  # chunk generators running beside the writer
_ORIGINAL_KIND = {"fp4": "FP4", "e8m0": "UE8"}  # dtypes.json names of the two uint8 kinds
_PUBLISHED_SHARDS = {
    "gpt-oss-20b": {"hf": 3, "original": 1},
    "gpt-oss-120b": {"hf": 15, "original": 7},
}


@dataclass(frozen=True)
class _Spec:
    """One tensor in HF naming and how its values are drawn."""

    name: str
    shape: tuple[int, ...]
    kind: str = "normal"  # "normal" (model dtype), "fp4" (random code bytes), "e8m0" (scales)
    std: float = 0.0
    mean: float = 0.0
    exponent: int = 0  # e8m0 only: the centre of the scale exponents

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def num_chunks(self) -> int:
        return -(-self.numel // CHUNK)

    def dtype(self, dtype: torch.dtype) -> torch.dtype:
        return dtype if self.kind == "normal" else torch.uint8


@dataclass(frozen=True)
class _Entry:
    """One tensor of a file: the specs whose rows it concatenates (three only for a fused qkv)."""

    name: str
    parts: tuple[_Spec, ...]
    layer: int | None  # None for the embedding, the final norm and the unembedding

    @property
    def shape(self) -> tuple[int, ...]:
        return (sum(p.shape[0] for p in self.parts), *self.parts[0].shape[1:])

    def nbytes(self, dtype: torch.dtype) -> int:
        return sum(p.numel * p.dtype(dtype).itemsize for p in self.parts)

    def spec(self, dtype: torch.dtype) -> TensorSpec:
        return TensorSpec(self.name, NAMES[self.parts[0].dtype(dtype)], self.shape)


# ---------------------------------------------------------------------------- what to write


def _mxfp4_exponent(fan_in: int) -> int:
    """Centre scale exponent that makes dequantized weights have std about 1/sqrt(fan_in)."""
    return round(-math.log2(_MXFP4_RMS * math.sqrt(fan_in)))


def _layer_specs(c: ModelConfig, n: int) -> list[_Spec]:
    p = f"model.layers.{n}."
    hidden, q_width, kv_width = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim

    def norm(name: str) -> _Spec:
        return _Spec(f"{p}{name}.weight", (hidden,), std=NORM_STD, mean=1.0)

    def linear(name: str, out: int, fan_in: int) -> list[_Spec]:
        return [
            _Spec(f"{p}{name}.weight", (out, fan_in), std=fan_in**-0.5),
            _Spec(f"{p}{name}.bias", (out,), std=BIAS_STD),
        ]

    def experts(name: str, out: int, fan_in: int) -> list[_Spec]:
        e, groups, q = c.num_experts, fan_in // BLOCK, f"{p}mlp.experts.{name}"
        return [
            _Spec(f"{q}_blocks", (e, out, groups, BYTES_PER_BLOCK), "fp4"),
            _Spec(f"{q}_scales", (e, out, groups), "e8m0", exponent=_mxfp4_exponent(fan_in)),
            _Spec(f"{q}_bias", (e, out), std=BIAS_STD),
        ]

    return [
        norm("input_layernorm"),
        *linear("self_attn.q_proj", q_width, hidden),
        *linear("self_attn.k_proj", kv_width, hidden),
        *linear("self_attn.v_proj", kv_width, hidden),
        _Spec(f"{p}self_attn.sinks", (c.num_heads,), std=SINK_STD),
        *linear("self_attn.o_proj", hidden, q_width),
        norm("post_attention_layernorm"),
        *linear("mlp.router", c.num_experts, hidden),
        *experts("gate_up_proj", 2 * c.intermediate_size, hidden),
        *experts("down_proj", hidden, c.intermediate_size),
    ]


def _global_specs(c: ModelConfig) -> list[_Spec]:
    table = (c.vocab_size, c.hidden_size)
    return [
        _Spec("model.embed_tokens.weight", table, std=EMBED_STD),
        _Spec("model.norm.weight", (c.hidden_size,), std=NORM_STD, mean=1.0),
        _Spec("lm_head.weight", table, std=c.hidden_size**-0.5),
    ]


def _original_layer(specs: list[_Spec], n: int) -> list[_Entry]:
    """The original layout's tensors of layer `n`, each the rows of its HF tensors (`layouts`)."""
    by_name = {s.name: s for s in specs}
    return [
        _Entry(original[0], tuple(by_name[h] for h in hf), n)
        for hf, original in layer_names(n).values()
    ]


def tensor_entries(config: ModelConfig, layout: str) -> list[_Entry]:
    """Every tensor of the checkpoint in file order: layers first, then the globals."""
    out = []
    for n in range(config.num_layers):
        specs = _layer_specs(config, n)
        if layout == "hf":
            out += [_Entry(s.name, (s,), n) for s in specs]
        else:
            out += _original_layer(specs, n)
    original = {hf[0]: names[0] for hf, names in GLOBAL.values()}
    for s in _global_specs(config):
        out.append(_Entry(s.name if layout == "hf" else original[s.name], (s,), None))
    return out


def _split(entries: list[_Entry], shards: int, dtype: torch.dtype) -> list[list[_Entry]]:
    """Cut the layer tensors into shards by size, so layers straddle files as published; the
    globals go in the last shard. Each of the first K-1 shards holds about 1/K of the bytes."""
    if shards == 1:
        return [entries]
    layers = [e for e in entries if e.layer is not None]
    layer_bytes = sum(e.nbytes(dtype) for e in layers)
    total = sum(e.nbytes(dtype) for e in entries)
    budget = min(total / shards, layer_bytes / (shards - 1))
    out: list[list[_Entry]] = [[] for _ in range(shards)]
    done = 0
    for e in layers:
        out[min(shards - 1, int(done // budget))].append(e)
        done += e.nbytes(dtype)
    out[-1] += [e for e in entries if e.layer is None]
    if not all(out):
        raise GptossError(f"cannot cut this geometry into {shards} non-empty shards; use fewer")
    return out


def _file_names(layout: str, shards: int) -> list[str]:
    if shards == 1:
        return ["model.safetensors"]
    if layout == "hf":  # off by one, as the HF convert script named them
        return [f"model-{i:05d}-of-{shards - 1:05d}.safetensors" for i in range(shards)]
    return [f"model--{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]


# ---------------------------------------------------------------------------- random values


def _chunk_seed(seed: int, name: str, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{name}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def draw_chunk(spec: _Spec, seed: int, index: int, dtype: torch.dtype) -> torch.Tensor:
    """Flat elements [index*CHUNK, ...) of `spec`, from a generator of their own."""
    n = min(CHUNK, spec.numel - index * CHUNK)
    gen = torch.Generator().manual_seed(_chunk_seed(seed, spec.name, index))
    if spec.kind == "normal":
        return torch.empty(n).normal_(spec.mean, spec.std, generator=gen).to(dtype)
    # 64 random bits per draw is several times faster than drawing single bytes.
    words = torch.empty(-(-n // 8), dtype=torch.int64).random_(-(2**63), None, generator=gen)
    codes = words.view(torch.uint8)[:n]
    if spec.kind == "fp4":
        return codes
    exponents = (127 + spec.exponent + _SPREAD).to(torch.uint8)
    return exponents[(codes & 3).long()]


def tensor_nbytes(config: ModelConfig, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of all tensors of a checkpoint (the index's total_size; the same in both layouts)."""
    return sum(e.nbytes(dtype) for e in tensor_entries(config, "hf"))


# ---------------------------------------------------------------------------- files


def _in_order(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, ahead: int) -> Iterator:
    """`fn(*item)` for each item, in order, computed on `pool` at most `ahead` items in advance."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, *item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _write_shards(
    folder: Path, files: dict[str, list[_Entry]], seed: int, dtype: torch.dtype,
    progress: Callable[[int], None],
) -> None:  # fmt: skip
    """Every shard file; worker threads generate the chunks while this thread writes them."""
    with ThreadPoolExecutor(WORKERS) as pool:
        for name, entries in files.items():
            parts = [s for e in entries for s in e.parts]
            jobs = [(s, seed, i, dtype) for s in parts for i in range(s.num_chunks)]
            with StreamWriter(folder / name, [e.spec(dtype) for e in entries]) as writer:
                for chunk in _in_order(pool, draw_chunk, jobs, ahead=2 * WORKERS):
                    progress(writer.append(chunk))


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_metadata(
    folder: Path,
    config: ModelConfig,
    layout: str,
    files: dict[str, list[_Entry]],
    dtype: torch.dtype,
) -> None:
    if layout == "hf":
        _write_json(folder / "config.json", config.to_hf())
        generation = {"bos_token_id": 199998, "do_sample": True}
        generation |= {"eos_token_id": list(config.eos_token_ids), "pad_token_id": 199999}
        generation["transformers_version"] = "4.55.0.dev0"  # as published: 177 bytes for 20b
        _write_json(folder / "generation_config.json", generation)
    else:
        _write_json(folder / "config.json", config.to_original())
        entries = [e for file in files.values() for e in file]
        kinds = {e.name: _ORIGINAL_KIND.get(e.parts[0].kind, NAMES[dtype]) for e in entries}
        _write_json(folder / "dtypes.json", dict(sorted(kinds.items())))
    if len(files) > 1:
        weight_map = {e.name: file for file, entries in files.items() for e in entries}
        total = sum(e.nbytes(dtype) for entries in files.values() for e in entries)
        _write_json(
            folder / INDEX,
            {
                "metadata": {"total_size": total},
                "weight_map": dict(sorted(weight_map.items())),
            },
        )


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise GptossError(f"synth: dtype must be one of bfloat16, float16, float32, got {dtype}")


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise GptossError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise GptossError(
            f"{out_dir} is not empty; pass overwrite=True (--overwrite) to replace it"
        )


def _default_shards(config: ModelConfig, layout: str) -> int:
    """As published for the 20b and 120b geometries, else one file."""
    for name, counts in _PUBLISHED_SHARDS.items():
        if config == preset(name):
            return counts[layout]
    return 1


def write_synthetic(
    out_dir: str | Path,
    config: ModelConfig,
    *,
    seed: int = 0,
    layout: str = "hf",
    shards: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write random weights for `config` to `out_dir` in a published layout and return the folder.

    layout "hf": config.json, generation_config.json, shards + model.safetensors.index.json (or a
    single model.safetensors). layout "original": the same tensors under OpenAI's names (q, k, v
    rows fused into attn.qkv), config.json in OpenAI's format and dtypes.json. `shards` defaults
    to the published count for the 20b/120b geometries, else 1. MXFP4 tensors are uint8; all
    others are `dtype` (bf16 as published). `progress(n)` is called as n tensor bytes are written.

    Values are chosen so that a forward pass is healthy (finite, non-degenerate logits, varied
    routing): linear weights N(0, 1/fan_in) (unit-variance outputs on a normalized input; 0.019 at
    the 20b width), biases N(0, 0.02²), norm gains 1 + N(0, 0.05²), sinks N(0, 1), embeddings
    N(0, 1). MXFP4 codes are uniform random bytes; each E8M0 scale is 127 + k + d with d in
    {-1, 0, 0, +1} and k the exponent giving the dequantized experts std ≈ 1/sqrt(fan_in)
    (k = -8, scales 118..120, std 0.014 at the 20b width). The router, N(0, 1/H),
    gives unit-variance logits, so tokens pick different experts.
    """
    out_dir, progress = Path(out_dir), progress or (lambda nbytes: None)
    if layout not in LAYOUTS:
        raise GptossError(f"synth: layout must be 'hf' or 'original', got {layout!r}")
    _check_dtype(dtype)
    shards = _default_shards(config, layout) if shards is None else shards
    if not isinstance(shards, int) or shards < 1:
        raise GptossError(f"synth: shards must be a positive integer, got {shards!r}")
    _check_target(out_dir, overwrite)
    cut = _split(tensor_entries(config, layout), shards, dtype)
    files = dict(zip(_file_names(layout, shards), cut, strict=True))
    with staged(out_dir, replace=True) as tmp:
        _write_metadata(tmp, config, layout, files, dtype)
        _write_shards(tmp, files, seed, dtype, progress)
    return out_dir
