"""The tools a request declares, sorted into what the model is shown and what is left out.

`responses_tools` reads the Responses API's `tools`, `chat_tools` Chat Completions'. By type:

- `function`: declared in harmony's `namespace functions`.
- `namespace` (Responses; a named group of function or custom tools, as Codex sends
  `multi_agent_v1`): its own harmony namespace beside `functions`, as openai-harmony renders one;
  a call to one of its tools comes back named by the tool, with the namespace apart.
- `custom` (free-text input, optionally in a grammar, as Codex offers `apply_patch`): declared as
  a function of one string whose description carries the grammar, since gpt-oss calls functions
  with JSON; the call's input is that string (`custom_input`), returned as a custom tool call.
- hosted tools that cannot run on this machine (`HOSTED`: web and file search, code interpreter,
  computer use, image generation, remote MCP, shell, tool search): left out of the prompt, with
  one warning a request naming them, never a 400: a client cannot know which tools a local server
  runs (Codex sends `web_search` with every request).

Any other type is a 400 naming it, as are a namespace without tools and a tool name declared
twice, in any namespaces (clients tell calls apart by the tool's name). A function tool with
`"strict": true` has its arguments held to its parameters (`formats`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from ..chat.harmony import ToolDef, ToolNamespace
from . import conversation as conv
from .body import strict_json
from .errors import ApiError, shown

HOSTED = frozenset(
    {
        "web_search", "web_search_2025_08_26", "web_search_preview",
        "web_search_preview_2025_03_11", "file_search", "code_interpreter", "computer",
        "computer_use_preview", "image_generation", "mcp", "local_shell", "shell",
        "apply_patch", "tool_search", "programmatic_tool_calling",
    }
)  # fmt: skip
STRING = {"type": "string"}  # a custom tool's one argument
_log = logging.getLogger("gptoss_lite.server")


@dataclass
class Declared:
    """What the model is told about: function tools (custom ones among them), namespaces, and
    the hosted tools left out (as "type (tools.N)")."""

    functions: list[ToolDef] = field(default_factory=list)
    namespaces: list[ToolNamespace] = field(default_factory=list)
    custom: set[str] = field(default_factory=set)  # names of the free-text tools
    strict: dict[str, str] = field(default_factory=dict)  # name -> the field of its parameters
    left_out: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Every tool the model may call, `namespace.tool` outside `functions`."""
        spaced = [f"{n.name}.{t.name}" for n in self.namespaces for t in n.tools]
        return [t.name for t in self.functions] + spaced

    def chosen(self, tool_choice: Any, param: str = "tool_choice") -> tuple[Declared, str | None]:
        """The tools to declare under `tool_choice` ("none": none) and the start of the call it
        forces, if any (`conversation.tools_for`)."""
        if tool_choice == "none":
            return Declared(left_out=self.left_out), None
        functions, forced = conv.tools_for(self.functions, tool_choice, param)
        return replace(self, functions=functions), forced

    def report(self) -> None:
        """One warning naming the hosted tools left out, if any."""
        if self.left_out:
            _log.warning(
                "left out of the prompt, this server cannot run them: %s", ", ".join(self.left_out)
            )


def responses_tools(tools: list[Any] | None) -> Declared:
    """The Responses API's `tools`: function, custom and namespace tools, hosted ones left out."""
    declared, seen = Declared(), {}
    for i, tool in enumerate(tools or []):
        where = f"tools.{i}"
        kind = _kind(tool, where)
        if kind == "namespace":
            declared.namespaces.append(_namespace(tool, where, declared, seen))
        elif kind in HOSTED:
            declared.left_out.append(f"{kind} ({where})")
        else:
            declared.functions.append(_tool(kind, tool, where, declared, seen))
    return declared


def chat_tools(tools: list[Any] | None) -> Declared:
    """Chat Completions' `tools`: `{"type": "function", "function": {...}}` and
    `{"type": "custom", "custom": {...}}`."""
    declared, seen = Declared(), {}
    for i, tool in enumerate(tools or []):
        where = f"tools.{i}"
        kind = _kind(tool, where, ("function", "custom"))
        spec = tool.get(kind)
        if not isinstance(spec, dict):
            raise ApiError(400, f"{where}.{kind}: expected an object", param=f"{where}.{kind}")
        declared.functions.append(_tool(kind, spec, f"{where}.{kind}", declared, seen))
    return declared


def custom_input(arguments: str) -> str:
    """The input of a custom tool's call: the model declares it a string, so a JSON string is
    decoded; any other text (a lone surrogate escaped in it too) is the input as written."""
    try:
        value = strict_json(arguments)
    except ApiError:
        return arguments
    return value if isinstance(value, str) else arguments


def _kind(tool: Any, where: str, known: tuple[str, ...] | None = None) -> str:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if not isinstance(kind, str):
        raise ApiError(400, f"{where}: a tool is an object with a type", param=f"{where}.type")
    types = known or ("function", "custom", "namespace", *sorted(HOSTED))
    if kind not in types:
        raise ApiError(
            400,
            f"{where}.type: unknown tool type {shown(kind)}; known types: {', '.join(types)}",
            param=f"{where}.type",
            code="invalid_value",
        )
    return kind


def _tool(kind: str, spec: dict, where: str, declared: Declared, seen: dict, space: str = ""):
    """A function or custom tool; `space` is the namespace it is declared in, if not functions."""
    name = spec.get("name")
    if kind == "function":
        tool = conv.function_tool(where, name, spec.get("description"), spec.get("parameters"))
        if spec.get("strict") is True:
            declared.strict[f"{space}.{name}" if space else name] = f"{where}.parameters"
    else:
        tool = conv.function_tool(where, name, _custom_description(spec, where), STRING)
        declared.custom.add(f"{space}.{name}" if space else name)
    if name in seen:
        raise ApiError(
            400,
            f"{where}.name: the tool name {name!r} is declared twice (also at {seen[name]})",
            param=f"{where}.name",
        )
    seen[name] = where
    return tool


def _namespace(spec: dict, where: str, declared: Declared, seen: dict) -> ToolNamespace:
    name, tools = conv.tool_name(spec.get("name"), f"{where}.name"), spec.get("tools")
    if name == "functions" or any(n.name == name for n in declared.namespaces):
        raise ApiError(400, f"{where}.name: the namespace {name!r} is taken", param=f"{where}.name")
    if not isinstance(tools, list) or not tools:
        raise ApiError(
            400, f"{where}.tools: a namespace needs at least one tool", param=f"{where}.tools"
        )
    inner = []
    for j, tool in enumerate(tools):
        at = f"{where}.tools.{j}"
        inner.append(_tool(_kind(tool, at, ("function", "custom")), tool, at, declared, seen, name))
    description = spec.get("description")
    return ToolNamespace(name, description if isinstance(description, str) else "", inner)


def _custom_description(spec: dict, where: str) -> str:
    """A custom tool's description, with its grammar if it has one. Responses gives `format:
    {type: grammar, syntax, definition}`, Chat Completions nests the grammar: `format: {type:
    grammar, grammar: {syntax, definition}}`."""
    description, param = spec.get("description") or "", f"{where}.format"
    form = spec.get("format") or {"type": "text"}
    if not isinstance(form, dict) or form.get("type") not in ("text", "grammar"):
        raise ApiError(400, f"{param}: use {{type: text}} or a grammar", param=param)
    if form["type"] == "text":
        return description
    grammar = form.get("grammar", form)
    grammar = grammar if isinstance(grammar, dict) else {}
    syntax, definition = grammar.get("syntax"), grammar.get("definition")
    if syntax not in ("lark", "regex") or not isinstance(definition, str):
        message = f"{param}: a grammar has a syntax (lark or regex) and a definition"
        raise ApiError(400, message, param=param)
    return f"{description}\n\nThe string follows this {syntax} grammar:\n{definition}".strip()
