"""Find and check the dense gpt-oss checkpoint that `quantize` reads.

SRC is a local folder or a Hugging Face Hub id (downloaded with `snapshot_download`, only the
files conversion needs). `read_source` checks it before anything is written: a HF gpt-oss
`config.json` without a quantization_config, every shard present, inside SRC and complete (its
header checked against its bytes), every tensor of the index found in its shard, and the dense
expert weights of every layer with the shapes the config implies. It only reads: SRC is never
written. Each problem is one `GptossError` line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gptoss_lite.checkpoint.hub import download
from gptoss_lite.checkpoint.layouts import DENSE_EXPERT
from gptoss_lite.checkpoint.safetensors import (
    INDEX,
    TensorSpec,
    read_header,
    read_index,
    shard_path,
)
from gptoss_lite.config import ModelConfig, read_json_object
from gptoss_lite.errors import GptossError

# Copied unchanged to DST when present.
AUX_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
HUB_PATTERNS = ["config.json", INDEX, "model*.safetensors", *AUX_FILES]


@dataclass(frozen=True)
class Source:
    """A checked dense checkpoint: its folder, config.json, and every tensor with its shard."""

    folder: Path
    config: dict
    tensors: dict[str, tuple[Path, TensorSpec]]


def resolve_source(src: str) -> Path:
    """The local folder for `src`: the folder itself, or a Hub snapshot of the needed files."""
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise GptossError(f"{src} is a file; pass a checkpoint folder or a Hub id (owner/name)")
    if not re.fullmatch(r"[\w][\w.-]*/[\w.-]+", src):
        raise GptossError(f"no checkpoint folder at {src}")
    return _download(src)


def _download(repo_id: str) -> Path:
    # config.json alone first: an MXFP4 repo is refused before its weights are fetched
    _read_config(download(repo_id, ["config.json"]))
    return download(repo_id, HUB_PATTERNS)


def read_source(folder: Path) -> Source:
    """Check `folder` as a dense-expert HF gpt-oss checkpoint and list its tensors."""
    config = _read_config(folder)
    tensors = _read_tensors(folder)
    _check_experts(ModelConfig.from_hf(config, name=folder.name), tensors)
    return Source(folder, config, tensors)


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise GptossError(f"{folder} has no config.json: not a Hugging Face checkpoint folder")
    config = read_json_object(path)
    quantization = config.get("quantization_config") or {}
    method = quantization.get("quant_method") if isinstance(quantization, dict) else "unknown"
    if method == "mxfp4":
        raise GptossError(f"{folder} is already an MXFP4 checkpoint: run it as it is")
    if method:
        raise GptossError(f"{folder} is quantized with {method!r}; quantize needs bf16 experts")
    return config


def _read_tensors(folder: Path) -> dict[str, tuple[Path, TensorSpec]]:
    index = read_index(folder)
    if index is None:
        if not (folder / "model.safetensors").exists():
            raise GptossError(f"{folder} has neither {INDEX} nor model.safetensors")
        single = shard_path(folder, "model.safetensors")
        index = {spec.name: single for spec in read_header(single)}
    tensors = {}
    for file in sorted(set(index.values())):
        for spec in read_header(file):
            if index.get(spec.name) == file:
                tensors[spec.name] = (file, spec)
    missing = sorted(set(index) - set(tensors))
    if missing:
        raise GptossError(f"{missing[0]} is in {INDEX} but not in {index[missing[0]]}")
    if any(name.endswith(("_blocks", "_scales")) for name in tensors):
        raise GptossError(f"{folder} already holds MXFP4 tensors (*_blocks/*_scales)")
    return tensors


def _check_experts(cfg: ModelConfig, tensors: dict[str, tuple[Path, TensorSpec]]) -> None:
    e, h, i = cfg.num_experts, cfg.hidden_size, cfg.intermediate_size
    expected = {"gate_up_proj": (e, h, 2 * i), "down_proj": (e, i, h)}
    for layer in range(cfg.num_layers):
        for proj, shape in expected.items():
            name = f"model.layers.{layer}.mlp.experts.{proj}"
            if name not in tensors:
                raise GptossError(f"{name} is missing: quantize needs dense experts in every layer")
            spec = tensors[name][1]
            if spec.shape != shape or spec.dtype not in ("BF16", "F16", "F32"):
                raise GptossError(
                    f"{name} is {spec.dtype} {list(spec.shape)}; expected a float {list(shape)}"
                )
    layers = {n: int(m[1]) for n in tensors if (m := DENSE_EXPERT.match(n))}
    extra = [n for n, layer in layers.items() if layer >= cfg.num_layers]
    if extra:
        raise GptossError(f"{extra[0]} is beyond num_hidden_layers={cfg.num_layers}")
