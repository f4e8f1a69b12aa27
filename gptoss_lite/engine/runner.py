"""The Python API: `load()` a model, then ask it for `logits()` or `generate()` tokens.

    runner = gptoss_lite.load("openai/gpt-oss-20b")          # or a local folder
    for token in runner.generate(ids, max_new_tokens=64, temperature=0):
        ...

How the model is opened is one `ModelOptions` (its fields may also be given to `load` as keyword
arguments), how tokens are drawn one `Sampling` (likewise for `generate`).

`find_model` resolves the model (local folder or Hub id: configs and tokenizer first) and reads
its config, once; `load` plans the memory from that, then fills the model's empty parameters
from the checkpoint straight onto the device (experts stay MXFP4) and allocates the KV cache for
the context. The runner keeps one cache: a `generate` call whose prompt extends the tokens
already cached only prefills the new tokens. One call at a time owns that cache: a call made
while another is computing (another thread) is refused with a `GptossError` rather than made to
wait (callers that want a queue, like an HTTP server, keep their own), and a generator whose
cache a later call took over raises on its next step instead of yielding wrong tokens.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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
from ..kernels import cpu as cpu_kernels
from ..kernels import kernel_functions, triton_available, triton_refusal
from ..memory.plan import Plan, plan
from ..memory.profiles import resolve_profile, run_device
from ..model.cache import KVCache, KVPool
from ..model.kv_quant import KVDtypes
from ..model.transformer import TORCH_KERNELS, Transformer
from .batch import Batch, step_chunk
from .generate import (
    PREFILL_CHUNK,
    Progress,
    TokenMask,
    check_fits,
    decode_step,
    next_token,
    prefill,
    reusable_prefix,
)
from .options import ModelOptions
from .sampling import Sampling

BUSY = (
    "this Runner is already computing for another call (another thread?): it holds one KV "
    "cache, so make one call at a time, or load one Runner per thread"
)
GENERATE_DEFAULT = Sampling(max_new_tokens=256)  # what `generate` draws when not told otherwise
TAKEN_OVER = (
    "this generation's KV cache was taken over by a later generate() or logits() call on the "
    "same Runner; finish (or close) one generation before starting the next"
)
Observer = Callable[[torch.Tensor, int], None]  # (a step's logits [V], the token chosen)


@dataclass(frozen=True)
class ModelSource:
    """A model found but not yet read: the name it goes by (a Hub repo id or the folder's
    name), the folder of its configs and tokenizer, and its config."""

    model: str | Path
    name: str
    folder: Path
    config: ModelConfig

    def weights_folder(self) -> Path:
        """The folder with the weights too (from the Hub: downloaded now)."""
        return resolve_model(self.model)


def find_model(model: str | Path) -> ModelSource:
    """Find `model` (a local folder or a Hub repo id) and read its config; from the Hub only
    the configs and tokenizer are fetched, so a model that cannot fit is refused first."""
    folder = resolve_model(model, weights=False)
    local = Path(model).expanduser().exists()
    config = read_config(folder)
    name = config.name if local else str(model)  # not the Hub cache's snapshot hash
    return ModelSource(model, name, folder, config.with_(name=name))


@dataclass
class Runner:
    """A loaded model with its KV cache. `progress(done, total)`, when set, is told the prompt
    tokens prefilled so far on every prefill. `caches` are those of the sequences a `batch()`
    decodes together (the first is `cache`; by default it is the only one)."""

    model: Transformer
    cache: KVCache
    config: ModelConfig
    prefill_chunk: int = PREFILL_CHUNK
    folder: Path | None = None
    plan: Plan | None = None
    name: str | None = None
    progress: Progress | None = None
    caches: list[KVCache] | None = None

    def __post_init__(self) -> None:
        if self.caches is None:
            self.caches = [self.cache]
        if self.caches[0] is not self.cache:
            raise ValueError("the runner's cache must be the first of its caches")
        self._history: list[int] = []  # tokens fed or yielded; the cache holds a prefix of them
        self.prefilled = 0  # prompt tokens the last generate() fed; the rest came from the cache
        self._lock = threading.Lock()  # held while a call computes on the cache
        self._owner = 0  # the call that owns the cache; each new call takes the next number

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
        check_fits(tokens.numel(), 0, self.context)
        with self._cache_for(None):
            self.cache.rewind(0)
            self._history = tokens.tolist()
            return prefill(self.model, self.cache, tokens, self.prefill_chunk, True, self.progress)

    def generate(
        self,
        token_ids: Iterable[int],
        sampling: Sampling | None = None,
        *,
        stop: Iterable[int] = (),
        observe: Observer | None = None,
        mask: TokenMask | None = None,
        **settings,
    ) -> Iterator[int]:
        """Yield new token ids one at a time, using (and reusing) the KV cache, drawn as
        `sampling` says (default `GENERATE_DEFAULT`) with any of its fields replaced by
        `settings` (`max_new_tokens=64, temperature=0`). A stop token ends the reply.

        `observe(logits, token)` is told each step's logits [V] (the model's, unmasked) and the
        token chosen from them, before it is yielded; `mask` limits each step to the tokens it
        allows. The settings are checked, and the cache taken from any earlier generation, when
        this is called."""
        sampling = replace(sampling or GENERATE_DEFAULT, **settings)
        tokens = self._tensor(token_ids)
        n = check_fits(tokens.numel(), sampling.max_new_tokens, self.context)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(sampling.seed if sampling.seed is not None else torch.seed())
        with self._cache_for(None) as owner:
            pass
        return self._generate(
            owner, tokens, n, set(stop), sampling, generator, observe or _unobserved, mask
        )

    def batch(self, prefill_chunk: int | None = None) -> Batch:
        """A `Batch` decoding sequences together in this runner's caches, one per cache, with
        prompts fed `prefill_chunk` tokens a step (default: `batch.step_chunk` of the runner's).
        It takes the caches over as a `generate` call does: a later call takes them back, and
        the batch's next step or `add` raises."""
        with self._cache_for(None) as owner:
            self._history = []  # the batch will fill the caches: nothing cached is ours now
        chunk = prefill_chunk or step_chunk(self.prefill_chunk, len(self.caches), self.device)
        return Batch(self.model, self.caches, chunk, guard=lambda: self._cache_for(owner))

    def _generate(
        self,
        owner: int,
        tokens: torch.Tensor,
        n: int,
        stop: set[int],
        sampling: Sampling,
        generator: torch.Generator,
        observe: Observer,
        mask: TokenMask | None,
    ) -> Iterator[int]:
        with self._cache_for(owner):
            new = self._reuse_prefix(tokens.tolist())
            self._history, self.prefilled = tokens.tolist(), tokens.numel() - new
            if mask is not None:
                mask.request(None)  # made while the prompt is prefilled
            logits = prefill(
                self.model, self.cache, tokens[new:], self.prefill_chunk, progress=self.progress
            )[-1]
            token = next_token(logits, sampling, generator, _allowed(mask, logits))
            observe(logits, token)
            self._history.append(token)
        for step in range(1, n + 1):
            yield token
            if token in stop or step == n:
                return  # a stop token (or the last one) is never fed back
            with self._cache_for(owner):
                if mask is not None:
                    mask.request(token)  # the next mask is made while this token's pass runs
                logits = decode_step(self.model, self.cache, token)[-1]
                token = next_token(logits, sampling, generator, _allowed(mask, logits))
                observe(logits, token)
                self._history.append(token)

    @contextmanager
    def _cache_for(self, owner: int | None) -> Iterator[int]:
        """Hold the cache while call `owner` computes (None: a new call, which takes it over
        from every earlier one); a `GptossError` if another call is computing or took it."""
        if not self._lock.acquire(blocking=False):
            raise GptossError(BUSY)
        try:
            if owner is None:
                self._owner += 1
            elif owner != self._owner:
                raise GptossError(TAKEN_OVER)
            yield self._owner
        finally:
            self._lock.release()

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Rewind the cache to its longest prefix shared with `tokens` (keeping at least one
        token to prefill, for its logits); return where prefilling must start."""
        common = reusable_prefix(tokens, self.cached, self.cache)
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
    model: str | Path | ModelSource | Checkpoint,
    options: ModelOptions | None = None,
    *,
    ring_slots: int | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    progress: Progress | None = None,
    **settings,
) -> Runner:
    """Load a gpt-oss checkpoint (local folder or Hub repo id) into a ready `Runner`, opened as
    `options` says with any of its fields replaced by `settings` (`device="cpu", context=4096`).

    The memory profile (default: detected from this machine; `budget` GiB replaces its budget)
    and the plan made from it decide the context (the largest that fits, unless `context` asks
    for one, which must fit), the prefill chunk and where the embedding table lives; the plan is
    made before any weight is read, so a model that cannot fit fails at once. `dtype` sets the
    activations and the attention/router/embedding weights (default bf16); the experts stay
    MXFP4 whatever it is. `kernels` is "torch", "triton" (the fused GPU kernels), "cpu" (the
    compiled CPU kernels), "cpu-q8" (those with decode reading the dense matrices in int8: not
    exact, never chosen for you) or "auto" (triton on CUDA when Triton is installed, cpu on the
    CPU when a C compiler is there, else torch). `cpu_experts` (a layer count or "all"; default: the
    profile's, else as few as the plan needs) keeps those leading layers' experts in host RAM,
    run by the CPU kernel. `kv_cache_dtype` ("q8", "bf16,q8", ...: K then V, see `kv_quant`)
    replaces the profile's KV-cache formats.
    `ring_slots` enlarges the sliding layers' rings so the cache can rewind that far back
    (minus the window); `on_plan(plan)` is called before the weights are read, e.g. to show it;
    `progress(done, total)` is told the bytes of weights loaded so far. `parallel` sequences
    (None: as many as the plan allows, up to 4) get a KV cache of the planned context each, for
    `Runner.batch`. `model` may also be what `find_model` found, or an opened checkpoint:
    `SyntheticCheckpoint(preset("gpt-oss-20b"))` loads random weights of that geometry made in
    memory, to check the fit before a download.
    """
    options = replace(options or ModelOptions(), **settings)
    dtype = _dtype(options.dtype)
    profile = resolve_profile(options.profile, options.device, options.budget)
    device = run_device(profile, options.device)  # before anything is read or downloaded
    if options.kv_cache_dtype is not None:
        kv = options.kv_cache_dtype
        kv = kv if isinstance(kv, KVDtypes) else KVDtypes.parse(kv)
        profile = replace(profile, kv_cache_dtype=kv)
    if isinstance(model, (str, Path)):
        model = find_model(model)
    config = model.config
    memory_plan = plan(
        config,
        profile,
        options.context,
        ring_slots=ring_slots,
        cpu_experts=options.cpu_experts,
        parallel=options.parallel,
    )
    if on_plan is not None:
        on_plan(memory_plan)
    found = isinstance(model, ModelSource)
    checkpoint = open_checkpoint(model.weights_folder(), config) if found else model
    if isinstance(checkpoint, FileCheckpoint) and has_dense_experts(checkpoint):
        checkpoint = QuantizingCheckpoint(checkpoint)  # a bf16 fine-tune: MXFP4 while loading
    embedding_device = device if profile.embedding_on_device else torch.device("cpu")
    host_kernels = TORCH_KERNELS  # unused without experts in host RAM: nothing to build then
    if memory_plan.cpu_experts:
        host_kernels = kernel_functions(_kernels("auto", torch.device("cpu")))
    net = Transformer(
        config,
        dtype,
        kernel_functions(_kernels(options.kernels, device)),
        memory_plan.cpu_experts,
        host_kernels,
    )
    load_weights(
        net, checkpoint, device, embedding_device, net.host_parameters(), progress=progress
    )
    checkpoint.close()
    pool = KVPool(
        config,
        memory_plan.parallel,
        memory_plan.context,
        device=device,
        dtype=dtype,
        ring_slots=ring_slots,
        kv_dtypes=memory_plan.kv_cache_dtype,
    )
    caches = pool.caches()
    name = model.name if found else config.name
    return Runner(
        net,
        caches[0],
        config,
        memory_plan.prefill_chunk,
        folder=checkpoint.folder,
        plan=memory_plan,
        name=name,
        caches=caches,
    )


def _unobserved(logits: torch.Tensor, token: int) -> None:
    """The observer of a generation nobody watches."""


def _allowed(mask: TokenMask | None, logits: torch.Tensor) -> torch.Tensor | None:
    return None if mask is None else mask.allowed(logits)


def _kernels(kernels: str, device: torch.device) -> str:
    """ "auto" made concrete (the compiled kernels where they run, else torch); any other name
    is `kernel_functions`' to check."""
    refusal = triton_refusal(device) if device.type == "cuda" else None
    if kernels == "triton" and refusal:
        raise GptossError(refusal)
    if kernels != "auto":
        return kernels
    if device.type == "cpu":
        return "cpu" if cpu_kernels.available() else "torch"
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
