"""CUDA-graph decoding: the graph's shapes (whole KV buffers masked by position) give the same
logits as the ordinary step, on CPU; the captured graph replays that step exactly, on a GPU."""

from __future__ import annotations

import pytest
import torch

import gptoss_lite
from gptoss_lite.engine.graphs import GraphedDecodeStep
from gptoss_lite.errors import GptossError

CUDA = torch.cuda.is_available()


def _decode(runner, prompt, steps, step=None):
    """Logits [steps, V] of greedy decoding after `prompt`, one step at a time."""
    step = step or (lambda token: runner.model(token, runner.cache, last_only=True))
    token = runner.logits(prompt)[-1].argmax().view(1)
    out = []
    for _ in range(steps):
        logits = step(token.to(runner.device))[-1].float().cpu()
        out.append(logits)
        token = logits.argmax().view(1)
    return torch.stack(out)


def test_whole_buffers_give_the_same_logits(checkpoint):
    """Full layers over every slot of their buffer (future slots masked by position) vs over the
    filled prefix: extra keys add exact zeros to the softmax sums, so only the matmuls' longer
    reductions may round differently (fp32: ~1e-6 relative)."""
    folder = checkpoint("g1")
    prompt, steps = list(range(3, 13)), 12  # past the window (8) on the sliding layers
    ref = _decode(
        gptoss_lite.load(folder, device="cpu", dtype=torch.float32, context=64), prompt, steps
    )
    runner = gptoss_lite.load(folder, device="cpu", dtype=torch.float32, context=64)
    runner.cache.use_whole_buffers()
    got = _decode(runner, prompt, steps)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_graphs_need_the_triton_kernels_on_cuda(checkpoint):
    runner = gptoss_lite.load(checkpoint("g1"), device="cpu", dtype=torch.float32, context=64)
    with pytest.raises(GptossError, match="needs the Triton kernels on a CUDA device"):
        GraphedDecodeStep(runner.model, runner.cache)


def test_graphs_refuse_experts_in_host_ram(checkpoint):
    runner = gptoss_lite.load(
        checkpoint("g1"), device="cpu", dtype=torch.float32, context=64, cpu_experts=1
    )
    assert runner.model.host_experts == 1
    with pytest.raises(GptossError) as err:
        GraphedDecodeStep(runner.model, runner.cache)
    assert str(err.value) == (
        "CUDA-graph decoding needs every layer's experts on the GPU; "
        "drop --cpu-experts or --cuda-graph"
    )


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_graph_replays_the_step_exactly_gpu(checkpoint):
    """The same kernels on the same buffers, replayed: bit-identical logits to the eager step."""
    folder = checkpoint("g1")
    prompt, steps = list(range(3, 13)), 12

    def runner():
        return gptoss_lite.load(folder, device="cuda", context=64, profile="h200", kernels="triton")

    eager = runner()
    eager.cache.use_whole_buffers()
    ref = _decode(eager, prompt, steps)
    graphed = runner()
    got = _decode(graphed, prompt, steps, GraphedDecodeStep(graphed.model, graphed.cache))
    assert torch.equal(got, ref)
