"""`POST /v1/responses`: the Responses API, the one gpt-oss was trained for, on harmony.

`input` is a string (one user message) or a list of items: messages (with or without
`"type": "message"`), `function_call` (with its `namespace`, if any) and `custom_tool_call`, their
outputs, and `reasoning` (its `content`, else its `summary`). `instructions` become the developer
instructions, `reasoning.effort` the system message's effort, `tools` the declared tools
(tools.py: functions, namespaces and custom tools; hosted ones are left out), `max_output_tokens`
the limit; with `truncation: "auto"` the oldest turns are dropped until the input fits. The
output is a list of items: `reasoning` (the analysis, as `reasoning_text`, or as the summary when
`reasoning.summary` asks for one, since gpt-oss writes no separate summary), `message`
(`output_text`), `function_call` and `custom_tool_call`. Streamed, it is the standard event
sequence: `response.created`, `response.in_progress`, per item `response.output_item.added`, its
deltas (`response.reasoning_text.delta` or the summary's part and text events,
`response.output_text.delta`, `response.function_call_arguments.delta`,
`response.custom_tool_call_input.delta`) and `.done` events, `response.output_item.done`, then
`response.completed` (or `response.incomplete` at the limit, or at shutdown). `include:
["message.output_text.logprobs"]` or `top_logprobs` add the answer tokens' log-probabilities to
its text and deltas. With `include: ["reasoning.encrypted_content"]` a reasoning item carries
`encrypted_content: null`: the analysis is plain text that the client sends back in the item, so
there is nothing to encrypt. The response echoes the request's settings: `parallel_tool_calls`
as asked (gpt-oss makes one call a turn either way), `prompt_cache_key`, `safety_identifier`,
`service_tier`, `truncation`. A stored response (the default) can be continued with
`previous_response_id`: its turns are kept in memory (`store.ResponseStore`, within a byte
budget).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..chat.harmony import Message
from ..chat.reply import Change, Part, Reply, new_id
from ..chat.tokenizer import Tokenizer
from ..engine.logprobs import MAX_TOP
from . import conversation as conv
from . import formats
from .errors import ApiError, shown
from .logprobs import entries
from .service import Prepared, Service, changes, guarded, sse
from .store import ResponseStore, Turns
from .tools import Declared, custom_input, responses_tools
from .worker import Done, Job

INCOMPLETE = {"length": "max_output_tokens", "interrupted": "interrupted"}  # finish -> reason
MetadataKey = Annotated[str, StringConstraints(max_length=64)]  # the OpenAI API's limits
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
OUTPUTS = ("function_call_output", "custom_tool_call_output")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputItem(_Body):
    type: str = "message"
    role: str | None = None
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    namespace: str | None = None
    arguments: str | None = None
    input: str | None = None  # a custom tool call's
    call_id: str | None = None
    output: str | list[dict[str, Any]] | None = None
    summary: list[dict[str, Any]] | None = None


class TextOptions(_Body):
    format: dict[str, Any] | None = None


class ReasoningOptions(_Body):
    effort: str | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None  # its older name


Include = Literal[
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
    # about hosted tools and images, which this server leaves out: nothing to add
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
]


class ResponsesRequest(_Body):
    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    reasoning: ReasoningOptions | None = None
    tools: list[Any] | None = None  # read by tools.responses_tools, echoed as sent
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    previous_response_id: str | None = None
    store: bool = True
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)
    text: TextOptions | None = None
    include: list[Include] | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    prompt_cache_key: str | None = None  # the prefix cache needs no key: the runner finds it
    safety_identifier: str | None = None
    service_tier: str | None = None
    user: str | None = None
    background: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP)

    @property
    def logprobs(self) -> bool:
        """Whether the client asked for the answer's log-probabilities."""
        return (
            "message.output_text.logprobs" in (self.include or ()) or self.top_logprobs is not None
        )

    @property
    def summary(self) -> bool:
        """Whether the client asked for a reasoning summary."""
        reasoning = self.reasoning
        return (
            reasoning is not None and (reasoning.summary or reasoning.generate_summary) is not None
        )


@dataclass
class Pending:
    """A response being generated: the request, its turns, its tools, what to generate and,
    once queued, its job."""

    body: ResponsesRequest
    turns: Turns
    tools: Declared
    prepared: Prepared
    tokenizer: Tokenizer
    job: Job | None = None
    id: str = field(default_factory=lambda: new_id("resp_"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    @property
    def reply(self) -> Reply:
        return self.prepared.reply


def prepare(body: ResponsesRequest, service: Service, store: ResponseStore) -> Pending:
    """Render the request after any previous response and check it fits."""
    service.check_model(body.model)
    if body.background:
        raise ApiError(400, "background: responses run in the foreground here", param="background")
    turns = store.get(body.previous_response_id) if body.previous_response_id else Turns()
    instructions = add_input(turns, body.input)
    tools, forced = responses_tools(body.tools).chosen(body.tool_choice)
    tools.report()
    answer = formats.answer_format(body.text.format if body.text else None, "text.format")
    grammar = formats.reply_grammar(service.tokenizer, answer, tools, forced)
    chat = conv.conversation(
        turns.messages,
        instructions=[body.instructions or "", *instructions],
        tools=tools.functions,
        namespaces=tools.namespaces,
        effort=body.reasoning.effort if body.reasoning else None,
        effort_param="reasoning.effort",
    )
    if body.truncation == "auto":  # the oldest turns go until the input fits
        header = len(conv.forced_call(forced, service.tokenizer))
        room = service.context - (body.max_output_tokens or 1) - header
        chat = conv.truncated(chat, service.tokenizer, room)
    prompt, call = conv.render(chat, forced, service, "input")
    sampling = service.sampling(
        prompt,
        max_tokens=body.max_output_tokens,
        max_param="max_output_tokens",
        prompt_param="input",
        temperature=body.temperature,
        top_p=body.top_p,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )
    reply = Reply(service.tokenizer, tools=tools.names, prefix=call)
    prepared = Prepared(prompt, sampling, reply, grammar=grammar, prefix=call)
    return Pending(body, turns, tools, prepared, service.tokenizer)


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
            name = conv.tool_name(item.name, f"{where}.name")
            if item.namespace:
                name = f"{conv.tool_name(item.namespace, f'{where}.namespace')}.{name}"
            turns.names[item.call_id] = name
            turns.messages.append(conv.tool_call(name, item.arguments or ""))
        elif item.type == "custom_tool_call" and item.name and item.call_id:
            turns.names[item.call_id] = conv.tool_name(item.name, f"{where}.name")
            turns.messages.append(conv.custom_call(item.name, item.input or ""))
        elif item.type in OUTPUTS and item.call_id in turns.names:
            output = _text(item.output, where)
            turns.messages.append(conv.tool_output(turns.names[item.call_id], output))
        else:
            raise ApiError(400, f"{where}: {_unsupported(item)}", param=where)
    return instructions


def _unsupported(item: InputItem) -> str:
    if item.type == "message":
        return f"message role {shown(item.role)} is not one of: user, assistant, system, developer"
    if item.type in ("function_call", "custom_tool_call"):
        return f"a {item.type} needs a name and a call_id"
    if item.type in OUTPUTS:
        return f"call_id {shown(item.call_id)} names no earlier tool call"
    return f"input items of type {shown(item.type)} are not supported"


def _text(content: str | list[dict[str, Any]] | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = [part.get("text") for part in content]
    if not all(isinstance(text, str) for text in texts):
        raise ApiError(400, f"{where}: only text content is supported", param=where)
    return "".join(texts)


def finish(pending: Pending, done: Done, store: ResponseStore) -> dict:
    """The finished response object; stored for `previous_response_id` unless `store` is off."""
    if pending.body.store and done.finish_reason != "interrupted":
        turns = pending.turns
        for part in pending.reply.parts:
            turns.messages.append(_turn(part))
            if part.kind == "tool_call":
                turns.names[part.call_id] = _qualified(part)
        store.put(pending.id, turns)
    reason = INCOMPLETE.get(pending.reply.finish_reason(done.finish_reason))
    return {
        **_response(pending, "incomplete" if reason else "completed"),
        "output": [_item(pending, part, "completed") for part in pending.reply.parts],
        "incomplete_details": {"reason": reason} if reason else None,
        "usage": usage(pending.reply, done),
    }


def usage(reply: Reply, done: Done) -> dict:
    counts = reply.usage(done.stats)
    return {
        "input_tokens": counts.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": counts.cached_tokens,
            # the tokens prefilled now stay in the KV cache for the next request
            "cache_write_tokens": counts.prompt_tokens - counts.cached_tokens,
        },
        "output_tokens": counts.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": counts.reasoning_tokens},
        "total_tokens": counts.total_tokens,
    }


def _turn(part: Part) -> Message:
    if part.kind == "reasoning":
        return conv.reasoning(part.text)
    if part.kind == "tool_call":
        return conv.tool_call(_qualified(part), part.text)  # as the model wrote it
    return conv.answer(part.text)


def _qualified(part: Part) -> str:
    return f"{part.namespace}.{part.name}" if part.namespace else part.name


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
        "reasoning": body.reasoning.model_dump() if body.reasoning else {"effort": None},
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tool_choice": body.tool_choice or "auto",
        "tools": body.tools or [],
        "parallel_tool_calls": body.parallel_tool_calls,
        "text": {"format": (body.text and body.text.format) or {"type": "text"}},
        "truncation": body.truncation,
        "store": body.store,
        "metadata": body.metadata or {},
        "prompt_cache_key": body.prompt_cache_key,
        "safety_identifier": body.safety_identifier,
        "service_tier": body.service_tier or "default",
        "user": body.user,
        "top_logprobs": body.top_logprobs,
        "usage": None,
    }


def _item(pending: Pending, part: Part, status: str) -> dict:
    """The output item of a part, with its text so far."""
    if part.kind == "tool_call" and _qualified(part) in pending.tools.custom:
        text = custom_input(part.text) if status == "completed" else ""
        call = {"type": "custom_tool_call", "id": part.id, "call_id": part.call_id}
        return {**call, "name": part.name, "input": text, "status": status}
    if part.kind == "tool_call":
        call = {"type": "function_call", "id": part.id, "call_id": part.call_id}
        space = {"namespace": part.namespace} if part.namespace else {}
        return {**call, "name": part.name, **space, "arguments": part.text, "status": status}
    if part.kind == "reasoning":
        done = status == "completed"
        summary = [_summary(part.text)] if done and pending.body.summary else []
        content = [_content(pending, part)] if done and not pending.body.summary else []
        item = {"type": "reasoning", "id": part.id, "summary": summary, "content": content}
        if "reasoning.encrypted_content" in (pending.body.include or ()):
            item["encrypted_content"] = None  # nothing to encrypt: the text goes back as is
        return item
    content = [_content(pending, part)] if status == "completed" else []
    message = {"type": "message", "id": part.id, "status": status, "role": "assistant"}
    return {**message, "content": content}


def _summary(text: str) -> dict:
    return {"type": "summary_text", "text": text}


def _content(pending: Pending, part: Part, whole: bool = True) -> dict:
    """A part's content, whole or (to open it) empty."""
    text = part.text if whole else ""
    if part.kind == "reasoning":
        return {"type": "reasoning_text", "text": text}
    logprobs = _logprobs(pending, part.logprobs if whole else ())
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def _logprobs(pending: Pending, logprobs) -> list[dict]:
    return entries(logprobs, pending.tokenizer) if pending.body.logprobs else []


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
                    for kind, data in _events(pending, change):
                        yield event(kind, **data)

    def error_event(error: ApiError) -> str:  # the error's own "type" has no place here
        fields = error.body()["error"]
        return event("error", code=fields["code"], message=fields["message"], param=fields["param"])

    return guarded(events(), pending.job, error_event)


def _events(pending: Pending, change: Change) -> list[tuple[str, dict]]:
    """The stream events of one change to a part."""
    part = change.part
    at = {"item_id": part.id, "output_index": part.index}
    item = ("response.output_item.added", {"output_index": part.index})
    kind = _kind(pending, part)
    if change.kind == "open":
        added = [(item[0], {**item[1], "item": _item(pending, part, "in_progress")})]
        if kind == "summary":
            empty = {**at, "summary_index": 0, "part": _summary("")}
            added.append(("response.reasoning_summary_part.added", empty))
        elif kind in ("reasoning_text", "output_text"):
            empty = {**at, "content_index": 0, "part": _content(pending, part, whole=False)}
            added.append(("response.content_part.added", empty))
        return added
    if change.kind == "delta":
        return _delta(pending, kind, at, change)
    done = ("response.output_item.done", {**item[1], "item": _item(pending, part, "completed")})
    if kind == "function_call":
        args = {**at, "name": part.name, "arguments": part.text}
        return [("response.function_call_arguments.done", args), done]
    if kind == "custom_tool_call":
        text = custom_input(part.text)  # whole: a JSON string is decoded only once complete
        delta = ("response.custom_tool_call_input.delta", {**at, "delta": text})
        return [delta, ("response.custom_tool_call_input.done", {**at, "input": text}), done]
    if kind == "summary":
        text = {**at, "summary_index": 0, "text": part.text}
        summary = {**at, "summary_index": 0, "part": _summary(part.text)}
        return [
            ("response.reasoning_summary_text.done", text),
            ("response.reasoning_summary_part.done", summary),
            done,
        ]
    extra = {"logprobs": _logprobs(pending, part.logprobs)} if kind == "output_text" else {}
    text_done = {**at, "content_index": 0, "text": part.text, **extra}
    part_done = {**at, "content_index": 0, "part": _content(pending, part)}
    return [(f"response.{kind}.done", text_done), ("response.content_part.done", part_done), done]


def _kind(pending: Pending, part: Part) -> str:
    """What a part streams as: function_call, custom_tool_call, summary, reasoning_text or
    output_text."""
    if part.kind == "tool_call":
        custom = _qualified(part) in pending.tools.custom
        return "custom_tool_call" if custom else "function_call"
    if part.kind == "reasoning":
        return "summary" if pending.body.summary else "reasoning_text"
    return "output_text"


def _delta(pending: Pending, kind: str, at: dict, change: Change) -> list[tuple[str, dict]]:
    text = change.text
    if kind == "function_call":
        return [("response.function_call_arguments.delta", {**at, "delta": text})]
    if kind == "custom_tool_call":
        return []  # sent whole when the call ends
    if kind == "summary":
        return [
            ("response.reasoning_summary_text.delta", {**at, "summary_index": 0, "delta": text})
        ]
    extra = {"logprobs": _logprobs(pending, change.logprobs)} if kind == "output_text" else {}
    return [(f"response.{kind}.delta", {**at, "content_index": 0, "delta": text, **extra})]
