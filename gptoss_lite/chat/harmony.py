"""Harmony chat format: a conversation rendered into the token ids gpt-oss expects.

A `Conversation` holds the system settings (identity, knowledge cutoff, date, reasoning effort),
the developer instructions and function tools (`ToolDef`, JSON-schema parameters shown to the
model as a TypeScript-like `namespace functions`, or in a namespace of their own: `ToolNamespace`;
`tools_from_openai` reads OpenAI's function-tool JSON), and the turns (`Message`;
`Message.tool_call` and `.tool_result` for a tool chain). `render_prompt` gives every token up to
the completion prefix `<|start|>assistant`, the same ids openai-harmony renders: header and body
text are encoded with special tokens off (markup a user types stays text) and the format tokens
are put in by id. Multi-turn history follows harmony's `auto_drop_analysis`; a finished answer is
stored ending in `<|end|>`, never `<|return|>`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GptossError
from .json_schema import read_json
from .tokenizer import Tokenizer
from .tokens import CALL, CHANNEL, CONSTRAIN, END, MESSAGE, START

ROLES = ("system", "developer", "user", "assistant", "tool")
EFFORTS = ("low", "medium", "high")
DEFAULT_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
FUNCTIONS = "functions."  # the namespace of function tools, in recipients and tool names
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what the OpenAI API allows a function name
_CHANNELS = (
    "# Valid channels: analysis, commentary, final. Channel must be included for every message."
)
_TOOLS_CHANNEL = "Calls to these tools must go to the commentary channel: 'functions'."

Piece = str | int  # text to encode, or a format token id


@dataclass
class ToolDef:
    """A function the model may call; `parameters` is the JSON schema of its argument object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None


def tools_from_openai(spec: Any, source: str = "tools") -> list[ToolDef]:
    """Function tools from OpenAI's JSON: a list of `{"type": "function", "function": {"name",
    "description", "parameters"}}` (Chat Completions) or of the same fields without the
    "function" wrapper (Responses). Anything else is a one-line `GptossError` naming `source`."""
    if not isinstance(spec, list):
        raise GptossError(f"{source}: expected a list of function tools, got {type(spec).__name__}")
    return [_tool_from_openai(item, f"{source}[{i}]") for i, item in enumerate(spec)]


def read_tools(path: str | Path) -> list[ToolDef]:
    """Function tools from a file of OpenAI function-tool JSON (see `tools_from_openai`)."""
    return tools_from_openai(read_json(path), source=str(path))


def check_tool_name(name: Any, where: str) -> str:
    """`name` if the OpenAI API allows it as a function name (1-64 of a-z, A-Z, 0-9, _ and -),
    else a one-line `GptossError` naming `where` (a long name shown cut)."""
    if isinstance(name, str) and _TOOL_NAME.fullmatch(name):
        return name
    shown = repr(name) if len(repr(name)) <= 40 else f"{repr(name)[:36]}...{repr(name)[-1]}"
    raise GptossError(f"{where}: the name {shown} is not 1-64 of a-z, A-Z, 0-9, _ and -")


def _tool_from_openai(item: Any, where: str) -> ToolDef:
    if not isinstance(item, dict) or item.get("type") != "function":
        raise GptossError(f'{where}: only {{"type": "function", ...}} tools are supported')
    function = item.get("function", item)
    if not isinstance(function, dict):
        raise GptossError(f"{where}.function: expected an object")
    name = check_tool_name(function.get("name"), where)
    description, parameters = function.get("description", ""), function.get("parameters")
    if not isinstance(description, str):
        raise GptossError(f"{where}: the description of {name} is not a string")
    if parameters is not None and not isinstance(parameters, dict):
        raise GptossError(f"{where}: the parameters of {name} are not a JSON schema object")
    return ToolDef(name, description, parameters)


@dataclass
class Message:
    """One harmony message. Tool results have role "tool" and name "functions.<tool>".

    `content_type` is the word after the channel (e.g. "json"); `constrained` puts the
    `<|constrain|>` token before it, as tool calls have. No field ever holds markup."""

    role: str
    content: str = ""
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None
    name: str | None = None
    constrained: bool = False

    @classmethod
    def user(cls, text: str) -> Message:
        """A user turn."""
        return cls("user", text)

    @classmethod
    def tool_call(cls, name: str, arguments: str) -> Message:
        """The assistant calling function tool `name` (or `namespace.tool` for one declared in
        another namespace) with JSON `arguments`, as gpt-oss does: on the commentary channel, to
        functions.<name>, constrained to json."""
        recipient = tool_recipient(name)
        return cls("assistant", arguments, "commentary", recipient, "json", constrained=True)

    @classmethod
    def tool_result(cls, name: str, output: str) -> Message:
        """The output of tool `name` (e.g. "functions.get_weather"), addressed to the assistant."""
        return cls("tool", output, channel="commentary", recipient="assistant", name=name)


def tool_recipient(name: str) -> str:
    """Where a call of tool `name` goes: "functions.<name>", or `name` itself when it is already
    "<namespace>.<tool>" (tool and namespace names hold no dot)."""
    return name if "." in name else f"{FUNCTIONS}{name}"


@dataclass
class ToolNamespace:
    """A named group of function tools declared beside `functions` (e.g. Codex's
    `multi_agent_v1`); calls to its tools go to `<name>.<tool>`."""

    name: str
    description: str = ""
    tools: list[ToolDef] = field(default_factory=list)


@dataclass
class Conversation:
    """Settings for the system and developer messages, and the turns that follow."""

    messages: list[Message] = field(default_factory=list)
    instructions: str | None = None
    tools: list[ToolDef] = field(default_factory=list)
    namespaces: list[ToolNamespace] = field(default_factory=list)
    reasoning_effort: str = "medium"
    date: str | None = None  # "Current date:" line, e.g. "2025-06-28"
    model_identity: str | None = DEFAULT_IDENTITY
    knowledge_cutoff: str | None = "2024-06"


def render_prompt(conversation: Conversation, tokenizer: Tokenizer) -> list[int]:
    """Token ids of the conversation followed by `<|start|>assistant`, ready to complete."""
    return render_conversation(conversation, tokenizer) + _encode([START, "assistant"], tokenizer)


def render_conversation(conversation: Conversation, tokenizer: Tokenizer) -> list[int]:
    """Token ids of the system and developer messages and the kept turns."""
    return _encode(conversation_pieces(conversation), tokenizer)


def prompt_size(conversation: Conversation) -> int:
    """Bytes of text in the rendered prompt (format tokens left out), known before tokenizing."""
    return sum(len(p.encode()) for p in conversation_pieces(conversation) if isinstance(p, str))


def conversation_pieces(conversation: Conversation) -> list[Piece]:
    """Every message of the rendered conversation as text pieces and format tokens."""
    messages = [Message("system", system_text(conversation))]
    developer = developer_text(conversation)
    if developer is not None:
        messages.append(Message("developer", developer))
    messages += kept_turns(conversation.messages)
    return [piece for message in messages for piece in message_pieces(message)]


def kept_turns(messages: list[Message]) -> list[Message]:
    """Harmony's auto_drop_analysis: when the last assistant message is final, drop the analysis
    messages before the first final one. Mid tool-call chain, everything is kept."""
    last = next((m for m in reversed(messages) if m.role == "assistant"), None)
    first_final = next((i for i, m in enumerate(messages) if m.channel == "final"), None)
    if last is None or last.channel != "final" or first_final is None:
        return list(messages)
    return [m for i, m in enumerate(messages) if i >= first_final or m.channel != "analysis"]


def message_pieces(message: Message) -> list[Piece]:
    """`<|start|>{header}<|message|>{content}` and `<|call|>` for tool calls, else `<|end|>`."""
    pieces: list[Piece] = [START, *_author(message)]
    if message.recipient is not None and message.recipient != "all":
        pieces.append(f" to={message.recipient}")
    if message.channel is not None:
        pieces += [CHANNEL, message.channel]
    if message.content_type is not None:
        kind = message.content_type
        pieces += [" ", CONSTRAIN, kind] if message.constrained else [f" {kind}"]
    tool_call = message.role == "assistant" and message.recipient is not None
    return [*pieces, MESSAGE, message.content, CALL if tool_call else END]


def system_text(conversation: Conversation) -> str:
    """Body of the system message."""
    effort = check_effort(conversation.reasoning_effort)
    top = [] if conversation.model_identity is None else [conversation.model_identity]
    if conversation.knowledge_cutoff is not None:
        top.append(f"Knowledge cutoff: {conversation.knowledge_cutoff}")
    if conversation.date is not None:
        top.append(f"Current date: {conversation.date}")
    channels = f"{_CHANNELS}\n{_TOOLS_CHANNEL}" if conversation.tools else _CHANNELS
    sections = ["\n".join(top)] if top else []
    return "\n\n".join([*sections, f"Reasoning: {effort}", channels])


def check_effort(effort: str) -> str:
    """`effort` in lower case if it is one of EFFORTS, else a one-line `GptossError`."""
    if effort.strip().lower() not in EFFORTS:
        raise GptossError(f"reasoning effort {effort!r} is not one of: {', '.join(EFFORTS)}")
    return effort.strip().lower()


def developer_text(conversation: Conversation) -> str | None:
    """Body of the developer message, or None when there are no instructions and no tools."""
    sections = []
    if conversation.instructions is not None:
        sections += ["# Instructions", conversation.instructions]
    if conversation.tools or conversation.namespaces:
        sections.append(tools_text(conversation.tools, conversation.namespaces))
    return "\n\n".join(sections) if sections else None


def tools_text(tools: list[ToolDef], namespaces: list[ToolNamespace] = ()) -> str:
    """The `# Tools` section: `tools` in `namespace functions` and each of `namespaces`, in
    order of name, as harmony renders them."""
    groups = [ToolNamespace(FUNCTIONS[:-1], "", tools)] if tools else []
    groups = sorted([*groups, *namespaces], key=lambda group: group.name)
    return "# Tools\n\n" + "\n\n".join(_namespace_text(group) for group in groups)


def _namespace_text(group: ToolNamespace) -> str:
    lines = [f"## {group.name}\n", *(f"// {line}" for line in _lines(group.description))]
    lines.append(f"namespace {group.name} {{\n")
    for tool in group.tools:
        lines += [f"// {line}" for line in _lines(tool.description)]
        args = "" if tool.parameters is None else f"_: {schema_to_typescript(tool.parameters)}"
        lines.append(f"type {tool.name} = ({args}) => any;\n")
    lines.append(f"}} // namespace {group.name}")
    return "\n".join(lines)


def schema_to_typescript(schema: Any, indent: str = "") -> str:
    """A JSON schema as harmony's TypeScript-like type (its quirks included)."""
    if _list(schema, "oneOf") is not None:
        return "".join(f"\n{indent} | {_variant(v, indent)}" for v in schema["oneOf"])
    kinds = _list(schema, "type")
    names = ["number" if k == "integer" else k for k in kinds or [] if isinstance(k, str)]
    if names:
        return " | ".join(names)
    kind = _str(schema, "type")
    if kind == "object":
        return _object_type(schema, indent)
    if kind == "string":
        values = [f'"{v}"' for v in _list(schema, "enum") or [] if isinstance(v, str)]
        return " | ".join(values) or "string"
    if kind == "array":
        items = schema.get("items")
        return f"{schema_to_typescript(items, indent)}[]" if "items" in schema else "Array<any>"
    return {"number": "number", "integer": "number", "boolean": "boolean"}.get(kind or "", "any")


def _object_type(schema: dict[str, Any], indent: str) -> str:
    description = _str(schema, "description")
    out = f"{indent}// {description}\n{{\n" if description is not None else "{\n"
    required = {r for r in _list(schema, "required") or [] if isinstance(r, str)}
    properties = schema.get("properties")
    for key, prop in properties.items() if isinstance(properties, dict) else ():
        out += _property(key, prop, key in required, indent)
    return out + f"{indent}}}"


def _property(key: str, prop: Any, required: bool, indent: str) -> str:
    out = _comments(prop, indent)
    name = key if required else f"{key}?"
    variants = _list(prop, "oneOf")
    if variants is not None:
        return out + _one_of_property(name, prop, variants, indent)
    out += f"{indent}{name}: {_nullable(prop, schema_to_typescript(prop, indent + '    '))},"
    if _has(prop, "default") and not _has(prop, "oneOf"):
        out += f" // {_default(prop)}"
    return out + "\n"


def _comments(prop: Any, indent: str) -> str:
    """Title, description and examples of a property, as `//` lines above it."""
    out = ""
    if (title := _str(prop, "title")) is not None:
        out += f"{indent}// {title}\n{indent}//\n"
    if not _has(prop, "oneOf") and (description := _str(prop, "description")) is not None:
        out += f"{indent}// {description}\n"
    examples = [e for e in _list(prop, "examples") or [] if isinstance(e, str)]
    if _list(prop, "examples"):
        out += f"{indent}// Examples:\n" + "".join(f'{indent}// - "{e}"\n' for e in examples)
    return out


def _one_of_property(name: str, prop: dict[str, Any], variants: list[Any], indent: str) -> str:
    description = _str(prop, "description")
    # The property's description is not repeated when the first variant carries the same one.
    repeated = bool(variants) and _str(variants[0], "description") == description
    above = description is not None and not repeated
    out = f"{indent}// {description}\n" if above else ""
    if _has(prop, "default"):
        out += f"{indent}// {_default(prop)}\n"
    out += f"{indent}{name}:\n"
    for i, variant in enumerate(variants):
        notes = []
        own = _str(variant, "description")
        if own is not None and own != description and not (i == 0 and above):
            notes.append(own)
        if _has(variant, "default"):
            notes.append(_default(variant))
        comment = f" // {' '.join(notes)}" if notes else ""
        text = _nullable(variant, schema_to_typescript(variant, indent + "   "))
        out += f"{indent} | {text}{comment}\n"
    return out + f"{indent},\n"


def _variant(variant: Any, indent: str) -> str:
    """One alternative of a top-level oneOf, with its description and default as a comment."""
    text = _nullable(variant, schema_to_typescript(variant, indent + "   "))
    notes = [_str(variant, "description")]
    if _has(variant, "default"):
        notes.append(_default(variant, quote_enum=True))
    notes = [n for n in notes if n is not None]
    return f"{text} // {' '.join(notes)}" if notes else text


def _default(schema: dict[str, Any], quote_enum: bool = False) -> str:
    value = schema["default"]
    if isinstance(value, str) and not _list(schema, "enum"):
        return f'default: "{value}"'
    if isinstance(value, str) and not quote_enum:
        return f"default: {value}"
    return f"default: {json.dumps(value, ensure_ascii=False, separators=(',', ':'))}"


def _nullable(schema: Any, text: str) -> str:
    nullable = _has(schema, "nullable") and schema["nullable"] is True
    return f"{text} | null" if nullable and "null" not in text else text


def _has(schema: Any, key: str) -> bool:
    return isinstance(schema, dict) and key in schema


def _str(schema: Any, key: str) -> str | None:
    value = schema.get(key) if isinstance(schema, dict) else None
    return value if isinstance(value, str) else None


def _list(schema: Any, key: str) -> list[Any] | None:
    value = schema.get(key) if isinstance(schema, dict) else None
    return value if isinstance(value, list) else None


def _lines(text: str) -> list[str]:
    """Rust's str::lines: split on \\n, no final empty line, a trailing \\r dropped."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _author(message: Message) -> list[Piece]:
    if message.role not in ROLES:
        raise GptossError(f"message role {message.role!r} is not one of: {', '.join(ROLES)}")
    if message.role == "tool":
        if not message.name:
            raise GptossError("a tool message needs the tool's name, e.g. functions.get_weather")
        return [message.name]
    return [message.role] if message.name is None else [message.role, f":{message.name}"]


def _encode(pieces: list[Piece], tokenizer: Tokenizer) -> list[int]:
    ids: list[int] = []
    for piece in pieces:
        if isinstance(piece, int):
            ids.append(piece)
        else:
            ids += tokenizer.encode(piece)
    return ids
