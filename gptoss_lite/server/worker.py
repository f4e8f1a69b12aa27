"""The one generation thread and the FIFO queue in front of it.

The runner holds one KV cache, so requests take turns: `GenerationQueue.submit` puts a `Job`
(prompt ids, sampling, stop tokens) at the back of the queue, or raises `QueueFull` when
`max_waiting` jobs already wait behind the one running. A single worker thread takes jobs from
the front and runs each through `engine.session.Generation`, so the runner's prefix reuse applies
across requests (a client resending its history prefills only the new turn). Every token is
handed to the job's asyncio queue on the server's event loop as it is made; `Job.cancel()` (a
client gone, a stop string seen) stops the generation before the next decode step, and a job
cancelled while it waits is skipped.

Batching later: the submission side (`submit`, a job's `events()`) does not depend on one job
running at a time. A batching worker would take up to B jobs from the front of `_waiting`, run
one forward pass over their current tokens with a per-row cache, and route row i's token to job
i's events; a finished or cancelled row leaves the batch and the next waiting job joins it.
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
    """The generation raised `error`."""

    error: BaseException


@dataclass(eq=False)
class Job:
    """One request's generation; its events arrive on the event loop that created it."""

    prompt: list[int]
    sampling: Sampling
    stop: Sequence[int]
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    _events: asyncio.Queue = field(default_factory=asyncio.Queue)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop generating (safe from any thread, any number of times)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def events(self) -> AsyncIterator[Token | Done | Failed]:
        """The job's tokens, then one `Done` or `Failed`."""
        while True:
            event = await self._events.get()
            yield event
            if not isinstance(event, Token):
                return

    def _emit(self, event: Token | Done | Failed) -> None:
        try:
            self.loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the event loop has closed: nobody listens any more
            self.cancel()


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
        """Queue `job`, or raise `QueueFull`."""
        with self._lock:
            self._waiting = deque(j for j in self._waiting if not j.cancelled)
            busy = len(self._waiting) + (self._running is not None)
            if self._closed or busy > self.max_waiting:
                raise QueueFull
            self._waiting.append(job)
            self._lock.notify()

    def counts(self) -> tuple[int, int]:
        """(jobs running, jobs waiting)."""
        with self._lock:
            return int(self._running is not None), len(self._waiting)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every job and stop the worker (waiting at most `timeout` seconds for it)."""
        with self._lock:
            self._closed = True
            for job in [*self._waiting, *([self._running] if self._running else [])]:
                job.cancel()
            self._lock.notify()
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._running = self._waiting.popleft()
            try:
                if not job.cancelled:
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
