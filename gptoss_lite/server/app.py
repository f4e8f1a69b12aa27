"""The FastAPI application: routes, the bearer-key check and the request-size bound.

`create_app(service)` serves one loaded model: `GET /health` (open to all), and behind the API
key when one is set, `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/responses` and
`POST /v1/completions` (plain text continued, stopping at `<|endoftext|>`), and Ollama's API
under `/api` (ollama_api.py). The key is checked before the body is read, as the UTF-8 bytes the
client sent; a body larger than the context could ever need (`body_limit`) is refused with 413
before it is read, and one that takes longer than `limits.body_timeout` to arrive with 408. A
route answers only at its exact path (no redirect that would echo the Host header). uvicorn runs
the app (`http_server`); parsing, rendering and tokenizing happen in worker threads and
generation in the service's worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..chat.reply import Reply
from . import chat_api, completions_api, responses_api
from .body import read_body
from .errors import ApiError, install_handlers
from .limits import Limits
from .ollama_api import ollama_app
from .service import Service, begin, collect, off_loop
from .store import ResponseStore
from .worker import Done, Job

MAX_BYTES_PER_TOKEN = 64  # a token is a few bytes of text, at most ~6x more once JSON-escaped
BODY_SLACK = 1 << 20  # room for tool schemas and the JSON around the text
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CLOSE = {"Connection": "close"}  # after an unread body: the connection cannot be reused


def body_limit(context: int) -> int:
    """The largest request body accepted for a model with this context, in bytes."""
    return context * MAX_BYTES_PER_TOKEN + BODY_SLACK


def create_app(service: Service, limits: Limits | None = None) -> FastAPI:
    """The HTTP API of `service` within `limits` (default: `Limits()`); closing the app stops
    its worker."""
    limits = limits or Limits()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="gptoss-lite",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.add_middleware(BodyGuard, limit=body_limit(service.context), timeout=limits.body_timeout)
    app.add_middleware(KeyCheck, key=service.api_key)  # outermost: before the body is read
    install_handlers(app)
    store = ResponseStore(limits.store_bytes)
    app.mount("/api", ollama_app(service))

    @app.get("/health")
    async def health() -> dict:
        running, waiting = service.queue.counts()
        queue = {
            "running": running,
            "waiting": waiting,
            "max_waiting": service.queue.max_waiting,
            "parallel": service.queue.parallel,
        }
        return {"status": "ok", "model": service.model_id, "queue": queue}

    @app.get("/v1/models")
    async def models() -> dict:
        model = {
            "id": service.model_id,
            "object": "model",
            "created": service.created,
            "owned_by": "gptoss-lite",
            "context_length": service.context,
        }
        return {"object": "list", "data": [model]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_body(request, chat_api.ChatRequest)
        pending = await off_loop(chat_api.prepare, body, service)
        pending.job = service.submit(pending.prepared)
        return await answer(
            request,
            body.stream,
            pending.job,
            pending.reply,
            lambda: chat_api.stream(pending, service),
            lambda done: chat_api.completion(pending, done, service),
        )

    @app.post("/v1/responses")
    async def responses(request: Request):
        body = await read_body(request, responses_api.ResponsesRequest)
        pending = await off_loop(responses_api.prepare, body, service, store)
        pending.job = service.submit(pending.prepared)
        return await answer(
            request,
            body.stream,
            pending.job,
            pending.reply,
            lambda: responses_api.stream(pending, store),
            lambda done: responses_api.finish(pending, done, store),
        )

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request, completions_api.CompletionRequest)
        prepared = await off_loop(completions_api.prepare, body, service)
        job = service.submit(prepared)
        return await answer(
            request,
            body.stream,
            job,
            prepared.reply,
            lambda: completions_api.stream(body, job, prepared.reply, service),
            lambda done: completions_api.completion(body, prepared.reply, done, service),
        )

    return app


async def answer(
    request: Request,
    stream: bool,
    job: Job,
    reply: Reply,
    events: Callable[[], AsyncIterator[str]],
    whole: Callable[[Done], dict],
):
    """A submitted job's answer: its `events` as an SSE stream once the worker has taken it (a job
    refused meanwhile is an error response, not a broken stream), else `whole` of its end."""
    if stream:
        await begin(job, request)
        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
    return whole(await collect(job, reply, request))


class KeyCheck:
    """ASGI middleware: 401 for a request to /v1 or /api (but /api/version) without the bearer
    `key` (when there is one), before its body is read, in the shape of the API asked (Ollama's
    under /api). The key is compared as the UTF-8 bytes the client sent."""

    def __init__(self, app: Callable, key: str | None) -> None:
        self.app, self.key = app, key.encode() if key else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope.get("path", "")
        guarded = path.startswith(("/v1/", "/api/")) and path != "/api/version"
        if scope["type"] == "http" and self.key and guarded:
            error = self._refusal(dict(scope["headers"]).get(b"authorization", b""))
            if error is not None:
                body = {"error": error.message} if path.startswith("/api/") else error.body()
                return await JSONResponse(body, error.status)(scope, receive, send)
        await self.app(scope, receive, send)

    def _refusal(self, header: bytes) -> ApiError | None:
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            message = "missing API key: send 'Authorization: Bearer KEY'"
            return ApiError(401, message, code="invalid_api_key")
        if not hmac.compare_digest(given.strip(), self.key):
            return ApiError(401, "incorrect API key provided", code="invalid_api_key")
        return None


class BodyGuard:
    """ASGI middleware: 413 for a request body over `limit` bytes (declared or sent), 408 for
    one that has not all arrived `timeout` seconds after the app first asked for it."""

    def __init__(self, app: Callable, limit: int, timeout: float) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._too_large().response()(scope, receive, send)
        seen, deadline, done = 0, None, False

        async def guarded() -> dict:
            nonlocal seen, deadline, done
            if done:
                return await receive()
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.timeout
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
                raise self._too_slow() from None
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise self._too_large()
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, guarded, send)

    def _too_large(self) -> ApiError:
        message = (
            f"the request body is larger than {self.limit:,} bytes, more than the context holds"
        )
        return ApiError(413, message, code="request_too_large", headers=CLOSE)

    def _too_slow(self) -> ApiError:
        message = f"the request body did not arrive within {self.timeout:g} seconds"
        return ApiError(408, message, code="request_timeout", headers=CLOSE)
