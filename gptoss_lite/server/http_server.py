"""The HTTP server around the app: uvicorn, guarded against idle and slow clients, stopped cleanly.

`make_server(service, limits)` builds a uvicorn server on `GuardedH11`, uvicorn's h11 protocol
with three guards: a connection beyond `limits.max_connections` is answered 503 and closed; a
request head that has not all arrived `limits.header_timeout` seconds after the connection opened
(or the last response ended) closes the connection (with a 408 if part of it came); and a client
that half-closes its side after a whole request, before its response starts, is still answered.
Such a client cannot be told from one that left for good until something is written to it, so
until the response starts it is sent interim `102 Processing` lines, which a client that left
answers with a reset: then its request is cancelled like any other whose client went away. Once
a response is under way, the end of the client's side is taken as its departure.

`Server` is uvicorn's server with the shutdown `serve` promises: the first SIGTERM or SIGINT
stops accepting and tells the service to shut down at once (running streams end with
"interrupted" and `[DONE]`, queued requests get a 503, generation stops); `run` then returns and
the command exits 0. A second Ctrl-C forces the exit (`force_exit`; the command exits 130).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import signal
import threading
from collections.abc import Iterator

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import create_app
from .limits import Limits
from .service import Service

GRACE_S = 3  # after a signal, the longest wait for connections to finish before they are cut
PROBES_S = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)  # after a half-close; then every last interval
PROCESSING = b"HTTP/1.1 102 Processing\r\n\r\n"


def _raw_response(status: int, reason: str, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 response with an OpenAI-shaped error, closing the connection."""
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a connection cap, a header timeout and half-close answered."""

    def __init__(self, *args, limits: Limits, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._head_timer: asyncio.TimerHandle | None = None
        self._probes: Iterator[float] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            message = f"the server has {self.limits.max_connections} connections open already"
            transport.write(
                _raw_response(503, "Service Unavailable", message, "too_many_connections")
            )
            transport.close()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a whole request head has arrived
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm_head_timer()  # for the next request's head (pipelined: already there)
        super().on_response_complete()

    def eof_received(self) -> bool | None:
        """The client closed its side: keep ours open to answer a whole request whose response
        has not started (None: close, as for a client that left)."""
        cycle = self.cycle
        if cycle is None or cycle.response_started or self.conn.their_state is not h11.DONE:
            return None
        cycle.keep_alive = False  # the connection closes once the response is sent
        if self.scope.get("http_version") != "1.0":  # 1.0 clients take no interim responses
            self._probes = iter(PROBES_S)
            self._probe()
        return True

    def _probe(self) -> None:
        """While the response has not started, write `102 Processing`: a client that left
        answers it with a reset, and the next write loses the connection."""
        if self.transport.is_closing() or self.cycle is None or self.cycle.response_started:
            return
        self.transport.write(PROCESSING)
        delay = next(self._probes, PROBES_S[-1])
        self.loop.call_later(delay, self._probe)

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timeout)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:  # part of a head came: say why the connection closes
            message = f"the request head did not arrive within {self.limits.header_timeout:g} s"
            self.transport.write(_raw_response(408, "Request Timeout", message, "request_timeout"))
        self.transport.close()


class Server(uvicorn.Server):
    """uvicorn's server, shutting `service` down at the first SIGTERM or SIGINT."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, without raising the signal again once the server has stopped."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.service.shutdown)


def make_server(service: Service, limits: Limits | None = None) -> Server:
    """A server of `service`'s API within `limits` (default: `Limits()`), ready to `run`."""
    limits = limits or Limits()
    config = uvicorn.Config(
        create_app(service, limits),
        http=functools.partial(GuardedH11, limits=limits),
        log_level="warning",
        timeout_graceful_shutdown=GRACE_S,
    )
    return Server(config, service)
