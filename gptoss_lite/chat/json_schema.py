"""The JSON schemas a reply can be held to: bounds for all, and OpenAI's strict subset.

`read_json` reads a schema file. `check_schema(schema, strict=...)` returns the schema a reply's
JSON will be constrained to, or raises `SchemaError` naming where in the schema the problem is
(a dotted path) and why, before anything is compiled or generated. Every schema must be a JSON
object of at most `MAX_SCHEMA_BYTES` serialized and `MAX_DEPTH` levels of nesting. A strict
schema (`strict: true`, as OpenAI's structured outputs define it) must also have an object at
its root, list every property of every object in `required`, say `additionalProperties: false`
on every object, keep to `STRICT_KEYWORDS`, and `$ref` only into its own `$defs`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import GptossError

MAX_SCHEMA_BYTES = 64 * 1024  # serialized; larger schemas are refused before compiling
MAX_DEPTH = 16  # nested schema levels (OpenAI allows 10 levels of object nesting)
MAX_PROPERTIES = 1000  # property names across the whole schema
MAX_ENUM = 1000  # values of one enum
STRICT_KEYWORDS = {
    # structure
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "enum", "const", "anyOf", "$ref", "$defs", "definitions",
    # bounds
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minItems", "maxItems", "minLength", "maxLength", "pattern", "format",
    # annotations
    "description", "title", "default", "examples", "$schema", "$id", "$comment",
}  # fmt: skip
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


class SchemaError(GptossError):
    """A schema that cannot constrain a reply; `path` is where in the schema ("" at its root)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path or 'the schema'}: {reason}" if path else reason)
        self.path, self.reason = path, reason


def read_json(path: str | Path) -> Any:
    """The JSON in file `path` (a schema, a tool list); a one-line `GptossError` if unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise GptossError(f"{path}: cannot read it as JSON: {reason}") from exc


def check_schema(schema: Any, *, strict: bool) -> dict[str, Any]:
    """`schema` itself, checked: bounded for any use, and within the strict subset if `strict`."""
    if not isinstance(schema, dict):
        raise SchemaError("", f"a JSON schema must be an object, not {type(schema).__name__}")
    size = len(json.dumps(schema, ensure_ascii=False))
    if size > MAX_SCHEMA_BYTES:
        raise SchemaError("", f"the schema is {size:,} bytes; at most {MAX_SCHEMA_BYTES:,}")
    counts = {"properties": 0}
    _walk(schema, "", 1, strict, schema, counts)
    if strict and schema.get("type") != "object":
        raise SchemaError("type", 'a strict schema must have "type": "object" at its root')
    return schema


def _walk(node: Any, path: str, depth: int, strict: bool, root: dict, counts: dict) -> None:
    if not isinstance(node, dict):
        if strict:  # elsewhere the compiler judges it (true/false schemas, draft-4 item lists)
            raise SchemaError(path, f"expected a schema object, got {json.dumps(node)[:40]}")
        return
    if depth > MAX_DEPTH:
        raise SchemaError(path, f"the schema nests deeper than {MAX_DEPTH} levels")
    if isinstance(node.get("enum"), list) and len(node["enum"]) > MAX_ENUM:
        raise SchemaError(_at(path, "enum"), f"more than {MAX_ENUM} values")
    if strict:
        _check_strict(node, path, root)
    for key in _SUBSCHEMA_MAPS:
        children = node.get(key)
        if isinstance(children, dict):
            if key == "properties":
                counts["properties"] += len(children)
                if counts["properties"] > MAX_PROPERTIES:
                    raise SchemaError(_at(path, key), f"more than {MAX_PROPERTIES} properties")
            for name, child in children.items():
                _walk(child, _at(path, key, name), depth + 1, strict, root, counts)
    for key in _SUBSCHEMA_LISTS:
        if isinstance(node.get(key), list):
            for i, child in enumerate(node[key]):
                _walk(child, _at(path, key, str(i)), depth + 1, strict, root, counts)
    for key in _SUBSCHEMAS:
        if key in node and not (key == "additionalProperties" and node[key] is False):
            _walk(node[key], _at(path, key), depth + 1, strict, root, counts)


def _check_strict(node: dict, path: str, root: dict) -> None:
    unknown = sorted(set(node) - STRICT_KEYWORDS)
    if unknown:
        raise SchemaError(_at(path, unknown[0]), "this keyword is not supported in strict mode")
    ref = node.get("$ref")
    if ref is not None and not _local_ref(ref, root):
        raise SchemaError(_at(path, "$ref"), f"{ref!r} does not point into this schema's $defs")
    types = node.get("type")
    if types == "object" or (isinstance(types, list) and "object" in types):
        if node.get("additionalProperties") is not False:
            raise SchemaError(
                _at(path, "additionalProperties"), "strict mode needs it, and it must be false"
            )
        properties = node.get("properties", {})
        missing = [name for name in properties if name not in node.get("required", [])]
        if missing:
            raise SchemaError(
                _at(path, "required"), f"strict mode needs every property listed: {missing[0]!r}"
            )


def _local_ref(ref: Any, root: dict) -> bool:
    """Whether `ref` is "#" or "#/$defs/NAME" (or definitions) naming a schema of `root`."""
    if ref == "#":
        return True
    parts = ref.split("/") if isinstance(ref, str) else []
    if len(parts) != 3 or parts[0] != "#" or parts[1] not in ("$defs", "definitions"):
        return False
    defs = root.get(parts[1])
    return isinstance(defs, dict) and parts[2] in defs


def _at(path: str, *keys: str) -> str:
    return ".".join([path, *keys] if path else keys)
