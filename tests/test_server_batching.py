"""Continuous batching through HTTP: concurrent requests decode together, each exactly as alone.

The `tiny` model (full o200k vocabulary) is served with four sequences on the compiled CPU
kernels (exact mode: a decode row's bits do not depend on the rows beside it). Every request is
sent alone first, then with others that join and leave at other steps, through the `openai`
client; its tokens must be the same. The prompts share no first token, so no request reuses
another's cached prefix and each one's arithmetic is the same alone or not. Each step is slowed
a little (`SLOW_STEP_S`, time only) so that requests sent while others stream do overlap, which
the steps' batch sizes confirm. The queue, cancellation and `/health` use the scripted model.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from gptoss_lite.engine.batch import Batch
from gptoss_lite.engine.runner import load
from gptoss_lite.server.service import Service

pytest_plugins = ["cli_fixtures", "server_fixtures"]

WAIT_S = 60.0
SLOW_STEP_S = 0.02  # a tiny-model step takes ~ms: requests sent mid-stream must find it running
PROMPTS = [  # lengths 3 to ~140 tokens; the longest spans several prefill steps (64 tokens)
    "Once upon a time",
    "Seven quiet rivers ran past the old mill, and the miller counted them twice",
    "Bright colours " + "and shapes " * 60,
    "Zebras are striped",
]


@pytest.fixture(scope="module")
def runner(tiny_model):
    return load(tiny_model, device="cpu", context=256, parallel=4, kernels="cpu")


@pytest.fixture(scope="module")
def served(runner, o200k_tokenizer, serve_module):
    url = serve_module(Service(runner, o200k_tokenizer, "tiny", max_queue=4))
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=WAIT_S)


@pytest.fixture
def steps(monkeypatch):
    """The number of sequences of every batch step, each step slowed by SLOW_STEP_S."""
    sizes: list[int] = []
    real = Batch.step

    def slowed(batch):
        sizes.append(len(batch.running))
        time.sleep(SLOW_STEP_S)
        return real(batch)

    monkeypatch.setattr(Batch, "step", slowed)
    return sizes


def _stream(client, prompt: str, max_tokens: int, started: threading.Event | None = None, **kw):
    """A streamed completion's text pieces and finish reason; `started` is set after the third
    piece, for the next request to join then."""
    pieces, finish = [], None
    stream = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=max_tokens, stream=True, **kw
    )
    for chunk in stream:
        choice = chunk.choices[0]
        pieces.append(choice.text)
        finish = choice.finish_reason or finish
        if started is not None and len(pieces) == 3:
            started.set()
    return pieces, finish


def _staggered(client, requests: list[tuple[str, int, dict]]) -> list:
    """Send the requests each once the one before has streamed three pieces; their results."""
    results: list = [None] * len(requests)
    threads, gates = [], [threading.Event() for _ in requests]
    for i, (prompt, max_tokens, kw) in enumerate(requests):

        def run(i=i, prompt=prompt, max_tokens=max_tokens, kw=kw):
            results[i] = _stream(client, prompt, max_tokens, gates[i], **kw)
            gates[i].set()  # a reply shorter than three pieces lets the next go too

        threads.append(threading.Thread(target=run))
        threads[-1].start()
        assert gates[i].wait(WAIT_S), f"request {i} never streamed"
    for thread in threads:
        thread.join(WAIT_S)
    return results


@pytest.mark.parametrize("n", [2, 3, 4])
def test_concurrent_greedy_streams_get_their_tokens_alone(served, steps, n):
    """n streams of different prompt lengths join at different steps and leave at different
    steps (their lengths differ); each gets exactly the text it gets alone."""
    requests = [(PROMPTS[i], 40 - 6 * i, {"temperature": 0}) for i in range(n)]
    alone = [_stream(served, *r[:2], **r[2]) for r in requests]
    assert len({"".join(pieces) for pieces, _ in alone}) == n  # different replies to tell apart
    steps.clear()
    together = _staggered(served, requests)
    assert together == alone
    assert max(steps) == n  # all n decoded together at some step
    assert steps.index(n) > 0 and steps[-1] < n  # they joined at other steps, then left


def test_a_seeded_sampled_stream_is_the_same_batched(served, steps):
    requests = [
        (PROMPTS[1], 20, {"temperature": 1.0, "seed": 5, "top_p": 0.9}),
        (PROMPTS[0], 25, {"temperature": 0}),
        (PROMPTS[3], 15, {"temperature": 0.7, "seed": 9}),
    ]
    alone = [_stream(served, *r[:2], **r[2]) for r in requests]
    steps.clear()
    assert _staggered(served, requests) == alone
    assert max(steps) == 3


def test_a_stream_that_leaves_frees_its_slot_and_the_others_go_on(served, runner, steps):
    kept = (PROMPTS[0], 30, {"temperature": 0})
    alone = _stream(served, *kept[:2], **kept[2])
    steps.clear()
    results, started = [None], threading.Event()
    thread = threading.Thread(
        target=lambda: results.__setitem__(0, _stream(served, *kept[:2], started, **kept[2]))
    )
    thread.start()
    assert started.wait(WAIT_S)
    base = str(served.base_url)
    body = {"model": "tiny", "prompt": PROMPTS[3], "max_tokens": 200, "stream": True}
    http = httpx.Client(base_url=base, timeout=WAIT_S)
    with http, http.stream("POST", "completions", json=body) as stream:
        lines = stream.iter_lines()
        for _ in range(4):
            next(lines)  # it streams beside the other, then its client leaves
    thread.join(WAIT_S)
    assert results[0] == alone
    assert max(steps) == 2 and len(steps) < 30 + 100  # the one that left stopped early
    health = httpx.get(base.removesuffix("/v1/") + "/health").json()["queue"]
    assert health["parallel"] == 4 and health["waiting"] == 0


def test_a_request_longer_than_a_sequences_share_is_a_400_with_the_numbers(served, runner):
    assert runner.context == 256  # each of the four sequences' share
    with pytest.raises(openai.BadRequestError) as caught:
        served.completions.create(model="tiny", prompt="word " * 300, max_tokens=4)
    error = caught.value.body
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert error["message"].endswith("but the context holds 256; use a larger --context or a "
                                     "shorter prompt")  # fmt: skip


# ------------------------------------------------------------------ the queue, scripted


def test_health_counts_running_and_waiting_and_the_queue_bound(scripted_service, serve_http):
    """Two slots and one place in the queue: a request joins a running one at the next step,
    a third waits for a slot, a fourth is refused; all three finish."""
    service = scripted_service("<|channel|>final<|message|>" + "la " * 100, parallel=2,
                               max_queue=1)  # fmt: skip
    service.runner.pause_s = 0.02  # per step: the first request still runs when the rest come
    base = serve_http(service)
    chat = {"model": "gpt-oss-test", "messages": [{"role": "user", "content": "Hi"}]}
    body = {**chat, "max_tokens": 60}
    results: list[httpx.Response] = []

    def ask() -> None:
        results.append(httpx.post(f"{base}/v1/chat/completions", json=body, timeout=WAIT_S))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread, counts in zip(threads, [(1, 0), (2, 0), (2, 1)], strict=True):
        thread.start()
        _wait(lambda counts=counts: service.queue.counts() == counts)
    queue = httpx.get(f"{base}/health").json()["queue"]
    assert queue == {"running": 2, "waiting": 1, "max_waiting": 1, "parallel": 2}
    refused = httpx.post(f"{base}/v1/chat/completions", json=chat, timeout=WAIT_S)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full"
    for thread in threads:
        thread.join(WAIT_S)
    assert [r.status_code for r in results] == [200] * 3
    assert [r.json()["usage"]["completion_tokens"] for r in results] == [60] * 3


def _wait(done) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_shutdown_interrupts_every_running_stream_and_refuses_the_queued(
    scripted_service, serve_http
):
    service = scripted_service("<|channel|>final<|message|>" + "la " * 500, parallel=2)
    service.runner.pause_s = 0.01
    base = serve_http(service)
    body = {"model": "gpt-oss-test", "messages": [{"role": "user", "content": "Hi"}]}
    finishes: list[str | None] = []

    def stream() -> None:
        with httpx.stream("POST", f"{base}/v1/chat/completions", json={**body, "stream": True},
                          timeout=WAIT_S) as response:  # fmt: skip
            data = [line[6:] for line in response.iter_lines() if line.startswith("data: {")]
        finishes.append(json.loads(data[-1])["choices"][0]["finish_reason"])

    threads = [threading.Thread(target=stream) for _ in range(2)]
    for thread in threads:
        thread.start()
    _wait(lambda: service.queue.counts() == (2, 0))
    queued = []
    waiter = threading.Thread(
        target=lambda: queued.append(
            httpx.post(f"{base}/v1/chat/completions", json=body, timeout=WAIT_S)
        )
    )
    waiter.start()
    _wait(lambda: service.queue.counts() == (2, 1))
    service.shutdown()
    for thread in [*threads, waiter]:
        thread.join(WAIT_S)
    assert finishes == ["interrupted", "interrupted"]
    assert queued[0].status_code == 503
    assert queued[0].json()["error"]["code"] == "server_shutting_down"
    assert service.runner.yielded < 2 * 500
