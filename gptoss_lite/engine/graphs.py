"""The one-token decode step captured in a CUDA graph: one replay a token instead of ~10 kernel
launches a layer from Python. NOT YET RUN ON A GPU (tests/test_graphs.py holds its GPU test).

A graph replays fixed kernels on fixed buffers, so the step must have the same shapes and no
host-side values at every token: the token's hidden state and its position sit in static
device tensors refilled before each replay; full-attention layers attend over their whole
static KV buffer, masked by position (`KVCache.use_whole_buffers`), and sliding layers over their
ring plus the new key; the Triton MoE decode path never syncs with the host, and no layer may
keep its experts there (`--cpu-experts` copies activations to the host and back). The embedding
lookup stays outside the graph (the table may live in host RAM), and so does the cache's
length, counted in Python after each replay. The first call warms the step up on a side stream
(compiling the Triton kernels) and captures it; both run the same token at the same position,
so they write exactly what the replay writes again.
"""

from __future__ import annotations

import torch

from ..errors import GptossError
from ..model.cache import KVCache
from ..model.transformer import Transformer


class GraphedDecodeStep:
    """`step(token)` = `model(token, cache, last_only=True)` for one token [1], as a graph."""

    def __init__(self, model: Transformer, cache: KVCache):
        if model.host_experts:
            raise GptossError(
                "CUDA-graph decoding needs every layer's experts on the GPU; "
                "drop --cpu-experts or --cuda-graph"
            )
        if model.device.type != "cuda" or model.kernels != "triton":
            raise GptossError("CUDA-graph decoding needs the Triton kernels on a CUDA device")
        self.model, self.cache = model, cache
        cache.use_whole_buffers()
        self.x = torch.zeros(1, model.config.hidden_size, dtype=model.dtype, device=model.device)
        self.position = torch.zeros(1, dtype=torch.long, device=model.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # [1, V], overwritten by every replay

    @torch.inference_mode()
    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """Logits [1, V] for `token` at the cache's next position; advances the cache. The
        tensor is the graph's output buffer: read it before the next call."""
        self.cache.reserve(1)
        self.x.copy_(self.model.embed(token.view(1)))
        self.position.fill_(self.cache.length)  # a fill kernel: no host sync
        if self.graph is None:
            self._capture()
        self.graph.replay()
        self.cache.length += 1
        return self.logits

    def _step(self) -> torch.Tensor:
        logits = self.model.layers_forward(self.x, self.position, self.cache, last_only=True)
        self.cache.record_ring(self.position)
        return logits

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()
