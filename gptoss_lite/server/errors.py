"""Errors in the shape of the OpenAI API: `{"error": {"message", "type", "param", "code"}}`.

`ApiError` carries an HTTP status and those four fields; `install_handlers` makes every failure
of the app answer in that shape: an `ApiError` (such as a body that is not valid JSON or does not
match the request schema: 400, naming the field, see `body`), an unknown path or method, a
`GptossError` from the project (400: it describes the request) and anything else (500).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import GptossError

INVALID = "invalid_request_error"
SHOWN_CHARS = 40  # of a value or a path component a message quotes
SHOWN_PARTS = 8  # of a path a message names
_log = logging.getLogger("gptoss_lite.server")


class ApiError(Exception):
    """An error answered with `status` and an OpenAI-shaped body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict:
        """The JSON body of the response (also sent as an event inside a stream)."""
        fields = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": {**fields, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def install_handlers(app: FastAPI) -> None:
    """Answer every error of `app` in the OpenAI shape."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return ApiError(exc.status_code, str(exc.detail), code=code, headers=exc.headers).response()

    @app.exception_handler(GptossError)
    async def project_error(request: Request, exc: GptossError) -> JSONResponse:
        return ApiError(400, str(exc)).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("request failed")
        return internal_error(exc).response()


def internal_error(exc: BaseException) -> ApiError:
    """A failure of the server itself (a bug, or the model failing), as a 500."""
    if isinstance(exc, GptossError):
        return ApiError(500, str(exc), type="server_error")
    return ApiError(500, f"internal error: {type(exc).__name__}", type="server_error")


def validation_error(errors: list[dict]) -> ApiError:
    """A 400 naming the first field that is wrong, e.g. "messages.0.role: Input should be ..."."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = field_path(first.get("loc", ()))
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    return ApiError(400, message, param=param, code="invalid_value")


def field_path(parts: tuple | list) -> str | None:
    """The dotted name of a field, e.g. "messages.0.content" (long keys and paths cut)."""
    if not parts:
        return None
    shown = [_cut(str(part)) for part in parts[:SHOWN_PARTS]]
    return ".".join(shown) + (".…" if len(parts) > SHOWN_PARTS else "")


def shown(value: object) -> str:
    """`repr(value)`, cut to a length a one-line message can quote."""
    return _cut(repr(value))


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else f"{text[: SHOWN_CHARS - 1]}…"
