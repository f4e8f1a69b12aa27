"""The Python API: `load()` a model, then ask it for `logits()` or `generate()` tokens.

    runner = gptoss_lite.load("openai/gpt-oss-20b")          # or a local folder
    for token in runner.generate(ids, max_new_tokens=64, temperature=0):
        ...

`load` resolves the model (local folder or Hub id), reads its config, builds the model with empty
parameters, fills them from the checkpoint straight onto the device (experts stay MXFP4), and
allocates the KV cache for the context. The runner keeps one cache: a `generate` call whose
prompt extends the tokens already cached only prefills the new tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..checkpoint.dense import QuantizingCheckpoint, has_dense_experts
from ..checkpoint.hub import resolve_model
from ..checkpoint.loader import load_weights
from ..checkpoint.protocol import Checkpoint
from ..checkpoint.reader import FileCheckpoint, open_checkpoint
from ..config import ModelConfig, read_config
from ..errors import GptossError
from ..kernels import triton_available, triton_refusal
from ..memory.plan import Plan, plan
from ..memory.profiles import Profile, resolve_profile, run_device
from ..model.cache import KVCache
from ..model.kv_quant import KVDtypes
from ..model.transformer import KERNELS, Transformer
from .generate import PREFILL_CHUNK, decode, prefill


@dataclass
class Runner:
    model: Transformer
    cache: KVCache
    config: ModelConfig
    prefill_chunk: int = PREFILL_CHUNK
    folder: Path | None = None
    plan: Plan | None = None

    def __post_init__(self) -> None:
        self._history: list[int] = []  # tokens fed or yielded; the cache holds a prefix of them
        self.prefilled = 0  # prompt tokens the last generate() fed; the rest came from the cache

    @property
    def cached(self) -> list[int]:
        """The tokens whose keys and values are in the cache."""
        return self._history[: self.cache.length]

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def context(self) -> int:
        return self.cache.capacity

    def logits(self, token_ids: Iterable[int]) -> torch.Tensor:
        """Float32 logits [len(token_ids), vocab] from one forward pass over a fresh cache."""
        tokens = self._tensor(token_ids)
        self.cache.rewind(0)
        self._history = tokens.tolist()
        return prefill(self.model, self.cache, tokens, self.prefill_chunk, all_logits=True)

    def generate(
        self,
        token_ids: Iterable[int],
        *,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        stop: Iterable[int] = (),
    ) -> Iterator[int]:
        """Yield new token ids one at a time, using (and reusing) the KV cache."""
        tokens = self._tensor(token_ids)
        if tokens.numel() == 0:
            raise GptossError("the prompt is empty")
        if tokens.numel() + max_new_tokens > self.context:
            raise GptossError(
                f"prompt ({tokens.numel()} tokens) + max_new_tokens ({max_new_tokens}) exceed "
                f"the context of {self.context} tokens; use a larger --context or fewer tokens"
            )
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else torch.seed())
        new = self._reuse_prefix(tokens.tolist())
        self._history, self.prefilled = tokens.tolist(), tokens.numel() - new
        logits = prefill(self.model, self.cache, tokens[new:], self.prefill_chunk)
        for token in decode(
            self.model,
            self.cache,
            logits,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            generator=generator,
            stop=stop,
        ):
            self._history.append(token)
            yield token

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Rewind the cache to its longest prefix shared with `tokens` (keeping at least one
        token to prefill, for its logits); return where prefilling must start."""
        cached = self.cached
        common = 0
        limit = min(len(tokens) - 1, len(cached))
        while common < limit and tokens[common] == cached[common]:
            common += 1
        if not self.cache.can_rewind_to(common):
            common = 0
        self.cache.rewind(common)
        return common

    def _tensor(self, token_ids: Iterable[int]) -> torch.Tensor:
        ids = torch.as_tensor(list(token_ids), dtype=torch.long)
        if ids.ndim != 1:
            raise GptossError("token_ids must be a flat sequence of integers")
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise GptossError(f"token ids must lie in [0, {self.config.vocab_size})")
        return ids.to(self.device)


def load(
    model: str | Path | Checkpoint,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    context: int | None = None,
    profile: str | Path | Profile | None = None,
    ring_slots: int | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    kernels: str = "auto",
    kv_cache_dtype: str | KVDtypes | None = None,
) -> Runner:
    """Load a gpt-oss checkpoint (local folder or Hub repo id) into a ready `Runner`.

    The memory profile (default: detected from this machine) and the plan made from it decide
    the context (the largest that fits, unless `context` asks for one, which must fit), the
    prefill chunk and where the embedding table lives; the plan is made before any weight is
    read, so a model that cannot fit fails at once. `dtype` sets the activations and the
    attention/router/embedding weights (default bf16); the experts stay MXFP4 whatever it is.
    `ring_slots` enlarges the sliding layers' rings so the cache can rewind that far back
    (minus the window); `on_plan(plan)` is called before the weights are read, e.g. to show it.
    `kernels` is "torch", "triton" (the fused GPU kernels) or "auto" (triton on CUDA when
    Triton is installed, else torch). `kv_cache_dtype` ("q8", "bf16,q8", ...: K then V, see
    `kv_quant`) replaces the profile's KV-cache formats. `model` may also be an opened checkpoint:
    `SyntheticCheckpoint(preset("gpt-oss-20b"))` loads random weights of that geometry made in
    memory, to check the fit before a download.
    """
    dtype = _dtype(dtype)
    profile = resolve_profile(profile, device)
    device = run_device(profile, device)
    if kv_cache_dtype is not None:
        kv = kv_cache_dtype
        kv = kv if isinstance(kv, KVDtypes) else KVDtypes.parse(kv)
        profile = replace(profile, kv_cache_dtype=kv)
    is_path = isinstance(model, (str, Path))
    # From the Hub, only the configs come before the plan: a model that cannot fit is refused
    # before its weights are downloaded.
    config = read_config(resolve_model(model, weights=False)) if is_path else model.config
    memory_plan = plan(config, profile, context, ring_slots=ring_slots)
    kernels = _kernels(kernels, device)
    if on_plan is not None:
        on_plan(memory_plan)
    checkpoint = open_checkpoint(resolve_model(model)) if is_path else model
    if isinstance(checkpoint, FileCheckpoint) and has_dense_experts(checkpoint):
        checkpoint = QuantizingCheckpoint(checkpoint)  # a bf16 fine-tune: MXFP4 while loading
    embedding_device = device if profile.embedding_on_device else torch.device("cpu")
    net = Transformer(config, dtype, kernels)
    load_weights(net, checkpoint, device, embedding_device)
    checkpoint.close()
    cache = KVCache(
        config,
        memory_plan.context,
        device=device,
        dtype=dtype,
        ring_slots=ring_slots,
        kv_dtypes=memory_plan.kv_cache_dtype,
    )
    return Runner(
        net, cache, config, memory_plan.prefill_chunk, folder=checkpoint.folder, plan=memory_plan
    )


def _kernels(kernels: str, device: torch.device) -> str:
    if kernels not in ("auto", *KERNELS):
        raise GptossError(f"unknown kernels {kernels!r}; use auto, torch or triton")
    refusal = triton_refusal(device) if device.type == "cuda" else None
    if kernels == "triton" and refusal:
        raise GptossError(refusal)
    if kernels != "auto":
        return kernels
    if device.type != "cuda" or not triton_available():
        return "torch"
    if refusal:
        logging.getLogger(__name__).warning("%s: running the torch path", refusal)
        return "torch"
    return "triton"


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp32": torch.float32,
        "float32": torch.float32,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if dtype not in names:
        raise GptossError(f"unknown dtype {dtype!r}; use bf16, fp16 or fp32")
    return names[dtype]
