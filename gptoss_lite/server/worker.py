"""The one generation thread and the FIFO queue in front of it.

The runner holds one KV cache, so requests take turns: `GenerationQueue.submit` puts a `Job`
(prompt ids, sampling, stop tokens) at the back of the queue, or raises `QueueFull` when
`max_waiting` jobs already wait behind the one running (`Closed` once the server shuts down). A
single worker thread takes jobs from the front and runs each through `engine.session.Generation`,
so the runner's prefix reuse applies across requests (a client resending its history prefills
only the new turn). Every token is handed to the job's asyncio queue on the server's event loop
as it is made.

Every job ends with exactly one `Done` or `Failed` event, whatever happens to it: `Job.cancel()`
(a client gone, a stop string seen) ends a waiting job at once (`Done("interrupted")`, nothing
generated) and stops a running one before its next decode step. `close(refusal)` (shutdown)
refuses new jobs, ends every waiting one with `Failed(refusal)` and stops the running one;
`Job.begun()` returns once the worker has taken the job or it has ended, so a handler can wait
to start its response until the job runs.

Batching later: the submission side (`submit`, a job's `events()`, `begun()`, `cancel()`) does
not depend on one job running at a time. A batching worker would take up to B jobs from the front
of `_waiting`, run one forward pass over their current tokens with a per-row cache, and route row
i's token to job i's events; a finished or cancelled row leaves the batch and ends its job.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from ..chat.stats import ReplyStats
from ..engine.logprobs import TokenLogprob
from ..engine.runner import Runner
from ..engine.sampling import Sampling
from ..engine.session import Generation


class QueueFull(Exception):
    """`max_waiting` jobs are already waiting."""


class Closed(Exception):
    """The queue takes no more jobs: the server is shutting down."""


@dataclass(frozen=True)
class Token:
    """One generated token id, with its log-probabilities when the job's sampling asks."""

    id: int
    logprob: TokenLogprob | None = None


@dataclass(frozen=True)
class Done:
    """The generation ended: "stop", "length" or "interrupted" (cancelled), with its numbers."""

    finish_reason: str
    stats: ReplyStats


@dataclass(frozen=True)
class Failed:
    """The generation raised `error`, or the job was refused before it ran."""

    error: BaseException


@dataclass(eq=False)
class Job:
    """One request's generation; its events arrive on the event loop that created it."""

    prompt: list[int]
    sampling: Sampling
    stop: Sequence[int]
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    _events: asyncio.Queue = field(default_factory=asyncio.Queue)
    _begun: asyncio.Event = field(default_factory=asyncio.Event)
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _queue: GenerationQueue | None = None  # the queue it was submitted to
    refusal: BaseException | None = None  # why the queue ended it before it ran

    def cancel(self) -> None:
        """Stop generating, ending the job at once if it still waits (safe from any thread,
        any number of times)."""
        self._cancelled.set()
        if self._queue is not None:
            self._queue._drop(self)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def begun(self) -> None:
        """Return once the worker has taken the job, or the job ended before that."""
        await self._begun.wait()

    async def events(self) -> AsyncIterator[Token | Done | Failed]:
        """The job's tokens, then one `Done` or `Failed`."""
        while True:
            event = await self._events.get()
            yield event
            if not isinstance(event, Token):
                return

    def _emit(self, event: Token | Done | Failed) -> None:
        self._call(self._events.put_nowait, event)

    def _begin(self) -> None:
        self._call(self._begun.set)

    def _call(self, function, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the event loop has closed: nobody listens any more
            self._cancelled.set()


class GenerationQueue:
    """A FIFO of jobs served one at a time by a worker thread that owns the runner."""

    def __init__(self, runner: Runner, max_waiting: int) -> None:
        self.runner = runner
        self.max_waiting = max_waiting
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="gptoss-lite-generate", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise `QueueFull` (or `Closed`)."""
        with self._lock:
            if self._closed:
                raise Closed
            if len(self._waiting) + (self._running is not None) > self.max_waiting:
                raise QueueFull
            job._queue = self
            self._waiting.append(job)
            self._lock.notify()

    def counts(self) -> tuple[int, int]:
        """(jobs running, jobs waiting)."""
        with self._lock:
            return int(self._running is not None), len(self._waiting)

    def close(self, refusal: BaseException) -> None:
        """Take no more jobs, end the waiting ones with `Failed(refusal)` and stop the running
        one before its next step; returns at once (`join` waits for the worker)."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            if self._running is not None:
                self._running._cancelled.set()
            self._lock.notify()
        for job in waiting:
            job.refusal = refusal
            job._emit(Failed(refusal))
            job._begin()

    def join(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for the worker to stop, after `close`."""
        self._thread.join(timeout)

    def _drop(self, job: Job) -> None:
        """End `job` now if it is still waiting (it was cancelled)."""
        with self._lock:
            if job not in self._waiting:
                return
            self._waiting.remove(job)
        job._emit(Done("interrupted", ReplyStats(prompt_tokens=len(job.prompt))))
        job._begin()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._running = self._waiting.popleft()
            try:
                job._begin()
                self._run(job)
            finally:
                with self._lock:
                    self._running = None

    def _run(self, job: Job) -> None:
        try:
            generation = Generation(self.runner, job.prompt, job.sampling, job.stop)
        except Exception as exc:  # reported to its client; the worker goes on
            job._emit(Failed(exc))
            return
        tokens = iter(generation)
        try:
            while not job.cancelled:
                token = next(tokens, None)
                if token is None:
                    break
                logprob = None if generation.logprobs is None else generation.logprobs[-1]
                job._emit(Token(token, logprob))
        except Exception as exc:
            job._emit(Failed(exc))
            return
        finally:
            generation.close()
        job._emit(Done(generation.finish_reason, generation.stats))
