"""`POST /v1/chat/completions`: the Chat Completions API on harmony.

`ChatRequest` is the accepted body. Its messages become harmony turns: system and developer
texts the developer instructions, an assistant message its reasoning (`reasoning_content` or
`reasoning`, kept only inside a tool chain), its tool calls (or a preamble and calls) or its
answer, a tool message the output of the call its `tool_call_id` names; `tools` are function and
custom tools (tools.py). The reply puts the final text in `content`, the analysis in
`reasoning_content` and `reasoning`, the calls in `tool_calls` (one index and a stable id per
call, arguments as a JSON string; a custom tool's call as `custom: {name, input}`); streamed, the
same pieces arrive as `chat.completion.chunk` deltas (a custom call whole, once its input is),
then the finish reason, then the usage when `stream_options.include_usage` asks for it, then
`[DONE]`. `logprobs` (and `top_logprobs`, 0-20) add the content tokens' log-probabilities to each
choice or delta. `response_format` and strict function tools constrain the reply (`formats`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..chat.harmony import Message
from ..chat.reply import Change, Part, Reply, new_id
from ..engine.logprobs import MAX_TOP
from ..engine.sampling import SEEDS
from . import conversation as conv
from . import formats
from .errors import ApiError, shown
from .logprobs import entries
from .service import DONE, Prepared, Service, changes, guarded, sse, sse_error
from .tools import Declared, chat_tools, custom_input
from .worker import Done, Job

SEED_RANGE = {"ge": 0, "lt": SEEDS}  # what the sampler takes


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Body):
    type: str
    text: str | None = None


class CalledFunction(_Body):
    name: str
    arguments: str = ""


class CalledCustom(_Body):
    name: str
    input: str = ""


class ToolCallIn(_Body):
    id: str
    type: Literal["function", "custom"] = "function"
    function: CalledFunction | None = None
    custom: CalledCustom | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class FunctionSpec(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ChatTool(_Body):
    type: Literal["function"]
    function: FunctionSpec


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingFields(_Body):
    """The sampling fields Chat Completions and Completions share."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, **SEED_RANGE)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=1)
    stream: bool = False

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else self.stop or []


class ChatRequest(SamplingFields):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[Any] | None = None  # read by tools.chat_tools
    tool_choice: str | dict[str, Any] | None = None
    reasoning_effort: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP)
    parallel_tool_calls: bool | None = None  # gpt-oss makes one call a turn either way


@dataclass
class Pending:
    """A completion being generated: the request, its tools, what to generate and, once
    queued, its job."""

    body: ChatRequest
    tools: Declared
    prepared: Prepared
    job: Job | None = None

    @property
    def reply(self) -> Reply:
        return self.prepared.reply


def prepare(body: ChatRequest, service: Service) -> Pending:
    """Render the request and check it fits."""
    service.check_model(body.model)
    instructions, turns = harmony_turns(body.messages)
    tools, forced = chat_tools(body.tools).chosen(body.tool_choice)
    answer = formats.answer_format(body.response_format, "response_format")
    grammar = formats.reply_grammar(service.tokenizer, answer, tools, forced)
    chat = conv.conversation(
        turns,
        instructions=instructions,
        tools=tools.functions,
        effort=body.reasoning_effort,
        effort_param="reasoning_effort",
    )
    prompt, call = conv.render(chat, forced, service, "messages")
    limit = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    if body.top_logprobs is not None and not body.logprobs:
        message = "top_logprobs: asks for alternatives, which come with logprobs: true"
        raise ApiError(400, message, param="top_logprobs")
    sampling = service.sampling(
        prompt,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        max_param=limit,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )
    reply = Reply(service.tokenizer, body.stops, tools=tools.names, prefix=call)
    return Pending(body, tools, Prepared(prompt, sampling, reply, grammar=grammar, prefix=call))


def harmony_turns(messages: list[ChatMessage]) -> tuple[list[str], list[Message]]:
    """The instructions (system and developer texts) and the harmony turns of `messages`."""
    instructions: list[str] = []
    turns: list[Message] = []
    names: dict[str, str] = {}  # tool call id -> function name
    for i, message in enumerate(messages):
        text = _text(message.content, f"messages.{i}.content")
        if message.role in ("system", "developer"):
            instructions.append(text)
        elif message.role == "user":
            turns.append(Message.user(text))
        elif message.role == "assistant":
            thought = message.reasoning_content or message.reasoning
            if thought:
                turns.append(conv.reasoning(thought))
            if message.tool_calls and text:
                turns.append(Message("assistant", text, channel="commentary"))  # a preamble
            elif text:
                turns.append(conv.answer(text))
            for j, call in enumerate(message.tool_calls or []):
                turns.append(_earlier_call(call, f"messages.{i}.tool_calls.{j}"))
                names[call.id] = (call.function or call.custom).name
        else:
            name = names.get(message.tool_call_id or "")
            if not name and message.name:
                name = conv.tool_name(message.name, f"messages.{i}.name")
            if not name:
                raise ApiError(
                    400,
                    f"messages.{i}: tool_call_id {shown(message.tool_call_id)} names no earlier "
                    "tool call",
                    param=f"messages.{i}.tool_call_id",
                )
            turns.append(conv.tool_output(name, text))
    return instructions, turns


def _earlier_call(call: ToolCallIn, where: str) -> Message:
    if call.type == "custom" and call.custom is not None:
        name = conv.tool_name(call.custom.name, f"{where}.custom.name")
        return conv.custom_call(name, call.custom.input)
    if call.type == "function" and call.function is not None:
        name = conv.tool_name(call.function.name, f"{where}.function.name")
        return conv.tool_call(name, call.function.arguments)
    param = f"{where}.{call.type}"
    raise ApiError(
        400, f"{param}: a {call.type} tool call needs its {call.type} object", param=param
    )


def _text(content: str | list[ContentPart] | None, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    for part in content:
        if part.type not in ("text", "input_text", "output_text") or part.text is None:
            raise ApiError(400, f"{param}: only text content is supported", param=param)
    return "".join(part.text for part in content)


def completion(pending: Pending, done: Done, service: Service) -> dict:
    """The `chat.completion` object of a finished reply."""
    reply = pending.reply
    calls = [_call(pending, part) for part in reply.tool_calls]
    text, thought = reply.text("text"), reply.text("reasoning")
    message = {
        "role": "assistant",
        "content": text if text or not calls else None,
        "reasoning_content": thought or None,
        "reasoning": thought or None,
        "tool_calls": calls or None,
    }
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": reply.finish_reason(done.finish_reason),
    }
    texts = [lp for part in reply.parts if part.kind == "text" for lp in part.logprobs]
    logprobs = _logprobs(pending, texts, service)
    return {
        **_head("chat.completion", new_id("chatcmpl-"), service),
        "choices": [{**choice, "logprobs": logprobs}],
        "usage": usage(reply, done),
    }


def usage(reply: Reply, done: Done) -> dict:
    """Token counts, with the prompt tokens the KV cache already held."""
    counts = reply.usage(done.stats)
    return {
        "prompt_tokens": counts.prompt_tokens,
        "completion_tokens": counts.completion_tokens,
        "total_tokens": counts.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": counts.cached_tokens,
            "cache_write_tokens": counts.prompt_tokens - counts.cached_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": counts.reasoning_tokens},
    }


def stream(pending: Pending, service: Service) -> AsyncIterator[str]:
    """Server-sent `chat.completion.chunk` events of the reply, then `[DONE]`."""
    job, reply, options = pending.job, pending.reply, pending.body.stream_options
    include_usage = options is not None and options.include_usage
    head = _head("chat.completion.chunk", new_id("chatcmpl-"), service)
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict, finish: str | None = None, logprobs: dict | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return sse({**head, "choices": [choice], **extra})

    async def events() -> AsyncIterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        async for item in changes(job, reply):
            if isinstance(item, Done):
                yield chunk({}, reply.finish_reason(item.finish_reason))
                if include_usage:
                    yield sse({**head, "choices": [], "usage": usage(reply, item)})
            else:
                for change in item:
                    if (delta := _delta(pending, change)) is not None:
                        yield chunk(delta, logprobs=_logprobs(pending, change.logprobs, service))
        yield DONE

    return guarded(events(), job, sse_error)


def _delta(pending: Pending, change: Change) -> dict | None:
    part = change.part
    if part.kind == "tool_call":
        index = pending.reply.tool_calls.index(part)
        if _is_custom(pending, part):  # whole when it ends: its input is decoded then
            done = change.kind == "close"
            return {"tool_calls": [{"index": index, **_call(pending, part)}]} if done else None
        if change.kind == "open":
            call = {"id": part.call_id, "type": "function"}
            return {"tool_calls": [{"index": index, **call, "function": _function(part, "")}]}
        if change.kind == "delta":
            return {"tool_calls": [{"index": index, "function": {"arguments": change.text}}]}
        return None
    if change.kind != "delta":
        return None
    if part.kind == "reasoning":
        text = change.lead + change.text
        return {"reasoning_content": text, "reasoning": text}
    return {"content": change.lead + change.text}


def _logprobs(pending: Pending, logprobs, service: Service) -> dict | None:
    """A choice's `logprobs`: those of its content tokens, if the request asked."""
    if not pending.body.logprobs:
        return None
    return {"content": entries(logprobs, service.tokenizer), "refusal": None}


def _call(pending: Pending, part: Part) -> dict:
    if _is_custom(pending, part):
        custom = {"name": part.name, "input": custom_input(part.text)}
        return {"id": part.call_id, "type": "custom", "custom": custom}
    return {"id": part.call_id, "type": "function", "function": _function(part, part.text)}


def _is_custom(pending: Pending, part: Part) -> bool:
    return part.name in pending.tools.custom


def _function(part: Part, arguments: str) -> dict:
    return {"name": part.name, "arguments": arguments}


def _head(kind: str, id: str, service: Service) -> dict:
    return {"id": id, "object": kind, "created": int(time.time()), "model": service.model_id}
