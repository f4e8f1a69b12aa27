"""Model configuration: one dataclass, read from either published config format.

`ModelConfig` holds the architecture of a gpt-oss model. It is built from the Hugging Face
`config.json` (`from_hf`), from the OpenAI `original/config.json` (`from_original`), or from the
built-in presets (`preset("gpt-oss-20b")`), so memory planning works before any download.
Every field is validated; a bad one raises `GptossError` naming the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import GptossError

# The config.json quantization_config of the published checkpoints.
QUANTIZATION_CONFIG = {
    "quant_method": "mxfp4",
    "modules_to_not_convert": [
        "model.layers.*.self_attn",
        "model.layers.*.mlp.router",
        "model.embed_tokens",
        "lm_head",
    ],
}
SLIDING = "sliding_attention"
FULL = "full_attention"


@dataclass(frozen=True)
class ModelConfig:
    num_layers: int = 24
    num_experts: int = 32
    experts_per_token: int = 4
    vocab_size: int = 201088
    hidden_size: int = 2880
    intermediate_size: int = 2880  # per expert; gate_up is twice as wide
    head_dim: int = 64
    num_heads: int = 64
    num_kv_heads: int = 8
    sliding_window: int = 128  # keys seen by a query on a sliding layer, the query included
    layer_types: tuple[str, ...] = ()  # empty: even layers sliding, odd layers full
    rope_theta: float = 150000.0
    rope_factor: float = 32.0
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_original_context: int = 4096
    rope_truncate: bool = False
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    rms_norm_eps: float = 1e-5
    max_context: int = 131072
    eos_token_ids: tuple[int, ...] = (200002, 199999, 200012)
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if not self.layer_types:
            types = tuple(SLIDING if i % 2 == 0 else FULL for i in range(self.num_layers))
            object.__setattr__(self, "layer_types", types)
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))
        self._validate()

    def _validate(self) -> None:
        positive = (
            "num_layers",
            "num_experts",
            "experts_per_token",
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "head_dim",
            "num_heads",
            "num_kv_heads",
            "sliding_window",
            "rope_original_context",
            "max_context",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise GptossError(f"config: {name} must be a positive integer, got {value!r}")
        for name in ("rope_theta", "rope_factor", "swiglu_limit", "swiglu_alpha", "rms_norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise GptossError(f"config: {name} must be a positive number, got {value!r}")
        if self.experts_per_token > self.num_experts:
            raise GptossError(
                f"config: experts_per_token ({self.experts_per_token}) exceeds "
                f"num_experts ({self.num_experts})"
            )
        if self.num_heads % self.num_kv_heads:
            raise GptossError(
                f"config: num_heads ({self.num_heads}) is not a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise GptossError(f"config: head_dim must be even for RoPE, got {self.head_dim}")
        if self.hidden_size % 32 or self.intermediate_size % 32:
            raise GptossError(
                "config: hidden_size and intermediate_size must be multiples of 32 "
                "(the MXFP4 block size)"
            )
        if len(self.layer_types) != self.num_layers:
            raise GptossError(
                f"config: layer_types has {len(self.layer_types)} entries "
                f"for {self.num_layers} layers"
            )
        unknown = set(self.layer_types) - {SLIDING, FULL}
        if unknown:
            raise GptossError(f"config: unknown layer type {sorted(unknown)[0]!r} in layer_types")

    @property
    def q_mult(self) -> int:
        """Query heads per key/value head (GQA group size)."""
        return self.num_heads // self.num_kv_heads

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    @property
    def num_sliding_layers(self) -> int:
        return sum(t == SLIDING for t in self.layer_types)

    @property
    def num_full_layers(self) -> int:
        return self.num_layers - self.num_sliding_layers

    def with_(self, **changes) -> ModelConfig:
        """A copy with some fields changed (layer_types is re-derived if num_layers changes)."""
        if "num_layers" in changes and "layer_types" not in changes:
            changes["layer_types"] = ()
        return replace(self, **changes)

    # ------------------------------------------------------------------ readers

    @classmethod
    def from_hf(cls, data: dict, name: str = "custom") -> ModelConfig:
        """From a Hugging Face `config.json` (model_type "gpt_oss")."""
        if data.get("model_type", "gpt_oss") != "gpt_oss":
            raise GptossError(f"config: model_type is {data['model_type']!r}, expected 'gpt_oss'")
        rope = data.get("rope_scaling") or data.get("rope_parameters") or {}
        if rope and rope.get("rope_type", "yarn") != "yarn":
            raise GptossError(f"config: rope_scaling.rope_type {rope['rope_type']!r} is not 'yarn'")
        eos = data.get("eos_token_id", cls.eos_token_ids)
        return cls(
            num_layers=_need(data, "num_hidden_layers"),
            num_experts=_need(data, "num_local_experts"),
            experts_per_token=data.get("num_experts_per_tok", data.get("experts_per_token", 4)),
            vocab_size=_need(data, "vocab_size"),
            hidden_size=_need(data, "hidden_size"),
            intermediate_size=_need(data, "intermediate_size"),
            head_dim=data.get("head_dim", 64),
            num_heads=_need(data, "num_attention_heads"),
            num_kv_heads=_need(data, "num_key_value_heads"),
            sliding_window=data.get("sliding_window", 128),
            layer_types=tuple(data.get("layer_types") or ()),
            rope_theta=rope.get("rope_theta", data.get("rope_theta", 150000.0)),
            rope_factor=rope.get("factor", 32.0),
            rope_beta_fast=rope.get("beta_fast", 32.0),
            rope_beta_slow=rope.get("beta_slow", 1.0),
            rope_original_context=rope.get(
                "original_max_position_embeddings", data.get("initial_context_length", 4096)
            ),
            # HF treats a missing key as truncate=True; the published config says false.
            rope_truncate=rope.get("truncate", True),
            swiglu_limit=data.get("swiglu_limit", 7.0),
            swiglu_alpha=data.get("swiglu_alpha", 1.702),
            rms_norm_eps=data.get("rms_norm_eps", 1e-5),
            max_context=data.get("max_position_embeddings", 131072),
            eos_token_ids=tuple(eos) if isinstance(eos, list) else (eos,),
            name=name,
        )

    @classmethod
    def from_original(cls, data: dict, name: str = "custom") -> ModelConfig:
        """From OpenAI's `original/config.json` (no eps key: the reference hard-codes 1e-5)."""
        factor = data.get("rope_scaling_factor", 32.0)
        initial = data.get("initial_context_length", 4096)
        return cls(
            num_layers=_need(data, "num_hidden_layers"),
            num_experts=_need(data, "num_experts"),
            experts_per_token=data.get("experts_per_token", 4),
            vocab_size=_need(data, "vocab_size"),
            hidden_size=_need(data, "hidden_size"),
            intermediate_size=_need(data, "intermediate_size"),
            head_dim=data.get("head_dim", 64),
            num_heads=_need(data, "num_attention_heads"),
            num_kv_heads=_need(data, "num_key_value_heads"),
            sliding_window=data.get("sliding_window", 128),
            rope_theta=data.get("rope_theta", 150000.0),
            rope_factor=factor,
            rope_beta_fast=data.get("rope_ntk_beta", 32.0),
            rope_beta_slow=data.get("rope_ntk_alpha", 1.0),
            rope_original_context=initial,
            rope_truncate=False,
            swiglu_limit=data.get("swiglu_limit", 7.0),
            max_context=int(initial * factor),
            name=name,
        )

    def to_hf(self) -> dict:
        """The Hugging Face `config.json` for this architecture, as published (MXFP4 experts)."""
        return {
            "architectures": ["GptOssForCausalLM"],
            "model_type": "gpt_oss",
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "num_local_experts": self.num_experts,
            "num_experts_per_tok": self.experts_per_token,
            "experts_per_token": self.experts_per_token,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "sliding_window": self.sliding_window,
            "layer_types": list(self.layer_types),
            "rope_theta": self.rope_theta,
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": self.rope_factor,
                "beta_fast": self.rope_beta_fast,
                "beta_slow": self.rope_beta_slow,
                "original_max_position_embeddings": self.rope_original_context,
                "truncate": self.rope_truncate,
            },
            "max_position_embeddings": self.max_context,
            "initial_context_length": self.rope_original_context,
            "rms_norm_eps": self.rms_norm_eps,
            "swiglu_limit": self.swiglu_limit,
            "hidden_act": "silu",
            "attention_bias": True,
            "attention_dropout": 0.0,
            "tie_word_embeddings": False,
            "eos_token_id": self.eos_token_ids[0],
            "pad_token_id": 199999 if self.vocab_size > 199999 else None,
            "router_aux_loss_coef": 0.9,
            "output_router_logits": False,
            "use_cache": True,
            "initializer_range": 0.02,
            "quantization_config": QUANTIZATION_CONFIG,
        }

    def to_original(self) -> dict:
        """OpenAI's `original/config.json` for this architecture."""
        return {
            "num_hidden_layers": self.num_layers,
            "num_experts": self.num_experts,
            "experts_per_token": self.experts_per_token,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "swiglu_limit": self.swiglu_limit,
            "head_dim": self.head_dim,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "sliding_window": self.sliding_window,
            "initial_context_length": self.rope_original_context,
            "rope_theta": self.rope_theta,
            "rope_scaling_factor": self.rope_factor,
            "rope_ntk_alpha": self.rope_beta_slow,
            "rope_ntk_beta": self.rope_beta_fast,
        }

    def to_dict(self) -> dict:
        return asdict(self)


def _need(data: dict, key: str):
    if key not in data:
        raise GptossError(f"config: missing field {key!r}")
    return data[key]


_PRESETS = {
    "gpt-oss-20b": ModelConfig(name="gpt-oss-20b"),
    "gpt-oss-120b": ModelConfig(num_layers=36, num_experts=128, name="gpt-oss-120b"),
    # Small enough for unit tests, with the real vocabulary so the tokenizer works end to end.
    "tiny": ModelConfig(
        num_layers=3,
        num_experts=8,
        experts_per_token=2,
        hidden_size=64,
        intermediate_size=64,
        head_dim=16,
        num_heads=8,
        num_kv_heads=2,
        sliding_window=8,
        rope_original_context=64,
        max_context=2048,
        name="tiny",
    ),
}


def preset_names() -> list[str]:
    return list(_PRESETS)


def preset(name: str) -> ModelConfig:
    """A built-in architecture: "gpt-oss-20b", "gpt-oss-120b" or "tiny"."""
    key = name.split("/")[-1].lower()
    if key not in _PRESETS:
        raise GptossError(f"unknown model preset {name!r}; known: {', '.join(_PRESETS)}")
    return _PRESETS[key]


def read_config(folder: str | Path) -> ModelConfig:
    """A checkpoint folder's config: `config.json` (either format) or `original/config.json`."""
    folder = Path(folder)
    for path in (folder / "config.json", folder / "original" / "config.json"):
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise GptossError(f"cannot read {path}: {exc}") from None
            if not isinstance(data, dict):
                raise GptossError(f"{path} does not hold a JSON object")
            is_original = "num_experts" in data and "num_local_experts" not in data
            reader = ModelConfig.from_original if is_original else ModelConfig.from_hf
            return reader(data, name=folder.name)
    raise GptossError(f"no config.json in {folder} (nor original/config.json)")
