"""Reading a request body: strict JSON, parsed and checked off the event loop, then the schema.

`read_body(request, schema)` reads the bytes on the event loop and parses them in a worker thread
(a body may be megabytes). The JSON must be an object, and valid to the letter: no NaN or
Infinity and no number too large for a float such as 1e309 (Python's `json` takes all of them,
and none can be written back as JSON), no lone UTF-16 surrogate in a string or key (it cannot be
encoded, so it could be neither tokenized nor echoed), nested at most `MAX_DEPTH` deep (deeper
structures exhaust the renderer's recursion). Then the endpoint's pydantic schema checks types
and ranges. Every refusal is a 400 in the OpenAI shape naming the field (`param`), before
anything is rendered, generated or stored.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from .errors import ApiError, field_path, validation_error
from .service import off_loop

MAX_DEPTH = 100  # JSON nesting: a tool schema ~45 object levels deep still fits

Schema = TypeVar("Schema", bound=BaseModel)


async def read_body(request: Request, schema: type[Schema]) -> Schema:
    """The body of `request`, parsed strictly and validated by `schema` (off the event loop)."""
    return await off_loop(parse_body, await request.body(), schema)


def parse_body(raw: bytes, schema: type[Schema]) -> Schema:
    """`raw` as a `schema` object, or a 400 naming what is wrong."""
    data = strict_json(raw)
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False)) from None


def strict_json(raw: str | bytes) -> Any:
    """`raw` parsed as JSON to the letter (see above), or a 400 naming what is wrong. Also the
    test of JSON a model writes (a call's arguments) before it is sent on as a value."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise _invalid(f"the body is nested more than {MAX_DEPTH} levels deep", None) from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer of too many digits
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    check_values(data)
    return data


def check_values(data: Any) -> None:
    """A 400 for the first value JSON cannot carry back (non-finite number, lone surrogate) or
    nested deeper than `MAX_DEPTH`, naming where it is."""
    todo: list[tuple[Any, tuple]] = [(data, ())]
    while todo:
        value, path = todo.pop()
        if len(path) > MAX_DEPTH:
            raise _invalid(f"nested more than {MAX_DEPTH} levels deep", path)
        if isinstance(value, float) and not math.isfinite(value):
            raise _invalid(f"{value} is not a finite number", path)
        if isinstance(value, str) and not _encodable(value):
            raise _invalid("the string holds a lone UTF-16 surrogate, which is not text", path)
        if isinstance(value, dict):
            for key, item in value.items():
                if not _encodable(key):
                    raise _invalid("a key holds a lone UTF-16 surrogate, which is not text", path)
                todo.append((item, (*path, key)))
        elif isinstance(value, list):
            todo += [(item, (*path, i)) for i, item in enumerate(value)]


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _invalid(message: str, path: tuple | None) -> ApiError:
    param = field_path(path or ())
    return ApiError(
        400, f"{param}: {message}" if param else message, param=param, code="invalid_value"
    )
