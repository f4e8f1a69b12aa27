"""Model configuration: one dataclass, read from either published config format.

`ModelConfig` holds the architecture of a gpt-oss model. It is built from the Hugging Face
`config.json` (`from_hf`), from the OpenAI `original/config.json` (`from_original`), or from the
built-in presets (`preset("gpt-oss-20b")`), so memory planning works before any download; the
synthetic writer writes both formats back (`to_hf`, `to_original`). The keys of both formats are
listed once, in `_KEYS`, for the readers and the writers. Every field is validated, sizes within
sane bounds, before anything is derived from them; a bad one raises `GptossError` naming it.
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
MAX_LAYERS = 1024  # far above any gpt-oss (36); a config asking for more is refused at once
MAX_SIZE = 2**31 - 1  # any other count or width: an index torch can hold

# field: (keys in a HF config.json, key in original/config.json or None). A HF key may have
# alternatives, read in order and all written; "rope_scaling.K" is K in rope_scaling (or in
# transformers 5's rope_parameters, which "rope_parameters.K" names: read, never written).
_KEYS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "num_layers": (("num_hidden_layers",), "num_hidden_layers"),
    "num_experts": (("num_local_experts",), "num_experts"),
    "experts_per_token": (("num_experts_per_tok", "experts_per_token"), "experts_per_token"),
    "vocab_size": (("vocab_size",), "vocab_size"),
    "hidden_size": (("hidden_size",), "hidden_size"),
    "intermediate_size": (("intermediate_size",), "intermediate_size"),
    "swiglu_limit": (("swiglu_limit",), "swiglu_limit"),
    "head_dim": (("head_dim",), "head_dim"),
    "num_heads": (("num_attention_heads",), "num_attention_heads"),
    "num_kv_heads": (("num_key_value_heads",), "num_key_value_heads"),
    "sliding_window": (("sliding_window",), "sliding_window"),
    "layer_types": (("layer_types",), None),
    "rope_original_context": (
        ("rope_scaling.original_max_position_embeddings", "initial_context_length"),
        "initial_context_length",
    ),
    "rope_theta": (("rope_theta", "rope_parameters.rope_theta"), "rope_theta"),
    "rope_factor": (("rope_scaling.factor",), "rope_scaling_factor"),
    "rope_beta_slow": (("rope_scaling.beta_slow",), "rope_ntk_alpha"),
    "rope_beta_fast": (("rope_scaling.beta_fast",), "rope_ntk_beta"),
    "rope_truncate": (("rope_scaling.truncate",), None),
    "swiglu_alpha": (("swiglu_alpha",), None),
    "rms_norm_eps": (("rms_norm_eps",), None),
    "max_context": (("max_position_embeddings",), None),
    "eos_token_ids": (("eos_token_id",), None),
}
_REQUIRED = (
    "num_layers", "num_experts", "vocab_size", "hidden_size", "intermediate_size", "num_heads",
    "num_kv_heads",
)  # fmt: skip
_INTS = (*_REQUIRED, "experts_per_token", "head_dim", "sliding_window", "rope_original_context",
         "max_context")  # fmt: skip
_NUMBERS = ("rope_theta", "rope_factor", "rope_beta_fast", "rope_beta_slow", "swiglu_limit",
            "swiglu_alpha", "rms_norm_eps")  # fmt: skip
_HF_UNWRITTEN = ("swiglu_alpha",)  # read when present, absent from the published config
# HF treats a missing rope_scaling.truncate as True; the published config says false.
_HF_DEFAULTS = {"rope_truncate": True}
# The rest of a published HF config.json: the same for every gpt-oss.
_HF_CONSTANTS = {
    "architectures": ["GptOssForCausalLM"],
    "model_type": "gpt_oss",
    "hidden_act": "silu",
    "attention_bias": True,
    "attention_dropout": 0.0,
    "tie_word_embeddings": False,
    "router_aux_loss_coef": 0.9,
    "output_router_logits": False,
    "use_cache": True,
    "initializer_range": 0.02,
}


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
        self._check_numbers()  # first: num_layers bounds what layer_types derives
        if not self.layer_types:
            types = tuple(SLIDING if i % 2 == 0 else FULL for i in range(self.num_layers))
            object.__setattr__(self, "layer_types", types)
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))
        self._validate()

    def _check_numbers(self) -> None:
        for name in _INTS:
            value, most = getattr(self, name), MAX_LAYERS if name == "num_layers" else MAX_SIZE
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise GptossError(f"config: {name} must be a positive integer, got {value!r}")
            if value > most:
                raise GptossError(f"config: {name} is {value}, more than the {most} allowed")
        for name in _NUMBERS:
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise GptossError(f"config: {name} must be a positive number, got {value!r}")
        if not isinstance(self.rope_truncate, bool):
            raise GptossError(f"config: truncate must be true or false, got {self.rope_truncate!r}")
        for name in ("layer_types", "eos_token_ids"):
            if not isinstance(getattr(self, name), (list, tuple)):
                raise GptossError(f"config: {name} must be a list, got {getattr(self, name)!r}")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in self.eos_token_ids):
            raise GptossError(f"config: eos_token_id must be token ids, got {self.eos_token_ids!r}")

    def _validate(self) -> None:
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
        unknown = {t for t in self.layer_types if t not in (SLIDING, FULL)}
        if unknown:
            raise GptossError(f"config: unknown layer type {sorted(map(str, unknown))[0]!r}")

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

    # ------------------------------------------------------------------ readers and writers

    @classmethod
    def from_hf(cls, data: dict, name: str = "custom") -> ModelConfig:
        """From a Hugging Face `config.json` (model_type "gpt_oss")."""
        if data.get("model_type", "gpt_oss") != "gpt_oss":
            raise GptossError(f"config: model_type is {data['model_type']!r}, expected 'gpt_oss'")
        rope = data.get("rope_scaling") or data.get("rope_parameters") or {}
        if not isinstance(rope, dict):
            raise GptossError(f"config: rope_scaling must be a JSON object, got {rope!r}")
        if rope and rope.get("rope_type", "yarn") != "yarn":
            raise GptossError(f"config: rope_scaling.rope_type {rope['rope_type']!r} is not 'yarn'")
        values = {}
        for field_name, (keys, _) in _KEYS.items():
            for key in keys:
                section, _, inner = key.rpartition(".")
                value = (rope if section else data).get(inner)
                if value is not None:  # transformers writes null for what is unset
                    values[field_name] = value
                    break
        eos = values.get("eos_token_ids")
        if isinstance(eos, int):
            values["eos_token_ids"] = (eos,)
        return cls._build(values, _HF_DEFAULTS, name)

    @classmethod
    def from_original(cls, data: dict, name: str = "custom") -> ModelConfig:
        """From OpenAI's `original/config.json` (no eps key: the reference hard-codes 1e-5)."""
        values = {f: data[key] for f, (_, key) in _KEYS.items() if key in data}
        config = cls._build(values, {}, name)  # its context is the YaRN-extended one
        return config.with_(max_context=round(config.rope_original_context * config.rope_factor))

    @classmethod
    def _build(cls, values: dict, defaults: dict, name: str) -> ModelConfig:
        missing = [f for f in _REQUIRED if f not in values]
        if missing:
            raise GptossError(f"config: missing field {_KEYS[missing[0]][0][0]!r}")
        for listed in ("layer_types", "eos_token_ids"):
            if listed in values and not isinstance(values[listed], (list, tuple)):
                raise GptossError(f"config: {_KEYS[listed][0][0]} must be a list")
        return cls(**(defaults | values), name=name)

    def to_hf(self) -> dict:
        """The Hugging Face `config.json` for this architecture, as published (MXFP4 experts)."""
        out: dict = dict(_HF_CONSTANTS)
        rope: dict = {"rope_type": "yarn"}
        for field_name, (keys, _) in _KEYS.items():
            if field_name in _HF_UNWRITTEN:
                continue
            value = getattr(self, field_name)
            value = list(value) if isinstance(value, tuple) else value
            for key in keys:
                section, _, inner = key.rpartition(".")
                if section == "rope_scaling":
                    rope[inner] = value
                elif not section:
                    out[key] = value
        out["rope_scaling"] = rope
        out["eos_token_id"] = self.eos_token_ids[0]
        out["pad_token_id"] = 199999 if self.vocab_size > 199999 else None
        out["quantization_config"] = QUANTIZATION_CONFIG
        return out

    def to_original(self) -> dict:
        """OpenAI's `original/config.json` for this architecture."""
        return {key: getattr(self, f) for f, (_, key) in _KEYS.items() if key is not None}

    def to_dict(self) -> dict:
        return asdict(self)


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


def read_json_object(path: Path) -> dict:
    """The JSON object in file `path`, or a one-line `GptossError` naming the file."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, or not JSON
        raise GptossError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(data, dict):
        raise GptossError(f"{path} does not hold a JSON object")
    return data


def read_config(folder: str | Path) -> ModelConfig:
    """A checkpoint folder's config: `config.json` (either format) or `original/config.json`."""
    folder = Path(folder)
    for path in (folder / "config.json", folder / "original" / "config.json"):
        if path.exists():
            data = read_json_object(path)
            is_original = "num_experts" in data and "num_local_experts" not in data
            reader = ModelConfig.from_original if is_original else ModelConfig.from_hf
            try:
                return reader(data, name=folder.name)
            except GptossError as exc:
                raise GptossError(f"{path}: {exc}") from None
    raise GptossError(f"no config.json in {folder} (nor original/config.json)")
