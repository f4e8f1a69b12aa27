"""Structured outputs for both APIs: a request's response format and tools, as one grammar.

`answer_format(spec, param)` reads Chat's `response_format` or Responses' `text.format`
(`text`, `json_object`, `json_schema` with `name`, `schema` and `strict`, nested under
`json_schema` in Chat, flat in Responses) into the schema the answer is held to. `reply_grammar`
then compiles, for the service's tokenizer, the grammar of the whole reply: that answer, and
calls of the declared tools only (`strict` tools' arguments held to their parameters, the
others' to any JSON object), a call forced by `tool_choice`. Any problem is a 400 naming the
field (`param`) and the reason, raised before anything is queued: a schema that is not JSON,
too large or too deep, outside the strict subset under `strict`, or refused by the compiler.
Compiling is bounded by those sizes and llguidance's own limits (`engine.constrain.LIMITS`).
"""

from __future__ import annotations

from typing import Any

from ..chat.constraint import compile_reply
from ..chat.json_schema import SchemaError, check_schema
from ..chat.reply_grammar import ANY_OBJECT, ReplyFormat, ToolFormat
from ..chat.tokenizer import Tokenizer
from ..engine.constrain import Grammar, GrammarError
from .errors import ApiError

FORMATS = ("text", "json_object", "json_schema")


def answer_format(spec: Any, param: str) -> tuple[dict[str, Any] | None, bool]:
    """The schema the final answer must follow (None: free text) and whether it is strict."""
    if spec is None:
        return None, False
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in FORMATS:
        raise _invalid(f"{param}.type", f"use one of {', '.join(FORMATS)}")
    if kind == "text":
        return None, False
    if kind == "json_object":
        return ANY_OBJECT, False
    where = f"{param}.json_schema" if "json_schema" in spec else param
    fields = spec.get("json_schema", spec)
    if not isinstance(fields, dict) or "schema" not in fields:
        raise _invalid(f"{where}.schema", "a json_schema format needs its schema")
    strict = fields.get("strict") is True
    return _checked(fields["schema"], strict, f"{where}.schema"), strict


def reply_grammar(
    tokenizer: Tokenizer,
    answer: tuple[dict[str, Any] | None, bool, str],
    tools: list[tuple[str, str, dict[str, Any] | None, bool]],
    forced: str | None,
) -> Grammar | None:
    """The compiled grammar of a reply whose `answer` is (schema or None for text, strict, its
    field), with these `tools` (field, name, parameters, strict) and this `forced` call
    ("functions." for any tool, "functions.NAME" for one); None when nothing constrains it."""
    schema, strict, answer_param = answer
    formats = []
    where = {"answer_json": answer_param}
    for i, (field, name, parameters, tool_strict) in enumerate(tools):
        arguments = None
        if tool_strict:
            arguments = _checked(parameters or {}, True, f"{field}.parameters")
            where[f"args_{i}"] = f"{field}.parameters"
        formats.append(ToolFormat(name, arguments, tool_strict))
    call = None if forced is None else forced.removeprefix("functions.") or "required"
    reply = ReplyFormat(schema, lenient=not strict, tools=tuple(formats), call=call)
    if not reply.constrained:
        return None
    try:
        return compile_reply(reply, tokenizer)
    except GrammarError as error:
        param = where.get(error.rule or "", answer_param)
        raise _invalid(param, f"the schema cannot be enforced: {error}") from None


def _checked(schema: Any, strict: bool, param: str) -> dict[str, Any]:
    try:
        return check_schema(schema, strict=strict)
    except SchemaError as error:
        at = f"{param}.{error.path}" if error.path else param
        raise _invalid(at, error.reason) from None


def _invalid(param: str, reason: str) -> ApiError:
    return ApiError(400, f"{param}: {reason}", param=param, code="invalid_value")
