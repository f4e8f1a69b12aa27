"""`quantize`: a gpt-oss checkpoint with dense bf16 experts → the published MXFP4 layout, streamed.

`plan_conversion` checks SRC and DST and lays out every output tensor and shard from the shard
headers alone. `write_quantized` then reads each SRC tensor once: dense expert weights become
MXFP4 blocks and scales (`checkpoint.dense.quantize_dense`), every other tensor is copied
unchanged, and each shard is streamed to disk one tensor at a time, so peak memory is about the
largest single tensor. Shards get the published off-by-one names (`model-00000-of-00002…` for
three files) and an index; config.json gains the published `quantization_config`; tokenizer and
generation files are copied. All of it goes into a hidden `.DST.partial-PID` folder beside DST,
renamed to DST at the very end (`outputs.staged`): an interrupted run, a full disk or
SIGTERM leaves no DST (an empty DST stays as it was).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from gptoss_lite.checkpoint.dense import packed_shapes, quantize_dense
from gptoss_lite.checkpoint.layouts import DENSE_EXPERT
from gptoss_lite.checkpoint.safetensors import INDEX, StreamWriter, TensorSpec
from gptoss_lite.config import QUANTIZATION_CONFIG
from gptoss_lite.errors import GptossError
from gptoss_lite.outputs import staged

from .source import AUX_FILES, Source, read_source, resolve_source

DEFAULT_SHARD_BYTES = 5_000_000_000  # the published 20b has 3 shards of at most 4.8 GB


@dataclass(frozen=True)
class Item:
    """One SRC tensor and the DST tensors it becomes (itself, or MXFP4 blocks + scales)."""

    source: str
    file: Path
    outputs: tuple[TensorSpec, ...]

    @property
    def nbytes(self) -> int:
        return sum(spec.nbytes for spec in self.outputs)


@dataclass(frozen=True)
class ConversionPlan:
    """Everything `write_quantized` will do, decided before a byte is written."""

    source: Source
    destination: Path
    shards: tuple[tuple[Item, ...], ...]
    overwrite: bool = False  # replace a non-empty DST, whole, once the new one is written

    @property
    def total_bytes(self) -> int:
        return sum(item.nbytes for shard in self.shards for item in shard)

    def shard_name(self, k: int) -> str:
        return f"model-{k:05d}-of-{len(self.shards) - 1:05d}.safetensors"  # published off-by-one


def plan_conversion(
    src: str,
    dst: str | Path,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> ConversionPlan:
    """Check DST (absent or empty, unless `overwrite`), then SRC (see `source.read_source`),
    and plan the shards."""
    destination = Path(dst).expanduser().absolute()
    _check_destination(destination, overwrite)
    source = read_source(resolve_source(src))
    if destination.resolve().is_relative_to(source.folder.resolve()):
        raise GptossError(f"{dst} is inside SRC {source.folder}; pass a folder outside it")
    items = [_item(name, *source.tensors[name]) for name in sorted(source.tensors, key=_natural)]
    plan = ConversionPlan(source, destination, _pack(items, max_shard_bytes), overwrite)
    _check_free_space(destination, plan.total_bytes)
    return plan


def write_quantized(plan: ConversionPlan, progress: Callable[[int], None] | None = None) -> Path:
    """Write the planned checkpoint; `progress(n)` is told the bytes of each tensor written."""
    dst = plan.destination
    _check_destination(dst, plan.overwrite)
    with staged(dst, replace=plan.overwrite) as partial:
        _write_all(plan, partial, progress or (lambda n: None))
    return dst


def _check_destination(dst: Path, overwrite: bool = False) -> None:
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise GptossError(f"{dst} is not empty; pass a new folder, or --overwrite to replace it")
    if dst.exists() and not dst.is_dir():
        raise GptossError(f"{dst} is a file; pass a new folder")


def _check_free_space(dst: Path, nbytes: int) -> None:
    existing = next(p for p in (dst, *dst.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < nbytes:
        raise GptossError(
            f"{existing} has {free / 1e9:.2f} GB free; the output needs {nbytes / 1e9:.2f} GB"
        )


def _item(name: str, file: Path, spec: TensorSpec) -> Item:
    if DENSE_EXPERT.match(name) is None:
        return Item(name, file, (spec,))
    blocks, scales = packed_shapes(spec.shape)
    outputs = (
        TensorSpec(f"{name}_blocks", "U8", blocks),
        TensorSpec(f"{name}_scales", "U8", scales),
    )
    return Item(name, file, outputs)


def _pack(items: list[Item], max_shard_bytes: int) -> tuple[tuple[Item, ...], ...]:
    """Greedy: items in order, a new shard when the next would pass `max_shard_bytes`."""
    shards: list[list[Item]] = [[]]
    size = 0
    for item in items:
        if shards[-1] and size + item.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return tuple(tuple(shard) for shard in shards)


def _write_all(plan: ConversionPlan, out: Path, progress: Callable[[int], None]) -> None:
    weight_map = {}
    for k, shard in enumerate(plan.shards):
        specs = [spec for item in shard for spec in item.outputs]
        with StreamWriter(out / plan.shard_name(k), specs) as writer:
            for item in shard:
                for name, tensor in _produce(item).items():
                    writer.write(name, tensor)
                    weight_map[name] = plan.shard_name(k)
                progress(item.nbytes)
    weight_map = dict(sorted(weight_map.items()))
    index = {"metadata": {"total_size": plan.total_bytes}, "weight_map": weight_map}
    (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    config = {**plan.source.config, "quantization_config": QUANTIZATION_CONFIG}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in AUX_FILES:
        if (plan.source.folder / name).is_file():
            shutil.copyfile(plan.source.folder / name, out / name)


def _produce(item: Item) -> dict[str, torch.Tensor]:
    with safe_open(item.file, "pt") as f:  # opened per tensor: no mapping outlives its read
        tensor = f.get_tensor(item.source)
    if DENSE_EXPERT.match(item.source) is None:
        return {item.source: tensor}
    try:
        return quantize_dense(item.source, tensor)
    except GptossError as exc:
        raise GptossError(f"{item.source}: {exc}") from None


def _natural(name: str) -> list[int | str]:
    """Sort key putting layer 2 before layer 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
