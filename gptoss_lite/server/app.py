"""The FastAPI application: routes, the bearer-key check and the request-size bound.

`create_app(service)` serves one loaded model: `GET /health` (open to all), and behind the API
key when one is set, `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/responses` and
`POST /v1/completions` (plain text continued, stopping at `<|endoftext|>`), and Ollama's API
under `/api` (ollama_api.py). A body larger than
the context could ever need (`body_limit`) is refused with 413 before it is read. uvicorn runs
the app; the generation itself happens in the service's worker thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

from . import chat_api, completions_api, responses_api
from .errors import ApiError, install_handlers
from .ollama_api import ollama_app
from .service import Service, collect

MAX_BYTES_PER_TOKEN = 64  # a token is a few bytes of text, at most ~6x more once JSON-escaped
BODY_SLACK = 1 << 20  # room for tool schemas and the JSON around the text
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def body_limit(context: int) -> int:
    """The largest request body accepted for a model with this context, in bytes."""
    return context * MAX_BYTES_PER_TOKEN + BODY_SLACK


def create_app(service: Service) -> FastAPI:
    """The HTTP API of `service`; closing the app stops its worker."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="gptoss-lite", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.add_middleware(BodyLimit, limit=body_limit(service.context))
    install_handlers(app)
    store = responses_api.ResponseStore()
    auth = [Depends(_auth(service.api_key))]
    app.mount("/api", ollama_app(service, auth[0]))

    @app.get("/health")
    async def health() -> dict:
        running, waiting = service.queue.counts()
        queue = {"running": running, "waiting": waiting, "max_waiting": service.queue.max_waiting}
        return {"status": "ok", "model": service.model_id, "queue": queue}

    @app.get("/v1/models", dependencies=auth)
    async def models() -> dict:
        model = {
            "id": service.model_id,
            "object": "model",
            "created": service.created,
            "owned_by": "gptoss-lite",
            "context_length": service.context,
        }
        return {"object": "list", "data": [model]}

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: chat_api.ChatRequest, request: Request):
        pending = chat_api.prepare(body, service)
        if body.stream:
            events = chat_api.stream(pending, service)
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
        done = await collect(pending.job, pending.reply, request)
        return chat_api.completion(pending, done, service)

    @app.post("/v1/responses", dependencies=auth)
    async def responses(body: responses_api.ResponsesRequest, request: Request):
        pending = responses_api.prepare(body, service, store)
        if body.stream:
            events = responses_api.stream(pending, store)
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
        done = await collect(pending.job, pending.reply, request)
        return responses_api.finish(pending, done, store)

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: completions_api.CompletionRequest, request: Request):
        job, reply = completions_api.prepare(body, service)
        if body.stream:
            events = completions_api.stream(body, job, reply, service)
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
        done = await collect(job, reply, request)
        return completions_api.completion(body, reply, done, service)

    return app


def _auth(key: str | None) -> Callable[[Request], Awaitable[None]]:
    async def check(request: Request) -> None:
        if key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(
                401, "missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key"
            )
        if not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise ApiError(401, "incorrect API key provided", code="invalid_api_key")

    return check


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes, declared or sent."""

    def __init__(self, app: Callable, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.limit:,} bytes, more than the context holds"

    async def _refuse(self, scope: dict, receive: Callable, send: Callable) -> None:
        error = ApiError(413, self._message(), code="request_too_large")
        await error.response()(scope, receive, send)
