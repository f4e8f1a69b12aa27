"""Ollama's API under `/api`, enough for `codex --oss` and the clients that speak Ollama.

`ollama_app(service)` is mounted at `/api` beside the OpenAI API: `GET /version`, `GET /tags`
(the served model under each of its names), `POST /show`, `POST /pull` (the served model: an
immediate success; any other name: Ollama's error), `POST /chat` and `POST /generate`
(ollama_chat.py). Shapes follow Ollama's docs/api.md and api/types.go: NDJSON streams (the
default), errors as `{"error": "..."}` with the HTTP status (inside a stream, as its last line).
The version reported is the first Ollama release with the Responses API on /v1, which clients
such as Codex require; it is not the version of an Ollama server. Behind `--api-key` like /v1,
except /version (app.KeyCheck); bodies are read as strictly as /v1's (body.py).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from ..memory.plan import weight_bytes
from . import ollama_chat
from .body import read_body
from .errors import ApiError, internal_error
from .ollama_chat import NDJSON, known, lines, timestamp
from .service import Service

OLLAMA_VERSION = "0.13.4"
CAPABILITIES = ["completion", "tools", "thinking"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class NameRequest(_Body):
    """/show and /pull: `model`, or the older `name`."""

    model: str = ""
    name: str = ""
    stream: bool = True

    @property
    def which(self) -> str:
        return self.model or self.name


def ollama_app(service: Service) -> FastAPI:
    """The Ollama API of `service`."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    _install_handlers(app)

    @app.get("/version")
    async def version() -> dict:
        return {"version": OLLAMA_VERSION}

    @app.get("/tags")
    async def tags() -> dict:
        return {"models": [_listed(service, name) for name in service.names]}

    @app.post("/show")
    async def show(request: Request) -> dict:
        body = await read_body(request, NameRequest)
        name = known(service, body.which)
        config = service.config
        info = {
            "general.architecture": "gpt-oss",
            "general.parameter_count": parameter_count(service),
            "gpt-oss.context_length": service.context,
            "gpt-oss.block_count": config.num_layers,
            "gpt-oss.embedding_length": config.hidden_size,
            "gpt-oss.expert_count": config.num_experts,
            "gpt-oss.expert_used_count": config.experts_per_token,
            "gpt-oss.attention.head_count": config.num_heads,
            "gpt-oss.attention.head_count_kv": config.num_kv_heads,
            "gpt-oss.attention.sliding_window": config.sliding_window,
        }
        return {
            "model": name,
            "details": details(service),
            "model_info": info,
            "capabilities": CAPABILITIES,
            "modified_at": started(service),
        }

    @app.post("/pull")
    async def pull(request: Request):
        body = await read_body(request, NameRequest)
        known(service, body.which)  # a name this server does not serve: Ollama's error
        done = {"status": "success"}
        if not body.stream:
            return done
        return StreamingResponse(lines([done]), media_type=NDJSON)

    @app.post("/chat")
    async def chat(request: Request):
        body = await read_body(request, ollama_chat.ChatBody)
        return await ollama_chat.chat(body, service, request)

    @app.post("/generate")
    async def generate(request: Request):
        body = await read_body(request, ollama_chat.GenerateBody)
        return await ollama_chat.generate(body, service, request)

    return app


def details(service: Service) -> dict:
    return {
        "parent_model": "",
        "format": "safetensors",
        "family": "gpt-oss",
        "families": ["gpt-oss"],
        "parameter_size": _size(parameter_count(service)),
        "quantization_level": "MXFP4",
    }


def parameter_count(service: Service) -> int:
    """Every weight, experts counted as matrices (as the model card counts them)."""
    return sum(weight_bytes(service.config, dense_experts=True).values()) // 2


def _size(count: int) -> str:
    """A parameter count as Ollama shows it: "20.9B", "26.1M"."""
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


def started(service: Service) -> str:
    return timestamp(datetime.datetime.fromtimestamp(service.created, datetime.timezone.utc))


def _listed(service: Service, name: str) -> dict:
    # A digest of the served model's names and config (hashing the weights is not worth it).
    about = json.dumps([service.names, service.config.to_hf()], sort_keys=True)
    return {
        "name": name,
        "model": name,
        "modified_at": started(service),
        "size": sum(weight_bytes(service.config).values()),
        "digest": hashlib.sha256(about.encode()).hexdigest(),
        "details": details(service),
    }


def _install_handlers(app: FastAPI) -> None:
    """Every failure in Ollama's shape, `{"error": message}`."""

    def answer(error: ApiError) -> JSONResponse:
        return JSONResponse({"error": error.message}, error.status, headers=error.headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return answer(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return answer(ApiError(exc.status_code, str(exc.detail), headers=exc.headers))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        logging.getLogger("gptoss_lite.server").exception("request failed")
        return answer(internal_error(exc))
