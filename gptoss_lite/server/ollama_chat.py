"""Ollama's `/api/chat` and `/api/generate` on harmony (mounted by ollama_api.py).

Chat messages become the same harmony turns as Chat Completions' (`thinking` is an assistant
message's reasoning, `tool_calls` carry their arguments as objects, a tool message names its
function with `tool_name`, or by `tool_call_id`, or is the output of the latest call); `think`
("low", "medium", "high"; "max" is high, a boolean keeps the default: gpt-oss always reasons) sets
the reasoning effort; `options` give temperature, top_p, top_k, seed, num_predict and stop;
`logprobs` and `top_logprobs` add the answer tokens' log-probabilities to the pieces. The
reply streams as NDJSON (the default) or comes as one object: the analysis in `thinking`, the
answer in `content`, a call in `tool_calls` once its arguments are whole, then a last object with
`done`, `done_reason` and the timings (nanoseconds) and token counts. Ollama gives a call's
arguments as an object: a call whose arguments are not a JSON object (a slip of the model, or a
reply cut off by `num_predict`) comes as content, the text the model wrote, as a call to a tool
nobody declared does: never an error, since the request was sound. `/api/generate` answers a
`prompt` (with `system` as instructions), or continues it as plain text with `raw`. No messages or
no prompt is the "load" request, answered at once (the model is always loaded). `format` ("json"
or a JSON schema) holds the answer to it and declared tools are the only ones a reply can call
(`formats`; not with `raw`); `images` and `suffix` (fill in the middle) are refused with a 400.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..chat.harmony import Message
from ..chat.reply import SEPARATOR, Change, Part, Reply
from ..chat.tokenizer import Tokenizer
from ..chat.tokens import ENDOFTEXT, STOP_TOKENS
from ..engine.logprobs import MAX_TOP
from ..engine.sampling import SEEDS
from . import conversation as conv
from . import formats
from .body import strict_json
from .chat_api import CalledFunction, ChatMessage, ChatTool, ToolCallIn, harmony_turns
from .errors import ApiError, shown
from .logprobs import entries
from .service import Prepared, Service, begin, changes, collect, guarded, off_loop
from .tools import Declared
from .worker import Done, Job

NDJSON = "application/x-ndjson"
THINK_LEVELS = {"low": "low", "medium": "medium", "high": "high", "max": "high"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Options(_Body):
    """The sampling options gpt-oss uses; Ollama's others (num_ctx, repeat_penalty, ...) are
    accepted and have no effect."""

    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = None  # 0 or less: no top-k
    seed: int | None = Field(None, lt=SEEDS)  # negative: a random seed
    num_predict: int | None = None  # -1 (no limit) and -2 (fill the context) are no limit
    stop: str | list[str] | None = None

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else self.stop or []


class CalledTool(_Body):
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class OllamaCall(_Body):
    id: str | None = None
    function: CalledTool


class OllamaMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[OllamaCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class _Request(_Body):
    model: str
    stream: bool = True
    think: bool | str | None = None
    format: Any = None
    options: Options = Field(default_factory=Options)
    keep_alive: Any = None
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=MAX_TOP)


class ChatBody(_Request):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[ChatTool] | None = None


class GenerateBody(_Request):
    prompt: str = ""
    system: str = ""
    suffix: str = ""
    raw: bool = False
    images: list[str] | None = None


async def chat(body: ChatBody, service: Service, request: Request):
    """The answer to `/api/chat`."""
    start = time.perf_counter()
    name = known(service, body.model)
    _refuse_unsupported(body)
    if not body.messages:
        return _loaded(name, {"message": {"role": "assistant", "content": ""}})
    prepared = await off_loop(_chat_prepared, body, service)
    shape = _ChatShape(name, prepared.reply, _reader(body, service))
    return await _answer(body, shape, service, prepared, request, start)


def _chat_prepared(body: ChatBody, service: Service) -> Prepared:
    """The chat rendered and checked (off the event loop)."""
    instructions, turns = harmony_turns(_chat_messages(body.messages))
    tools = [
        conv.function_tool(
            f"tools.{i}.function", t.function.name, t.function.description, t.function.parameters
        )
        for i, t in enumerate(body.tools or [])
    ]
    chat = conv.conversation(
        turns, instructions=instructions, tools=tools, effort=_effort(body.think),
        effort_param="think",
    )  # fmt: skip
    answer = formats.ollama_format(body.format)
    grammar = formats.reply_grammar(service.tokenizer, answer, Declared(tools), None)
    prompt, _ = conv.render(chat, None, service, "messages")
    reply = Reply(service.tokenizer, body.options.stops, tools=[t.name for t in tools])
    sampling = _sampling(service, prompt, body, "messages")
    return Prepared(prompt, sampling, reply, grammar=grammar)


async def generate(body: GenerateBody, service: Service, request: Request):
    """The answer to `/api/generate`."""
    start = time.perf_counter()
    name = known(service, body.model)
    _refuse_unsupported(body)
    if body.suffix:
        raise ApiError(400, "suffix: gpt-oss does not fill in the middle", param="suffix")
    if not body.prompt:
        return _loaded(name, {"response": ""})
    prepared = await off_loop(_generate_prepared, body, service)
    shape = _GenerateShape(name, prepared.reply, _reader(body, service))
    return await _answer(body, shape, service, prepared, request, start)


def _generate_prepared(body: GenerateBody, service: Service) -> Prepared:
    """The prompt rendered (or, raw, encoded as it is) and checked (off the event loop)."""
    answer = formats.ollama_format(body.format)
    if body.raw and answer.schema is not None:
        raise ApiError(400, "format: a raw prompt continues plain text; drop raw", param="format")
    if body.raw:
        service.check_text(len(body.prompt.encode()), "prompt")
        prompt = service.tokenizer.encode(body.prompt)
        reply = Reply(service.tokenizer, body.options.stops, harmony=False)
        stop = (ENDOFTEXT,)  # plain text ends there, as in /v1/completions
    else:
        chat = conv.conversation(
            [Message.user(body.prompt)], instructions=[body.system], tools=[],
            effort=_effort(body.think), effort_param="think",
        )  # fmt: skip
        prompt, _ = conv.render(chat, None, service, "prompt")
        reply = Reply(service.tokenizer, body.options.stops)
        stop = STOP_TOKENS
    grammar = formats.reply_grammar(service.tokenizer, answer, Declared(), None)
    sampling = _sampling(service, prompt, body, "prompt")
    return Prepared(prompt, sampling, reply, stop, grammar=grammar)


def known(service: Service, name: str) -> str:
    """`name` if this server serves it, else 404."""
    if service.serves(name):
        return name
    raise ApiError(
        404,
        f"model {shown(name)} not found: this server serves {', '.join(service.names)} and "
        "does not download models",
    )


def timestamp(moment: datetime.datetime | None = None) -> str:
    """RFC 3339 in UTC, as Ollama writes `created_at`."""
    moment = moment or datetime.datetime.now(datetime.timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


async def lines(objects: Iterable[dict] | AsyncIterator[dict]) -> AsyncIterator[str]:
    """NDJSON: one JSON object a line."""
    if isinstance(objects, AsyncIterator):
        async for item in objects:
            yield _line(item)
    else:
        for item in objects:
            yield _line(item)


def _line(item: dict) -> str:
    return json.dumps(item, ensure_ascii=False, allow_nan=False) + "\n"  # NaN is not JSON


def _refuse_unsupported(body: ChatBody | GenerateBody) -> None:
    images = getattr(body, "images", None) or any(
        m.images for m in getattr(body, "messages", []) if m.images
    )
    if images:
        raise ApiError(400, "images: gpt-oss reads text only", param="images")


def _loaded(name: str, empty: dict) -> dict:
    """The answer to a request with nothing to generate: the model is loaded (it always is)."""
    return {"model": name, "created_at": timestamp(), **empty, "done": True, "done_reason": "load"}


def _effort(think: bool | str | None) -> str | None:
    if think is None or isinstance(think, bool):
        return None
    if think not in THINK_LEVELS:
        raise ApiError(400, f"think {think!r}: use low, medium or high", param="think")
    return THINK_LEVELS[think]


def _sampling(service: Service, prompt: list[int], body: _Request, prompt_param: str):
    options = body.options
    limit = options.num_predict if options.num_predict and options.num_predict > 0 else None
    return service.sampling(
        prompt,
        max_tokens=limit,
        max_param="options.num_predict",
        prompt_param=prompt_param,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k if options.top_k and options.top_k > 0 else None,
        seed=options.seed if options.seed is not None and options.seed >= 0 else None,
        logprobs=body.top_logprobs if body.logprobs else None,
    )


def _reader(body: _Request, service: Service) -> Tokenizer | None:
    """The tokenizer that writes out the logprobs, if the request asked for them."""
    return service.tokenizer if body.logprobs else None


def _chat_messages(messages: list[OllamaMessage]) -> list[ChatMessage]:
    """Ollama's messages as Chat Completions ones (calls get ids; a tool message without
    tool_name or tool_call_id answers the latest call)."""
    converted, latest = [], None
    for i, message in enumerate(messages):
        if message.tool_name is not None:
            conv.tool_name(message.tool_name, f"messages.{i}.tool_name")
        calls = []
        for j, call in enumerate(message.tool_calls or []):
            args = call.function.arguments
            arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
            called = CalledFunction(name=call.function.name, arguments=arguments)
            calls.append(ToolCallIn(id=call.id or f"call_{i}_{j}", function=called))
            latest = call.function.name
        converted.append(
            ChatMessage(
                role=message.role,
                content=message.content,
                reasoning_content=message.thinking,
                tool_calls=calls or None,
                tool_call_id=message.tool_call_id,
                name=message.tool_name or (latest if message.role == "tool" else None),
            )
        )
    return converted


class _Shape:
    """How an endpoint writes a reply (`piece` by `piece` or `whole`, then `last`), with the
    logprobs of its text when `tokenizer` is given."""

    def __init__(self, name: str, reply: Reply, tokenizer: Tokenizer | None) -> None:
        self.name, self.reply, self.tokenizer = name, reply, tokenizer

    def logprobs(self, logprobs) -> dict:
        return {} if self.tokenizer is None else {"logprobs": entries(logprobs, self.tokenizer)}

    def shown(self) -> list:
        return [lp for part in self.reply.parts for lp in part.logprobs]


class _ChatShape(_Shape):
    """How `/api/chat` writes a reply: pieces of `message`. A call whose arguments are not a
    JSON object is content, as the model wrote it (`_call`)."""

    def __init__(self, name: str, reply: Reply, tokenizer: Tokenizer | None) -> None:
        super().__init__(name, reply, tokenizer)
        self._content: Part | None = None  # the part whose text the content shows last

    def piece(self, change: Change) -> dict | None:
        part = change.part
        if part.kind == "tool_call":
            if change.kind != "close":
                return None
            call = _call(part, self.reply)
            return _message(tool_calls=[call]) if call else self._shown_as_content(part, part.text)
        if change.kind != "delta":
            return None
        if part.kind == "reasoning":
            piece = _message(thinking=change.lead + change.text)
        else:
            piece = self._shown_as_content(part, change.text)
        return {**piece, **self.logprobs(change.logprobs)}

    def whole(self) -> dict:
        reply = self.reply
        calls = [c for p in reply.tool_calls if (c := _call(p, reply))]
        content = [p.text for p in reply.parts if p.kind == "text" or _is_text_call(p)]
        thinking = reply.text("reasoning")
        extra = {"thinking": thinking} if thinking else {}
        if calls:
            extra["tool_calls"] = calls
        message = _message(content=SEPARATOR.join(content), **extra)
        return {**message, **self.logprobs(self.shown())}

    def _shown_as_content(self, part: Part, text: str) -> dict:
        """`text` of `part` as a piece of content, after a blank line if it opens a part and
        other content came before."""
        lead = SEPARATOR if self._content not in (None, part) else ""
        self._content = part
        return _message(content=lead + text)

    def last(self) -> dict:
        return _message()


class _GenerateShape(_Shape):
    """How `/api/generate` writes a reply: `response` and `thinking` (no tools are declared, so
    a call the model makes anyway is text)."""

    def piece(self, change: Change) -> dict | None:
        if change.kind != "delta":
            return None
        text = change.lead + change.text
        if change.part.kind == "reasoning":
            return {"response": "", "thinking": text}
        return {"response": text, **self.logprobs(change.logprobs)}

    def whole(self) -> dict:
        thinking = self.reply.text("reasoning")
        extra = {"thinking": thinking} if thinking else {}
        return {"response": self.reply.text("text"), **extra, **self.logprobs(self.shown())}

    def last(self) -> dict:
        return {"response": ""}


def _message(**fields: Any) -> dict:
    return {"message": {"role": "assistant", "content": "", **fields}}


def _call(part: Part, reply: Reply) -> dict | None:
    """A finished call as Ollama gives it, arguments as an object (`index` counting such calls);
    None when the model wrote no JSON object (a slip, or a reply cut short), which Ollama's
    arguments cannot carry."""
    calls = [p for p in reply.tool_calls if not _is_text_call(p)]
    if part not in calls:
        return None
    arguments = _arguments(part)
    function = {"index": calls.index(part), "name": part.name, "arguments": arguments}
    return {"id": part.call_id, "function": function}


def _is_text_call(part: Part) -> bool:
    return part.kind == "tool_call" and _arguments(part) is None


def _arguments(part: Part) -> dict | None:
    """A call's arguments as an object (none written: empty), or None if they are not one."""
    try:
        arguments = strict_json(part.text or "{}")
    except ApiError:
        return None
    return arguments if isinstance(arguments, dict) else None


async def _answer(
    body: _Request, shape, service: Service, prepared: Prepared, request: Request, start: float
):
    job = service.submit(prepared)
    if body.stream:
        await begin(job, request)
        events = guarded(lines(_stream(shape, job, start)), job, _error_line)
        return StreamingResponse(events, media_type=NDJSON)
    done = await collect(job, shape.reply, request)
    return {**_head(shape), **shape.whole(), **_ending(shape, done, start)}


async def _stream(shape, job: Job, start: float) -> AsyncIterator[dict]:
    async for item in changes(job, shape.reply):
        if isinstance(item, Done):
            yield {**_head(shape), **shape.last(), **_ending(shape, item, start)}
            return
        for change in item:
            if (piece := shape.piece(change)) is not None:
                yield {**_head(shape), **piece, "done": False}


def _head(shape) -> dict:
    return {"model": shape.name, "created_at": timestamp()}


def _ending(shape, done: Done, start: float) -> dict:
    stats = done.stats
    reason = "length" if shape.reply.finish_reason(done.finish_reason) == "length" else "stop"
    return {
        "done": True,
        "done_reason": reason,
        "total_duration": _ns(time.perf_counter() - start),
        "load_duration": 0,
        "prompt_eval_count": stats.prompt_tokens,
        "prompt_eval_duration": _ns(stats.prefill_seconds),
        "eval_count": stats.generated_tokens,
        "eval_duration": _ns(stats.decode_seconds),
    }


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _error_line(error: ApiError) -> str:
    return _line({"error": error.message})
