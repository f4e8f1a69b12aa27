"""Structured outputs for every API: a request's answer format and tools, as one grammar.

`answer_format(spec, param)` reads Chat's `response_format` or Responses' `text.format`
(`text`, `json_object`, `json_schema` with `name`, `schema` and `strict`, nested under
`json_schema` in Chat, flat in Responses) into the `Answer` the final message is held to;
`ollama_format(spec)` reads Ollama's `format` ("json", or a JSON schema). `reply_grammar` then
compiles, for the service's tokenizer, the grammar of the whole reply: that answer, and calls of
the declared tools only (`strict` function tools' arguments held to their parameters, custom
tools' to a JSON string, the others' to any JSON object), a call forced by `tool_choice`. Any
problem is a 400 naming the field (`param`) and the reason, raised before anything is queued: a
schema that is not JSON, too large or too deep, outside the strict subset under `strict`, or
refused by the compiler. Compiling is bounded by those sizes and llguidance's own limits
(`engine.grammar.LIMITS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..chat.harmony import FUNCTIONS
from ..chat.json_schema import SchemaError, check_schema
from ..chat.reply_grammar import ANY_OBJECT, ReplyFormat, ToolFormat
from ..chat.tokenizer import Tokenizer
from ..engine.constraint import compile_reply
from ..engine.grammar import Grammar, GrammarError
from .errors import ApiError
from .tools import STRING, Declared

FORMATS = ("text", "json_object", "json_schema")


@dataclass(frozen=True)
class Answer:
    """What the final message must be: JSON of `schema` (None: free text), `strict` or not;
    `param` is the request field it came from."""

    schema: dict[str, Any] | None
    strict: bool
    param: str


def answer_format(spec: Any, param: str) -> Answer:
    """The answer format of a `response_format` or `text.format` field named `param`."""
    if spec is None:
        return Answer(None, False, param)
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in FORMATS:
        raise _invalid(f"{param}.type", f"use one of {', '.join(FORMATS)}")
    if kind == "text":
        return Answer(None, False, param)
    if kind == "json_object":
        return Answer(ANY_OBJECT, False, param)
    where = f"{param}.json_schema" if "json_schema" in spec else param
    fields = spec.get("json_schema", spec)
    if not isinstance(fields, dict) or "schema" not in fields:
        raise _invalid(f"{where}.schema", "a json_schema format needs its schema")
    strict = fields.get("strict") is True
    return Answer(_checked(fields["schema"], strict, f"{where}.schema"), strict, f"{where}.schema")


def ollama_format(spec: Any) -> Answer:
    """Ollama's `format`: "json" (any JSON object) or a JSON schema (enforced as far as the
    library can, as a non-strict schema is)."""
    if spec is None or spec == "":
        return Answer(None, False, "format")
    if spec == "json":
        return Answer(ANY_OBJECT, False, "format")
    if not isinstance(spec, dict):
        raise _invalid("format", 'use "json" or a JSON schema object')
    return Answer(_checked(spec, False, "format"), False, "format")


def reply_grammar(
    tokenizer: Tokenizer, answer: Answer, tools: Declared, forced: str | None
) -> Grammar | None:
    """The compiled grammar of a reply with this `answer`, calling only the declared `tools`,
    and this `forced` call ("functions." for any tool, "functions.NAME" for one); None when
    nothing constrains it."""
    declared = [(t.name, FUNCTIONS + t.name, t) for t in tools.functions]
    declared += [
        (f"{n.name}.{t.name}", f"{n.name}.{t.name}", t) for n in tools.namespaces for t in n.tools
    ]
    formats, where = [], {"answer_json": answer.param}
    for i, (name, recipient, tool) in enumerate(declared):
        if name in tools.custom:
            formats.append(ToolFormat(recipient, STRING))
        elif name in tools.strict:
            where[f"args_{i}"] = tools.strict[name]
            schema = _checked(tool.parameters or {}, True, tools.strict[name])
            formats.append(ToolFormat(recipient, schema, strict=True))
        else:
            formats.append(ToolFormat(recipient))
    call = None if forced is None else "required" if forced == FUNCTIONS else forced
    reply = ReplyFormat(answer.schema, not answer.strict, tuple(formats), call)
    if not reply.constrained:
        return None
    try:
        return compile_reply(reply, tokenizer)
    except GrammarError as error:
        param = where.get(error.rule or "", answer.param)
        raise _invalid(param, f"the schema cannot be enforced: {error}") from None


def _checked(schema: Any, strict: bool, param: str) -> dict[str, Any]:
    try:
        return check_schema(schema, strict=strict)
    except SchemaError as error:
        at = f"{param}.{error.path}" if error.path else param
        raise _invalid(at, error.reason) from None


def _invalid(param: str, reason: str) -> ApiError:
    return ApiError(400, f"{param}: {reason}", param=param, code="invalid_value")
