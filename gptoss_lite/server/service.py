"""The state one server shares between its endpoints: the model, its queue, and request checks.

`Service` holds the runner (through its `GenerationQueue`), the tokenizer, the model's names and
the API key. The model answers to its id (a Hub id or a folder's name, also without the part
before a "/") and, when its geometry is a published one, to Ollama's name for it ("gpt-oss:20b",
"gpt-oss:120b"), which `codex --oss` asks for. An endpoint makes its request ready off the event
loop (`off_loop`: rendering and tokenizing take time) as a `Prepared` (prompt, sampling, the
`chat.reply.Reply` to read the output into), asking the service to check the model name, the
size of the text before it is tokenized (`check_text`) and the prompt and `max_tokens` against
the context (`sampling`: a 400 with the numbers). Then it queues the job (`submit`: 503 with
Retry-After when the queue is full, 503 once shutting down), waits for it to start before
answering a stream (`begin`: a job refused at shutdown is a 503, not a broken stream) and runs it
into the reply (`changes`, `collect`), cancelling it when a stop string ends the visible text or
the client goes away (`watch_disconnect`). `shutdown()` (the first signal) ends every job at
once; `close()` also waits for the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from starlette.requests import Request

from ..chat.reply import Change, Reply
from ..chat.tokenizer import Tokenizer
from ..chat.tokens import STOP_TOKENS
from ..config import ModelConfig, preset
from ..engine.generate import check_fits
from ..engine.grammar import Grammar
from ..engine.runner import Runner
from ..engine.sampling import Sampling
from ..errors import GptossError
from .errors import ApiError, internal_error, shown
from .worker import Closed, Done, Failed, GenerationQueue, Job, QueueFull, Token

OLLAMA_NAMES = {"gpt-oss-20b": "gpt-oss:20b", "gpt-oss-120b": "gpt-oss:120b"}  # by preset
RETRY_AFTER_S = 1  # what a client told the queue is full waits before trying again
DEFAULT_MAX_QUEUE = 16
DONE = "data: [DONE]\n\n"  # the last event of a Chat Completions or Completions stream
CLOSE_WAIT_S = 10.0  # the longest closing waits for the worker to finish a forward pass
P, R = ParamSpec("P"), TypeVar("R")


@dataclass
class Prepared:
    """A request made ready to generate: its prompt, how to sample it, the reply to read the
    tokens into, the tokens that end the generation, and the grammar every token is held to
    (read after `prefix`, the end of the prompt that is the reply's start: a forced call's
    header)."""

    prompt: list[int]
    sampling: Sampling
    reply: Reply
    stop: Sequence[int] = STOP_TOKENS
    grammar: Grammar | None = None
    prefix: Sequence[int] = ()


def shutting_down() -> ApiError:
    """The answer to a request the server will not run because it is shutting down."""
    return ApiError(
        503, "the server is shutting down", type="server_error", code="server_shutting_down"
    )


class Service:
    """One loaded model behind the HTTP API."""

    def __init__(
        self,
        runner: Runner,
        tokenizer: Tokenizer,
        model_id: str,
        *,
        api_key: str | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        self.runner, self.tokenizer = runner, tokenizer
        self.model_id = model_id
        self.names = (model_id, *ollama_aliases(runner.config))
        self.api_key = api_key or None
        self.queue = GenerationQueue(runner, max_queue)
        self.created = int(time.time())

    @property
    def context(self) -> int:
        return self.runner.context

    @property
    def config(self) -> ModelConfig:
        return self.runner.config

    def serves(self, name: str) -> bool:
        """Whether `name` is one of this model's names (or the last part of its id), also with
        Ollama's default tag ":latest"."""
        return name.removesuffix(":latest") in (*self.names, self.model_id.rsplit("/", 1)[-1])

    def check_model(self, name: str) -> None:
        """404 unless `name` is one of this model's names."""
        if not self.serves(name):
            raise ApiError(
                404,
                f"The model {shown(name)} does not exist: this server serves {self.model_id!r}",
                param="model",
                code="model_not_found",
            )

    def check_text(self, size: int, param: str) -> None:
        """A 400 for `size` bytes of text that no prompt within the context can hold (each
        token spells at most `max_token_bytes`), checked before the text is tokenized."""
        most = self.context * self.tokenizer.max_token_bytes
        if size > most:
            raise ApiError(
                400,
                f"{param}: {size:,} bytes of text are more than the context of {self.context:,} "
                f"tokens can hold (at most {most:,} bytes)",
                param=param,
                code="context_length_exceeded",
            )

    def sampling(
        self,
        prompt: list[int],
        *,
        max_tokens: int | None,
        max_param: str,
        prompt_param: str = "messages",
        temperature: float | None,
        top_p: float | None,
        seed: int | None = None,
        top_k: int | None = None,
        logprobs: int | None = None,
    ) -> Sampling:
        """How to sample the reply to `prompt`, which must leave room for `max_tokens`;
        `logprobs` (the alternatives to give each token, or None) asks for log-probabilities."""
        for param, new_tokens in ((prompt_param, None), (max_param, max_tokens)):
            try:
                room = check_fits(len(prompt), new_tokens, self.context)
            except GptossError as exc:
                raise ApiError(400, str(exc), param=param, code="context_length_exceeded") from None
        return Sampling(
            max_new_tokens=room,
            temperature=1.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            top_k=top_k,
            seed=seed,
            logprobs=logprobs,
        )

    def submit(self, prepared: Prepared) -> Job:
        """Queue the generation, or refuse with a 503 when the queue is full or closed."""
        job = Job(
            prepared.prompt,
            prepared.sampling,
            tuple(prepared.stop),
            prepared.grammar,
            tuple(prepared.prefix),
        )
        try:
            self.queue.submit(job)
        except Closed:
            raise shutting_down() from None
        except QueueFull:
            raise ApiError(
                503,
                f"the server is busy: {self.queue.max_waiting} requests are already waiting",
                type="server_error",
                code="queue_full",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        return job

    def shutdown(self) -> None:
        """Refuse new jobs, answer the waiting ones with a 503 and interrupt the running ones."""
        self.queue.close(shutting_down())

    def close(self) -> None:
        """`shutdown`, then wait for the worker to stop."""
        self.shutdown()
        self.queue.join(CLOSE_WAIT_S)


async def off_loop(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`function(*args)` in a worker thread, so the event loop keeps serving meanwhile."""
    return await asyncio.to_thread(function, *args, **kwargs)


async def begin(job: Job, request: Request) -> None:
    """Wait until `job` runs (or its client leaves); a job refused meanwhile raises its 503."""
    async with watch_disconnect(request, job):
        await job.begun()
    if job.refusal is not None:
        raise job.refusal


async def changes(job: Job, reply: Reply) -> AsyncIterator[list[Change] | Done]:
    """Feed the job's tokens to `reply`, yielding what each changed, then the `Done`."""
    async for event in job.events():
        if isinstance(event, Token):
            found = reply.feed(event.id, event.logprob)
            if reply.stopped:
                job.cancel()
            if found:
                yield found
        elif isinstance(event, Done):
            found = reply.finish()
            if found:
                yield found
            yield event
        elif isinstance(event, Failed):
            error = event.error
            raise error if isinstance(error, ApiError) else internal_error(error)


def sse_error(error: ApiError) -> str:
    """The error event that ends a Chat Completions or Completions stream, then `[DONE]`."""
    return sse(error.body()) + DONE


def sse(data: dict, event: str | None = None) -> str:
    """One server-sent event carrying `data` as JSON (never NaN: that is not JSON)."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False, allow_nan=False)}\n\n"


async def guarded(
    events: AsyncIterator[str], job: Job, error_event: Callable[[ApiError], str]
) -> AsyncIterator[str]:
    """`events`, ended by `error_event(error)` instead of a broken stream if they fail; the job
    is cancelled when the stream ends, whether it finished or the client went away."""
    try:
        async for event in events:
            yield event
    except Exception as exc:
        yield error_event(exc if isinstance(exc, ApiError) else internal_error(exc))
    finally:
        job.cancel()


async def collect(job: Job, reply: Reply, request: Request) -> Done:
    """Run the job to its end (or the client's departure) and return its `Done`."""
    try:
        async with watch_disconnect(request, job):
            async for item in changes(job, reply):
                if isinstance(item, Done):
                    return item
    finally:
        job.cancel()
    raise AssertionError("a job's events end with Done or Failed")


@contextlib.asynccontextmanager
async def watch_disconnect(request: Request, job: Job) -> AsyncIterator[None]:
    """Cancel `job` as soon as the client of `request` disconnects during the block."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel()

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()


def ollama_aliases(config: ModelConfig) -> tuple[str, ...]:
    """Ollama's name for a model of a published geometry (any weights: a quantized or
    fine-tuned checkpoint too; its stop tokens may differ), else none."""
    found = [(preset(key), name) for key, name in OLLAMA_NAMES.items()]
    return tuple(name for p, name in found if config.with_(eos_token_ids=p.eos_token_ids) == p)


def model_name(model: str) -> str:
    """The id a model is served as: a Hub id as given, a local folder by its name."""
    path = Path(model)
    return path.resolve().name if path.exists() else model
