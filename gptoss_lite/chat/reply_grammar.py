"""The grammar of a harmony reply held to a format: a JSON answer, calls of declared tools only.

`ReplyFormat` says what a reply must be: its final answer free text or JSON of a schema
(`{"type": "object"}` for any JSON object; `lenient` ignores the keywords the library cannot
enforce instead of refusing the schema), the tools it may call (each by its recipient, with the
schema of its arguments, or any JSON object) and whether it must call one (`call`: "required"
or a tool's recipient). `reply_grammar(format)` writes it as an llguidance Lark
grammar over the tokens after `<|start|>assistant`: any number of analysis messages (free text;
commentary preambles too when tools are declared), each followed by `<|start|>assistant`, then
one ending: the final message closed by `<|return|>`, or a call of a declared tool (its header
in either form gpt-oss writes, `<|constrain|>json`) closed by `<|call|>`. Format tokens stand in
the grammar as tokens, so no text token can straddle a message boundary, and JSON is compact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ANY_OBJECT: dict[str, Any] = {"type": "object"}  # json_object answers, non-strict arguments


@dataclass(frozen=True)
class ToolFormat:
    """A tool the reply may call, by its recipient ("functions.NAME", or "NAMESPACE.NAME" for a
    tool of another namespace); `schema` constrains its arguments (None: any JSON object),
    checked as OpenAI's strict subset when `strict`."""

    recipient: str
    schema: dict[str, Any] | None = None
    strict: bool = False


@dataclass(frozen=True)
class ReplyFormat:
    """What a reply must be. `answer` None leaves the final answer free text."""

    answer: dict[str, Any] | None = None
    lenient: bool = False  # keywords llguidance cannot enforce in `answer` ignored, not refused
    tools: tuple[ToolFormat, ...] = field(default_factory=tuple)
    call: str | None = None  # "required", a tool's recipient, or None (the model may answer)

    @property
    def constrained(self) -> bool:
        """Whether there is anything to hold the reply to."""
        return self.answer is not None or bool(self.tools)


def reply_grammar(reply: ReplyFormat) -> str:
    """The Lark grammar (llguidance's dialect) of every reply `reply` allows."""
    notes = '"analysis" | "commentary"' if reply.tools else '"analysis"'
    endings: list[str] = []
    rules = [
        "start: note* ending",
        f'note: <|channel|> ({notes}) <|message|> TEXT <|end|> <|start|> "assistant"',
        r"TEXT: /(.|\n)*/",
    ]
    if reply.call is None:
        endings.append("answer")
        body = "TEXT" if reply.answer is None else "answer_json"
        rules.append(f'answer: <|channel|> "final" <|message|> {body} <|return|>')
        if reply.answer is not None:
            rules.append(f"answer_json: %json {_json(reply.answer, reply.lenient)}")
    for i, tool in enumerate(reply.tools):
        if reply.call not in (None, "required", tool.recipient):
            continue
        endings.append(f"call_{i}")
        to = f"to={tool.recipient}"
        rules += [
            f'call_{i}: <|channel|> "commentary {to} " <|constrain|> "json" <|message|> args_{i} '
            "<|call|>",
            f'  | " {to}" <|channel|> "commentary " <|constrain|> "json" <|message|> args_{i} '
            "<|call|>",
            f"args_{i}: %json {_json(tool.schema or ANY_OBJECT, lenient=False)}",
        ]
    return "\n".join([*rules, f"ending: {' | '.join(endings)}"]) + "\n"


def _json(schema: dict[str, Any], lenient: bool) -> str:
    """The schema for `%json`: compact JSON (no whitespace between tokens)."""
    options = {"whitespace_flexible": False, "lenient": lenient}
    return json.dumps({**schema, "x-guidance": options}, ensure_ascii=False)
