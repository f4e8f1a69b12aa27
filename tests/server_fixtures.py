"""Pytest plugin for the server tests: a real uvicorn server on 127.0.0.1 and a scripted model.

`running(service, limits)` starts the server `serve` runs (`make_server`) on a free port of
127.0.0.1 in a thread and yields its base URL; leaving the block shuts it down (bounded waits
only). `ScriptedRunner` stands in for a `Runner`: each `generate` call records its prompt and
sampling and yields the tokens of a harmony completion (written as text with markup, tokenized
with the real o200k vocabulary) up to the first stop token or `max_new_tokens`, optionally
waiting on a gate before the first token or pausing after each one, so a test can hold the
queue; its `batch()` (what the server's worker drives) runs each request through `generate`,
a token per sequence a step. `scripted_service` builds a `Service` around one; `serve_http`
serves a service for one test, `serve_module` for one module (a real model loaded once); `serve`
gives the `openai` client of a scripted server.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace

import openai
import pytest
import torch

from gptoss_lite.chat.stats import ReplyStats
from gptoss_lite.config import ModelConfig, preset
from gptoss_lite.engine.batch import Request
from gptoss_lite.engine.generate import check_fits
from gptoss_lite.engine.sampling import Sampling
from gptoss_lite.server.http_server import make_server
from gptoss_lite.server.limits import Limits
from gptoss_lite.server.service import Service

STARTUP_S = 10.0  # the longest a test waits for the server to listen or to stop


@contextmanager
def running(service: Service, limits: Limits | None = None) -> Iterator[str]:
    """The service's app served on 127.0.0.1 (a free port) inside the block; its base URL."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    port = listener.getsockname()[1]
    server = make_server(service, limits)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_S
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STARTUP_S)
        listener.close()


class ScriptedRunner:
    """Looks like a `Runner` to the server; generates a fixed harmony completion."""

    def __init__(
        self,
        tokenizer,
        context: int = 4096,
        config: ModelConfig | None = None,
        parallel: int = 1,
    ) -> None:
        self.tokenizer = tokenizer
        self.context = context
        self.config = config or preset("tiny")
        self.prefilled = 0
        self.device = torch.device("cpu")  # where a grammar's masks would go (it takes none)
        self.caches = [None] * parallel  # sequences at once, as a runner loaded with parallel
        self.prompts: list[list[int]] = []
        self.reply: list[int] = []
        self.gate: threading.Event | None = None  # the first token waits for it when set
        self.pause_s = 0.0  # after each token
        self.yielded = 0  # tokens handed out, across calls
        self.sampling: list[dict] = []  # the sampling settings of each call

    def script(self, text: str) -> None:
        """Reply with `text` (harmony markup allowed) from now on."""
        self.reply = self.tokenizer.encode(text, allow_special=True)

    def generate(
        self, token_ids, sampling: Sampling, *, stop=(), observe=None, mask=None
    ) -> Iterator[int]:
        """The scripted reply, whatever a grammar's `mask` would allow."""
        self.prompts.append(list(token_ids))
        self.sampling.append(asdict(sampling))
        self.prefilled = len(self.prompts[-1])
        if self.gate is not None:
            assert self.gate.wait(STARTUP_S), "the test never opened the gate"
        for token in self.reply[: sampling.max_new_tokens]:
            self.yielded += 1
            yield token
            if token in stop:
                return
            time.sleep(self.pause_s)

    def batch(self) -> ScriptedBatch:
        return ScriptedBatch(self)


class ScriptedSequence:
    """What the worker reads of an `engine.batch.Sequence`, fed by a `generate` iterator."""

    def __init__(self, request: Request, tokens: Iterator[int], most: int) -> None:
        self.request, self.tokens, self.max_new_tokens = request, tokens, most
        self.output: list[int] = []
        self.finish_reason: str | None = None
        self.error = self.logprobs = None
        self.stats = ReplyStats(prompt_tokens=len(request.prompt))

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class ScriptedBatch:
    """`engine.batch.Batch` as the worker uses it, over `ScriptedRunner.generate`: a step takes
    the next token of every running sequence (a gate or a pause holds the whole step, as a
    forward pass would); a `generate` that ends without a stop token or the limit is
    "interrupted", and one that raises fails the step."""

    def __init__(self, runner: ScriptedRunner) -> None:
        self.runner, self.running = runner, []

    def add(self, request: Request) -> ScriptedSequence:
        most = check_fits(len(request.prompt), request.sampling.max_new_tokens, self.runner.context)
        sampling = replace(request.sampling, max_new_tokens=most)
        tokens = self.runner.generate(
            list(request.prompt), sampling, stop=tuple(request.stop), mask=request.mask
        )
        self.running.append(ScriptedSequence(request, tokens, most))
        return self.running[-1]

    def cancel(self, sequence: ScriptedSequence) -> None:
        if sequence in self.running:
            sequence.finish_reason = "interrupted"
            self.running.remove(sequence)

    def step(self) -> list[ScriptedSequence]:
        for sequence in self.running:
            token = next(sequence.tokens, None)
            if token is None:
                sequence.finish_reason = "interrupted"
                continue
            sequence.output.append(token)
            sequence.stats.generated_tokens += 1
            if token in sequence.request.stop:
                sequence.finish_reason = "stop"
            elif len(sequence.output) == sequence.max_new_tokens:
                sequence.finish_reason = "length"
        changed, self.running = self.running, [s for s in self.running if not s.finished]
        return changed


@pytest.fixture
def serve_http() -> Iterator[Callable[..., str]]:
    """`serve_http(service, limits=None)` → the base URL of `service`, served until the test
    ends."""
    contexts = []

    def start(service: Service, limits: Limits | None = None) -> str:
        contexts.append(running(service, limits))
        return contexts[-1].__enter__()

    yield start
    for context in reversed(contexts):
        context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def serve_module() -> Iterator[Callable[[Service], str]]:
    """`serve_module(service)` → its base URL, served (then closed) until the module ends: for
    a real model loaded once per module."""
    contexts = []

    def start(service: Service) -> str:
        contexts.append((running(service), service))
        return contexts[-1][0].__enter__()

    yield start
    for context, service in reversed(contexts):
        context.__exit__(None, None, None)
        service.close()


@pytest.fixture
def serve(scripted_service, serve_http):
    """`serve(text, **options)` → (openai client, service) on a running scripted server."""

    def start(text: str, **options):
        service = scripted_service(text, **options)
        url = serve_http(service)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=20)
        return client, service

    return start


@pytest.fixture
def scripted_service(o200k_tokenizer) -> Iterator[Callable[..., Service]]:
    """`scripted_service(text, context=4096, parallel=1, **service_options)` → a `Service` whose
    runner (`service.runner`, a `ScriptedRunner`) replies `text`; stopped after the test."""
    made: list[Service] = []

    def make(text: str = "", context: int = 4096, parallel: int = 1, **options) -> Service:
        runner = ScriptedRunner(o200k_tokenizer, context, parallel=parallel)
        runner.script(text)
        made.append(Service(runner, o200k_tokenizer, "gpt-oss-test", **options))
        return made[-1]

    yield make
    for service in made:
        service.close()
