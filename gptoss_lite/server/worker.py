"""The generation thread and the FIFO queue in front of it: requests decoded together.

The runner decodes up to `parallel` sequences together, one per KV cache (`engine.batch.Batch`,
from `runner.batch()`). `GenerationQueue.submit` puts a `Job` (prompt ids, sampling, stop tokens,
the grammar its tokens are held to) at the back of the queue, or raises `QueueFull` when
`max_waiting` jobs already wait for a free slot (`Closed` once the server shuts down). One worker
thread owns the batch. Before each step it ends the jobs cancelled since the last (their
sequences leave; the others go on) and moves jobs from the front of the queue into the free
slots (a request joins the running ones at the next step); then it runs one step and hands each
new token to its job's asyncio queue on the server's event loop. A job lands on the slot that
holds the longest prefix of its prompt (`Batch.add`), so a client resending its history prefills
only the new turn.

Every job ends with exactly one `Done` or `Failed` event, whatever happens to it: `Job.cancel()`
(a client gone, a stop string seen) ends a waiting job at once (`Done("interrupted")`, nothing
generated) and stops a running one before the next step. `close(refusal)` (shutdown) refuses
new jobs, ends every waiting one with `Failed(refusal)` and stops the running ones;
`Job.begun()` returns once the worker has taken the job into a slot or it has ended, so a
handler can wait to start its response until the job runs. A sequence whose logits break (NaN)
fails alone; a step that raises fails every running job, and the batch starts afresh.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from ..chat.stats import ReplyStats
from ..engine.batch import Request
from ..engine.batch import Sequence as Running
from ..engine.grammar import Grammar, GrammarMask
from ..engine.logprobs import TokenLogprob
from ..engine.runner import Runner
from ..engine.sampling import Sampling


class QueueFull(Exception):
    """`max_waiting` jobs are already waiting for a slot."""


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
    grammar: Grammar | None = None  # every token held to it
    prefix: Sequence[int] = ()  # the end of the prompt that is the reply's start
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    _events: asyncio.Queue = field(default_factory=asyncio.Queue)
    _begun: asyncio.Event = field(default_factory=asyncio.Event)
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _queue: GenerationQueue | None = None  # the queue it was submitted to
    _sent: int = 0  # tokens handed to the event loop
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
    """A FIFO of jobs in front of a worker thread that decodes up to `parallel` together."""

    def __init__(self, runner: Runner, max_waiting: int) -> None:
        self.runner = runner
        self.max_waiting = max_waiting
        self.parallel = len(runner.caches)
        self._batch = runner.batch()
        self._waiting: deque[Job] = deque()
        self._running: dict[Job, Running] = {}
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="gptoss-lite-generate", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise `QueueFull` (or `Closed`)."""
        with self._lock:
            if self._closed:
                raise Closed
            if len(self._waiting) + len(self._running) >= self.max_waiting + self.parallel:
                raise QueueFull
            job._queue = self
            self._waiting.append(job)
            self._lock.notify()

    def counts(self) -> tuple[int, int]:
        """(jobs running, jobs waiting)."""
        with self._lock:
            return len(self._running), len(self._waiting)

    def close(self, refusal: BaseException) -> None:
        """Take no more jobs, end the waiting ones with `Failed(refusal)` and stop the running
        ones before the next step; returns at once (`join` waits for the worker)."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            for job in self._running:
                job._cancelled.set()
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
                while not self._waiting and not self._running and not self._closed:
                    self._lock.wait()
                if self._closed and not self._running:
                    return
                while self._waiting and len(self._running) < self.parallel:
                    self._start(self._waiting.popleft())
            for job, sequence in list(self._running.items()):
                if job.cancelled:
                    self._batch.cancel(sequence)
                    self._end(job, sequence)
            if self._running:
                self._step()

    def _start(self, job: Job) -> None:
        """Give `job` a slot (under the lock: it moves from waiting to running at once)."""
        try:
            mask = None
            if job.grammar is not None:
                mask = GrammarMask(job.grammar, job.prefix, self.runner.device)
            request = Request(tuple(job.prompt), job.sampling, frozenset(job.stop), mask)
            self._running[job] = self._batch.add(request)
        except Exception as exc:  # reported to its client; the worker goes on
            job._emit(Failed(exc))
        job._begin()

    def _step(self) -> None:
        try:
            changed = self._batch.step()
        except Exception as exc:  # every running job gets the error; a fresh batch goes on
            with self._lock:
                failed, self._running = list(self._running), {}
            for job in failed:
                job._emit(Failed(exc))
            self._batch = self.runner.batch()
            return
        jobs = {sequence: job for job, sequence in self._running.items()}
        for sequence in changed:
            job = jobs[sequence]
            for i in range(job._sent, len(sequence.output)):  # one token a step, or none
                logprob = None if sequence.logprobs is None else sequence.logprobs[i]
                job._emit(Token(sequence.output[i], logprob))
            job._sent = len(sequence.output)
            if sequence.finished:
                self._end(job, sequence)

    def _end(self, job: Job, sequence: Running) -> None:
        with self._lock:
            del self._running[job]
        if sequence.error is not None:
            job._emit(Failed(sequence.error))
        else:
            job._emit(Done(sequence.finish_reason, sequence.stats))
