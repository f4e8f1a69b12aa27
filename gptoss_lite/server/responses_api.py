"""`POST /v1/responses`: the Responses API, the one gpt-oss was trained for, on harmony.

`input` is a string (one user message) or a list of items: messages (with or without
`"type": "message"`), `function_call`, `function_call_output` and `reasoning`. `instructions`
become the developer instructions, `reasoning.effort` the system message's effort, function
`tools` the declared functions, `max_output_tokens` the limit. The output is a list of items:
`reasoning` (the analysis, as `reasoning_text`), `message` (`output_text`) and `function_call`.
Streamed, it is the standard event sequence: `response.created`, `response.in_progress`, per item
`response.output_item.added`, its deltas (`response.reasoning_text.delta`,
`response.output_text.delta`, `response.function_call_arguments.delta`) and `.done` events,
`response.output_item.done`, then `response.completed` (or `response.incomplete` at the limit).
A stored response (the default) can be continued with `previous_response_id`: its turns are kept
in memory, the newest `STORED_RESPONSES` of them.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..chat.harmony import Message, render_prompt
from ..chat.reply import Change, Part, Reply, new_id
from . import conversation as conv
from . import formats
from .errors import ApiError
from .service import Service, changes, guarded, sse
from .worker import Done, Job

STORED_RESPONSES = 512  # the oldest stored response is forgotten beyond this many


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputItem(_Body):
    type: str = "message"
    role: str | None = None
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    arguments: str | None = None
    call_id: str | None = None
    output: str | list[dict[str, Any]] | None = None
    summary: list[dict[str, Any]] | None = None


class ResponseTool(_Body):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextOptions(_Body):
    format: dict[str, Any] | None = None


class ReasoningOptions(_Body):
    effort: str | None = None


class ResponsesRequest(_Body):
    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    reasoning: ReasoningOptions | None = None
    tools: list[ResponseTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    previous_response_id: str | None = None
    store: bool = True
    metadata: dict[str, Any] | None = None
    text: TextOptions | None = None


@dataclass
class Turns:
    """A conversation's harmony turns so far and the function name of each call id in them."""

    messages: list[Message] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)


class ResponseStore:
    """The turns of the newest stored responses, by response id."""

    def __init__(self, limit: int = STORED_RESPONSES) -> None:
        self.limit = limit
        self._turns: OrderedDict[str, Turns] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, response_id: str) -> Turns:
        with self._lock:
            turns = self._turns.get(response_id)
        if turns is None:
            raise ApiError(
                400,
                f"previous response {response_id!r} not found (this server keeps the newest "
                f"{self.limit} in memory)",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return Turns(list(turns.messages), dict(turns.names))

    def put(self, response_id: str, turns: Turns) -> None:
        with self._lock:
            self._turns[response_id] = turns
            while len(self._turns) > self.limit:
                self._turns.popitem(last=False)


@dataclass
class Pending:
    """A response being generated: the request, its turns, and where the reply goes."""

    body: ResponsesRequest
    turns: Turns
    job: Job
    reply: Reply
    id: str = field(default_factory=lambda: new_id("resp_"))
    created_at: int = field(default_factory=lambda: int(time.time()))


def prepare(body: ResponsesRequest, service: Service, store: ResponseStore) -> Pending:
    """Render the request after any previous response, check it fits, and queue it."""
    service.check_model(body.model)
    turns = store.get(body.previous_response_id) if body.previous_response_id else Turns()
    instructions = add_input(turns, body.input)
    tools = [_tool(t, i) for i, t in enumerate(body.tools or [])]
    tools, forced = conv.tools_for(tools, body.tool_choice)
    spec = body.text.format if body.text else None
    answer = (*formats.answer_format(spec, "text.format"), "text.format")
    declared = [
        (f"tools.{i}", t.name, t.parameters, t.strict is True)
        for i, t in enumerate(body.tools or [])
        if tools
    ]
    grammar = formats.reply_grammar(service.tokenizer, answer, declared, forced)
    chat = conv.conversation(
        turns.messages,
        instructions=[body.instructions or "", *instructions],
        tools=tools,
        effort=body.reasoning.effort if body.reasoning else None,
        effort_param="reasoning.effort",
    )
    call = conv.forced_call(forced, service.tokenizer)
    prompt = render_prompt(chat, service.tokenizer) + call
    sampling = service.sampling(
        prompt,
        max_tokens=body.max_output_tokens,
        max_param="max_output_tokens",
        prompt_param="input",
        temperature=body.temperature,
        top_p=body.top_p,
    )
    reply = Reply(service.tokenizer, tools=[t.name for t in tools], prefix=call)
    job = service.submit(prompt, sampling, grammar=grammar, prefix=call)
    return Pending(body, turns, job, reply)


def add_input(turns: Turns, input: str | list[InputItem]) -> list[str]:
    """Append the input items to `turns`; return the system and developer texts among them."""
    if isinstance(input, str):
        turns.messages.append(Message.user(input))
        return []
    instructions = []
    for i, item in enumerate(input):
        where = f"input.{i}"
        if item.type == "message" and item.role in ("system", "developer"):
            instructions.append(_text(item.content, where))
        elif item.type == "message" and item.role == "user":
            turns.messages.append(Message.user(_text(item.content, where)))
        elif item.type == "message" and item.role == "assistant":
            turns.messages.append(conv.answer(_text(item.content, where)))
        elif item.type == "reasoning":
            thought = _text(item.content or item.summary, where)
            if thought:
                turns.messages.append(conv.reasoning(thought))
        elif item.type == "function_call" and item.name and item.call_id:
            turns.names[item.call_id] = item.name
            turns.messages.append(conv.tool_call(item.name, item.arguments or ""))
        elif item.type == "function_call_output" and item.call_id in turns.names:
            output = _text(item.output, where)
            turns.messages.append(conv.tool_output(turns.names[item.call_id], output))
        else:
            raise ApiError(400, f"{where}: {_unsupported(item)}", param=where)
    return instructions


def _unsupported(item: InputItem) -> str:
    if item.type == "message":
        return f"message role {item.role!r} is not one of: user, assistant, system, developer"
    if item.type == "function_call":
        return "a function_call needs a name and a call_id"
    if item.type == "function_call_output":
        return f"call_id {item.call_id!r} names no earlier function_call"
    return f"input items of type {item.type!r} are not supported"


def _text(content: str | list[dict[str, Any]] | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = [part.get("text") for part in content]
    if not all(isinstance(text, str) for text in texts):
        raise ApiError(400, f"{where}: only text content is supported", param=where)
    return "".join(texts)


def _tool(tool: ResponseTool, i: int) -> Any:
    where = f"tools.{i}"
    if tool.type != "function":
        raise ApiError(400, f"{where}: only function tools are supported", param=where)
    return conv.function_tool(where, tool.name, tool.description, tool.parameters)


def finish(pending: Pending, done: Done, store: ResponseStore) -> dict:
    """The finished response object; stored for `previous_response_id` unless `store` is off."""
    if pending.body.store and done.finish_reason != "interrupted":
        turns = pending.turns
        for part in pending.reply.parts:
            turns.messages.append(_turn(part))
            if part.kind == "tool_call":
                turns.names[part.call_id] = part.name
        store.put(pending.id, turns)
    incomplete = pending.reply.finish_reason(done.finish_reason) == "length"
    return {
        **_response(pending, "incomplete" if incomplete else "completed"),
        "output": [_item(part, "completed") for part in pending.reply.parts],
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "usage": usage(pending.reply, done),
    }


def usage(reply: Reply, done: Done) -> dict:
    counts = reply.usage(done.stats)
    return {
        "input_tokens": counts.prompt_tokens,
        "input_tokens_details": {"cached_tokens": counts.cached_tokens},
        "output_tokens": counts.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": counts.reasoning_tokens},
        "total_tokens": counts.total_tokens,
    }


def _turn(part: Part) -> Message:
    if part.kind == "reasoning":
        return conv.reasoning(part.text)
    if part.kind == "tool_call":
        return conv.tool_call(part.name, part.text)
    return conv.answer(part.text)


def _response(pending: Pending, status: str) -> dict:
    body = pending.body
    return {
        "id": pending.id,
        "object": "response",
        "created_at": pending.created_at,
        "status": status,
        "model": body.model,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": body.reasoning.effort if body.reasoning else None},
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tool_choice": body.tool_choice or "auto",
        "tools": [t.model_dump(exclude_none=True) for t in body.tools or []],
        "parallel_tool_calls": False,
        "text": {"format": (body.text and body.text.format) or {"type": "text"}},
        "truncation": "disabled",
        "store": body.store,
        "metadata": body.metadata or {},
        "usage": None,
    }


def _item(part: Part, status: str) -> dict:
    """The output item of a part, with its text so far."""
    if part.kind == "tool_call":
        return {
            "type": "function_call",
            "id": part.id,
            "call_id": part.call_id,
            "name": part.name,
            "arguments": part.text,
            "status": status,
        }
    content = [_content(part)] if status == "completed" else []
    if part.kind == "reasoning":
        return {"type": "reasoning", "id": part.id, "summary": [], "content": content}
    message = {"type": "message", "id": part.id, "status": status, "role": "assistant"}
    return {**message, "content": content}


def _content(part: Part, text: str | None = None) -> dict:
    text = part.text if text is None else text
    if part.kind == "reasoning":
        return {"type": "reasoning_text", "text": text}
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def stream(pending: Pending, store: ResponseStore) -> AsyncIterator[str]:
    """The response as server-sent events, in the standard order."""
    sequence = itertools.count()

    def event(kind: str, **data: Any) -> str:
        return sse({"type": kind, "sequence_number": next(sequence), **data}, event=kind)

    async def events() -> AsyncIterator[str]:
        yield event("response.created", response=_response(pending, "in_progress"))
        yield event("response.in_progress", response=_response(pending, "in_progress"))
        async for item in changes(pending.job, pending.reply):
            if isinstance(item, Done):
                response = finish(pending, item, store)
                yield event(f"response.{response['status']}", response=response)
            else:
                for change in item:
                    for kind, data in _events(change):
                        yield event(kind, **data)

    return guarded(events(), pending.job, lambda error: event("error", **error.body()["error"]))


def _events(change: Change) -> list[tuple[str, dict]]:
    """The stream events of one change to a part."""
    part = change.part
    at = {"item_id": part.id, "output_index": part.index}
    if change.kind == "open":
        added = [
            (
                "response.output_item.added",
                {"output_index": part.index, "item": _item(part, "in_progress")},
            )
        ]
        if part.kind != "tool_call":
            empty = _content(part, "")
            added.append(("response.content_part.added", {**at, "content_index": 0, "part": empty}))
        return added
    if change.kind == "delta":
        if part.kind == "tool_call":
            return [("response.function_call_arguments.delta", {**at, "delta": change.text})]
        kind = "reasoning_text" if part.kind == "reasoning" else "output_text"
        extra = {"logprobs": []} if part.kind == "text" else {}
        delta = {**at, "content_index": 0, "delta": change.text, **extra}
        return [(f"response.{kind}.delta", delta)]
    done = [
        (
            "response.output_item.done",
            {"output_index": part.index, "item": _item(part, "completed")},
        )
    ]
    if part.kind == "tool_call":
        args = {**at, "name": part.name, "arguments": part.text}
        return [("response.function_call_arguments.done", args), *done]
    kind = "reasoning_text" if part.kind == "reasoning" else "output_text"
    extra = {"logprobs": []} if part.kind == "text" else {}
    text_done = {**at, "content_index": 0, "text": part.text, **extra}
    part_done = {**at, "content_index": 0, "part": _content(part)}
    return [(f"response.{kind}.done", text_done), ("response.content_part.done", part_done), *done]
