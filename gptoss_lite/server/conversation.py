"""What both APIs do to a request's turns before they are rendered as harmony.

Each endpoint turns its own message or item list into harmony `Message`s with these helpers;
`conversation` then assembles the `Conversation`: system and developer texts of the request
become the developer instructions (the model identity stays harmony's), function tools (and
namespaces of them) are declared unless `tool_choice` is "none" (a `tool_choice` that demands a
call opens the reply with the call's header, `forced_call`), and reasoning is kept only where
harmony wants it: the analysis of turns after the last user message (a tool-call chain still
under way) stays, every earlier one is dropped, whether or not the client sent it back.
`truncated` drops the oldest turns until a prompt fits (the Responses API's `truncation`).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import replace
from typing import Any

from ..chat.harmony import (
    EFFORTS,
    Conversation,
    Message,
    ToolDef,
    ToolNamespace,
    check_effort,
    check_tool_name,
    prompt_size,
    render_prompt,
    tool_recipient,
)
from ..chat.tokenizer import Tokenizer
from ..chat.tokens import CHANNEL, CONSTRAIN, MESSAGE
from ..errors import GptossError
from .errors import ApiError, shown
from .service import Service


def conversation(
    messages: list[Message],
    *,
    instructions: list[str],
    tools: list[ToolDef],
    effort: str | None,
    effort_param: str,
    namespaces: list[ToolNamespace] = (),
) -> Conversation:
    """The harmony conversation of a request."""
    try:
        effort = check_effort(effort or "medium")
    except GptossError:
        message = f"{effort_param}: {shown(effort)} is not one of: {', '.join(EFFORTS)}"
        raise ApiError(400, message, param=effort_param, code="invalid_value") from None
    texts = [text for text in instructions if text]
    return Conversation(
        messages=keep_chain_reasoning(messages),
        instructions="\n\n".join(texts) if texts else None,
        tools=tools,
        namespaces=list(namespaces),
        reasoning_effort=effort,
        date=datetime.date.today().isoformat(),
    )


def render(
    chat: Conversation, forced: str | None, service: Service, param: str
) -> tuple[list[int], list[int]]:
    """The prompt of `chat` (ending in the forced call's header, if any) and that header; a
    text too large for the context is refused before it is tokenized."""
    service.check_text(prompt_size(chat), param)
    call = forced_call(forced, service.tokenizer)
    return render_prompt(chat, service.tokenizer) + call, call


def truncated(chat: Conversation, tokenizer: Tokenizer, budget: int) -> Conversation:
    """`chat` without its oldest turns, as few dropped as let its prompt fit in `budget` tokens
    (the Responses API's `truncation: "auto"`); the last turn always stays."""

    def size(dropped: int) -> int:
        return len(render_prompt(replace(chat, messages=chat.messages[dropped:]), tokenizer))

    low, high = 0, max(len(chat.messages) - 1, 0)  # the prompt shrinks as more are dropped
    if size(low) <= budget:
        return chat
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if size(middle) <= budget else (middle + 1, high)
    return replace(chat, messages=chat.messages[low:])


def keep_chain_reasoning(messages: list[Message]) -> list[Message]:
    """Drop the analysis of every turn before the last user message."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    return [m for i, m in enumerate(messages) if i > last_user or m.channel != "analysis"]


def reasoning(text: str) -> Message:
    """The assistant's analysis of an earlier turn."""
    return Message("assistant", text, channel="analysis")


def answer(text: str) -> Message:
    """The assistant's answer of an earlier turn."""
    return Message("assistant", text, channel="final")


def tool_call(name: str, arguments: str) -> Message:
    """An earlier call of function `name` (`namespace.name` outside `functions`) with its JSON
    `arguments`."""
    return Message.tool_call(name, arguments)


def custom_call(name: str, text: str) -> Message:
    """An earlier call of custom tool `name` with its free-text input (declared a string)."""
    return Message.tool_call(name, json.dumps(text, ensure_ascii=False))


def tool_output(name: str, output: str) -> Message:
    """What function `name` (`namespace.name` outside `functions`) returned."""
    return Message.tool_result(tool_recipient(name), output)


def tool_name(name: Any, param: str) -> str:
    """`name` if it follows the one rule for tool names (`harmony.check_tool_name`), else a 400
    naming `param`: a declared tool's name, or one in the history, which goes into a message
    header where spaces, newlines or markup would rewrite it."""
    try:
        return check_tool_name(name, param)
    except GptossError as error:
        raise ApiError(400, str(error), param=param, code="invalid_value") from None


def function_tool(
    where: str, name: str | None, description: str | None, parameters: Any
) -> ToolDef:
    """The function tool declared at `where` (e.g. "tools.0"): its name must follow the one
    rule for tool names, its parameters be a JSON-schema object if given."""
    tool_name(name, f"{where}.name")
    if parameters is not None and not isinstance(parameters, dict):
        param = f"{where}.parameters"
        raise ApiError(400, f"{param}: must be a JSON schema object", param=param)
    return ToolDef(name, description or "", parameters or None)


def tools_for(
    tools: list[ToolDef], tool_choice: Any, param: str = "tool_choice"
) -> tuple[list[ToolDef], str | None]:
    """The tools to declare and, when `tool_choice` demands a call, the start of its recipient:
    "functions." for "required" (the model picks the function), "functions.NAME" for a named
    one. None lets the model choose ("auto", or no choice); "none" declares no tools."""
    if tool_choice is None or tool_choice == "auto":
        return tools, None
    if tool_choice == "none":
        return [], None
    if not tools:
        raise ApiError(400, f"{param} asks for a tool call but no tools are given", param=param)
    if tool_choice == "required":
        return tools, "functions."
    named = tool_choice.get("function", tool_choice) if isinstance(tool_choice, dict) else None
    name = named.get("name") if isinstance(named, dict) else None
    if not isinstance(name, str):
        raise ApiError(
            400,
            f"{param} {shown(tool_choice)}: use 'auto', 'none', 'required' or a function name",
            param=param,
            code="invalid_value",
        )
    if name not in {tool.name for tool in tools}:
        raise ApiError(
            400, f"{param} names {shown(name)}, which is not among the tools", param=param
        )
    return tools, f"functions.{name}"


def forced_call(recipient: str | None, tokenizer: Tokenizer) -> list[int]:
    """The tokens that open the assistant's reply as a call to `recipient` (a whole function
    name, or just "functions." for the model to finish), the way gpt-oss writes a call header."""
    if recipient is None:
        return []
    if recipient == "functions.":
        return [CHANNEL, *tokenizer.encode(f"commentary to={recipient}")]
    header = tokenizer.encode(f"commentary to={recipient} ")
    return [CHANNEL, *header, CONSTRAIN, *tokenizer.encode("json"), MESSAGE]
