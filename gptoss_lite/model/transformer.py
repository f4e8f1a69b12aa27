"""The gpt-oss transformer: plain modules over pure functions.

x = embedding[tokens]; per layer: x += attn(rmsnorm(x)); x += moe(rmsnorm(x)); logits =
unembedding(rmsnorm(x)). RMSNorm runs in float32 with float32 gains; attention and the residual
stream run in the activation dtype (bf16, or float32 for tests); experts stay MXFP4 (moe.py).
Parameters are created empty on the meta device and filled by `checkpoint.loader.load_weights`.
The embedding table may live on another device than the rest (host RAM saves VRAM: it is only a
row gather per token). `Kernels` is the implementation of attention and of the experts the model
is built with: by default the functions of attention.py and moe.py (any device); the fused ones
of `gptoss_lite/kernels/` have the same signatures, and whoever builds the model picks them
(`kernels.kernel_functions`), so this package never imports them. The experts of the first
`host_experts` layers may stay in host RAM while the rest is on the GPU: those layers send their
normed activations to the host, run `host_kernels`' experts there and get the sum back.
`decode` feeds several sequences one token each, every sequence at its own position with its own
cache (slots of one `KVPool`): the projections and experts run once over the batch, attention
per sequence (a loop over each cache's own update and attention, so each row is computed as it
would be alone, or a kernel's `batch_attention` over the pool in one launch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .attention import attention
from .cache import KVCache, store_rows
from .moe import PackedExperts, experts_forward, route
from .rope import Rotary, apply_rotary


@dataclass(frozen=True)
class Kernels:
    """The implementation the model runs: attention with the signature of
    `attention.attention`, the routed experts with that of `moe.experts_forward`; a
    `batch_attention` (the signature of `kernels.attention_triton.batch_attention`) attends
    for a decode step of several sequences in one call, else each sequence attends alone."""

    name: str
    attention: Callable = attention
    experts: Callable = experts_forward
    linear: Callable = F.linear  # the dense projections: qkv, attention output, router, lm_head
    batch_attention: Callable | None = None
    # B tokens, token i fed to caches[i], through every layer and the head at once, or None
    # where it does not apply: (model, x [B, H], positions [B], rope, caches) -> [B, V] | None.
    fused_step: Callable | None = None
    # Whether decode reads the attention projections and the head in an int8 form (cpu-q8).
    int8_dense: bool = False


TORCH_KERNELS = Kernels("torch")


def on_host(run_experts: Callable) -> Callable:
    """`run_experts` for experts kept in host memory: the activations go to the host and the
    result comes back (a no-op when the model runs on the CPU, the same code path)."""

    def run(x, expert_idx, expert_weight, experts, alpha, limit):
        host = experts.down_bias.device
        out = run_experts(
            x.to(host), expert_idx.to(host), expert_weight.to(host), experts, alpha, limit
        )
        return out.to(x.device)

    return run


def _empty(*shape: int, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype, device="meta"), requires_grad=False)


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    t = x.float()
    t = t * torch.rsqrt(t.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (t * scale).to(x.dtype)


class AttentionBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, dtype: torch.dtype, kernels: Kernels):
        super().__init__()
        c = config
        qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        self.config, self.layer = c, layer
        self.attend, self.linear = kernels.attention, kernels.linear
        self.batch_attend = kernels.batch_attention
        self.window = c.sliding_window if c.is_sliding(layer) else None
        self.norm = _empty(c.hidden_size, dtype=torch.float32)
        self.qkv_weight = _empty(qkv, c.hidden_size, dtype=dtype)  # rows: q, then k, then v
        self.qkv_bias = _empty(qkv, dtype=dtype)
        self.sinks = _empty(c.num_heads, dtype=torch.float32)
        self.out_weight = _empty(c.hidden_size, c.num_heads * c.head_dim, dtype=dtype)
        self.out_bias = _empty(c.hidden_size, dtype=dtype)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache | Sequence[KVCache],
    ) -> torch.Tensor:
        """x [T, H] at `positions` [T], with their RoPE (cos, sin) [T, head_dim/2]; `cache`
        is one sequence's, or one per row (a decode step of T sequences)."""
        c = self.config
        t = rms_norm(x, self.norm, c.rms_norm_eps)
        qkv = self.linear(t, self.qkv_weight, self.qkv_bias)
        nq, nkv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        q = qkv[:, :nq].reshape(-1, c.num_heads, c.head_dim)  # (T, Hq, D)
        k = qkv[:, nq : nq + nkv].reshape(-1, c.num_kv_heads, c.head_dim)  # (T, Hkv, D)
        v = qkv[:, nq + nkv :].reshape(-1, c.num_kv_heads, c.head_dim)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if isinstance(cache, KVCache):
            keys, values, key_pos = cache.update(self.layer, k, v, positions)
            o = self.attend(q, keys, values, self.sinks, positions, key_pos, self.window)
        else:
            o = self._attend_rows(q, k, v, positions, cache)
        return x + self.linear(o.reshape(x.shape[0], -1), self.out_weight, self.out_bias)

    def _attend_rows(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        caches: Sequence[KVCache],
    ) -> torch.Tensor:
        """Row i's token attends over caches[i] (after its key and value are stored there)."""
        if self.batch_attend is not None:
            s = store_rows(caches, self.layer, k, v, positions)
            return self.batch_attend(
                q, s.k, s.v, self.sinks, positions, s.positions, s.seq, s.first, s.lengths, s.most,
                self.window,
            )  # fmt: skip
        rows = []
        for i, cache in enumerate(caches):
            one = slice(i, i + 1)
            keys, values, key_pos = cache.update(self.layer, k[one], v[one], positions[one])
            rows.append(
                self.attend(q[one], keys, values, self.sinks, positions[one], key_pos, self.window)
            )
        return torch.cat(rows)


class MoEBlock(nn.Module):
    def __init__(
        self, config: ModelConfig, dtype: torch.dtype, run_experts=experts_forward, linear=F.linear
    ):
        super().__init__()
        c = config
        e, h, i = c.num_experts, c.hidden_size, c.intermediate_size
        self.config, self.run_experts, self.linear = c, run_experts, linear
        self.norm = _empty(h, dtype=torch.float32)
        self.router_weight = _empty(e, h, dtype=dtype)
        self.router_bias = _empty(e, dtype=dtype)
        self.gate_up_blocks = _empty(e, 2 * i, h // 32, 16, dtype=torch.uint8)
        self.gate_up_scales = _empty(e, 2 * i, h // 32, dtype=torch.uint8)
        self.gate_up_bias = _empty(e, 2 * i, dtype=dtype)
        self.down_blocks = _empty(e, h, i // 32, 16, dtype=torch.uint8)
        self.down_scales = _empty(e, h, i // 32, dtype=torch.uint8)
        self.down_bias = _empty(e, h, dtype=dtype)

    @property
    def experts(self) -> PackedExperts:
        return PackedExperts(*(getattr(self, f.name) for f in fields(PackedExperts)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, idx, weight = self._routed(x)
        return x + self._experts(t, idx, weight)

    def together(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """`forward` of each of xs (several sequences' rows), the norm and the router applied
        to each alone and the experts run once over all their rows."""
        t, idx, weight = (torch.cat(parts) for parts in zip(*map(self._routed, xs), strict=True))
        ys = self._experts(t, idx, weight).split([x.shape[0] for x in xs])
        return [x + y for x, y in zip(xs, ys, strict=True)]

    def _routed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The normed rows, their experts and the experts' weights."""
        c = self.config
        t = rms_norm(x, self.norm, c.rms_norm_eps)
        k = c.experts_per_token
        return t, *route(t, self.router_weight, self.router_bias, k, self.linear)

    def _experts(self, t: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        c = self.config
        return self.run_experts(t, idx, weight, self.experts, c.swiglu_alpha, c.swiglu_limit)


class Transformer(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        dtype: torch.dtype = torch.bfloat16,
        kernels: Kernels = TORCH_KERNELS,
        host_experts: int = 0,
        host_kernels: Kernels = TORCH_KERNELS,
    ):
        """`host_experts`: the first that many layers keep their experts in host memory and run
        them with `host_kernels`' experts function."""
        super().__init__()
        c = config
        if not 0 <= host_experts <= c.num_layers:
            raise ValueError(f"host_experts must be in 0..{c.num_layers}, got {host_experts}")
        self.config, self.dtype, self.kernels = c, dtype, kernels.name
        self.host_experts = host_experts
        self.kernel_name = kernels.name  # what bench and -v print, e.g. "cpu-avx512"
        self.int8_dense = kernels.int8_dense
        if host_experts:
            self.kernel_name += f", host experts {host_kernels.name}"
        self.embedding = _empty(c.vocab_size, c.hidden_size, dtype=dtype)
        self.attn = nn.ModuleList(AttentionBlock(c, n, dtype, kernels) for n in range(c.num_layers))
        self.mlp = nn.ModuleList(
            MoEBlock(
                c,
                dtype,
                on_host(host_kernels.experts) if n < host_experts else kernels.experts,
                kernels.linear,
            )
            for n in range(c.num_layers)
        )
        self.linear, self.fused_step = kernels.linear, kernels.fused_step
        self.norm = _empty(c.hidden_size, dtype=torch.float32)
        self.unembedding = _empty(c.vocab_size, c.hidden_size, dtype=dtype)
        self.rotary: Rotary | None = None

    @property
    def device(self) -> torch.device:
        return self.unembedding.device

    def host_parameters(self) -> set[str]:
        """Names of the parameters kept in host memory: the experts of the first host_experts
        layers."""
        names = [f.name for f in fields(PackedExperts)]
        return {f"mlp.{n}.{name}" for n in range(self.host_experts) for name in names}

    def forward(
        self, tokens: torch.Tensor, cache: KVCache, last_only: bool = False, logits: bool = True
    ) -> torch.Tensor | None:
        """Logits (float32) for tokens [T] that follow the cache's contents; updates the cache.

        With `last_only`, only the last position's logits are computed ([1, V]); without
        `logits`, none (a prompt's chunk before its last: None).
        """
        cache.reserve(tokens.shape[0])
        positions = torch.arange(cache.length, cache.length + tokens.shape[0], device=self.device)
        out = self.layers_forward(self.embed(tokens), positions, cache, last_only, logits)
        cache.advance(positions)
        return out

    def forward_parts(
        self, parts: Sequence[torch.Tensor], caches: Sequence[KVCache], logits: Sequence[bool]
    ) -> list[torch.Tensor | None]:
        """`forward(parts[i], caches[i], last_only=True, logits=logits[i])` for each i: several
        sequences' prompt chunks (distinct caches) in one pass, attention per sequence, each
        layer's experts once over every part's tokens and the head once over their last rows. A
        part gets the bits it gets alone where the kernels compute each row independently of the
        others (the CPU kernels), unless it is one token, which `forward` gives to the fused
        step."""
        xs, positions, ropes = [], [], []
        for part, cache in zip(parts, caches, strict=True):
            cache.reserve(part.shape[0])
            at = torch.arange(cache.length, cache.length + part.shape[0], device=self.device)
            xs.append(self.embed(part))
            positions.append(at)
            ropes.append(self.cos_sin(at, xs[-1].dtype))
        for attn, mlp in zip(self.attn, self.mlp, strict=True):
            xs = mlp.together(
                [attn(*row) for row in zip(xs, positions, ropes, caches, strict=True)]
            )
        for cache, at in zip(caches, positions, strict=True):
            cache.advance(at)
        # The parts' last rows through the head in one pass over it, each normed on its own.
        last = [x[-1:] for x, want in zip(xs, logits, strict=True) if want]
        rows = iter(self.head(torch.cat(last), each_alone=True).split(1) if last else ())
        return [next(rows) if want else None for want in logits]

    def decode(self, tokens: torch.Tensor, caches: Sequence[KVCache]) -> torch.Tensor:
        """Logits [B, V] (float32) for tokens [B], token i following the contents of caches[i]
        (distinct caches); updates every cache. Row i is what `forward` gives for token i alone
        where the kernels compute each row independently of the others (the CPU kernels)."""
        for cache in caches:
            cache.reserve(1)
        positions = torch.tensor([c.length for c in caches], device=self.device)
        x = self.embed(tokens)
        # RoPE row by row: a vectorized cos over several rows may round unlike one row alone.
        ropes = [self.cos_sin(positions[i : i + 1], x.dtype) for i in range(len(caches))]
        rope = torch.cat([r[0] for r in ropes]), torch.cat([r[1] for r in ropes])
        logits = (
            None if self.fused_step is None else self.fused_step(self, x, positions, rope, caches)
        )
        if logits is None:
            for attn, mlp in zip(self.attn, self.mlp, strict=True):
                x = mlp(attn(x, positions, rope, caches))
            logits = self.head(x)
        for i, cache in enumerate(caches):
            cache.advance(positions[i : i + 1])
        return logits

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE's (cos, sin) at `positions`, the tables made at the first use (on the model's
        device, known once the weights are loaded)."""
        if self.rotary is None:
            self.rotary = Rotary(self.config, self.device)
        return self.rotary.cos_sin(positions, dtype)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states [T, H] of tokens [T], on the model's device."""
        return F.embedding(tokens.to(self.embedding.device), self.embedding).to(self.device)

    def layers_forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        last_only: bool = False,
        logits: bool = True,
    ) -> torch.Tensor | None:
        """Logits for hidden states x [T, H] at `positions` [T]: every layer, then the head
        (None without `logits`). Writes the new keys and values but leaves the cache's
        bookkeeping to the caller; tensor work only, so a CUDA graph can capture it (see
        `engine/graphs.py`)."""
        rope = self.cos_sin(positions, x.dtype)  # the same for every layer
        if x.shape[0] == 1 and self.fused_step is not None:
            fused = self.fused_step(self, x, positions, rope, [cache])
            if fused is not None:
                return fused
        for attn, mlp in zip(self.attn, self.mlp, strict=True):
            x = attn(x, positions, rope, cache)
            x = mlp(x)
        if not logits:
            return None
        return self.head(x[-1:] if last_only else x)

    def head(self, x: torch.Tensor, each_alone: bool = False) -> torch.Tensor:
        """Logits (float32) of hidden states x [T, H] after the last layer; `each_alone`: each
        row normed on its own (rows of several sequences, as each would be alone)."""
        eps = self.config.rms_norm_eps
        if each_alone:
            x = torch.cat([rms_norm(row, self.norm, eps) for row in x.split(1)])
        else:
            x = rms_norm(x, self.norm, eps)
        return self.linear(x, self.unembedding).float()
