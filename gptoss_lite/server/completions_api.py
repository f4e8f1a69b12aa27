"""`POST /v1/completions`: plain text continued as it is, like `gptoss-lite run --raw`.

The prompt is encoded as ordinary text (no harmony, markup stays text) and generation stops at
`<|endoftext|>`, `max_tokens` (default 16, as in the OpenAI API) or a stop string. The reply is a
`text_completion` object, or streamed as chunks of it followed by `[DONE]`; `logprobs: k` adds
each token's log-probability and its k likeliest alternatives (the older logprobs object, its
`text_offset` counted from the start of the generated text).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from pydantic import Field

from ..chat.reply import Reply, new_id
from ..chat.tokens import ENDOFTEXT
from .chat_api import SamplingFields, usage
from .errors import ApiError
from .logprobs import legacy
from .service import DONE, Prepared, Service, changes, guarded, sse, sse_error
from .worker import Done, Job

DEFAULT_MAX_TOKENS = 16
MAX_LEGACY_TOP = 5  # the most alternatives this API lets a client ask for


class CompletionRequest(SamplingFields):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(DEFAULT_MAX_TOKENS, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LEGACY_TOP)


def prepare(body: CompletionRequest, service: Service) -> Prepared:
    """Encode the prompt (or take its token ids) and check it fits."""
    service.check_model(body.model)
    prompt = _prompt(body.prompt, service)
    sampling = service.sampling(
        prompt,
        max_tokens=body.max_tokens,
        max_param="max_tokens",
        prompt_param="prompt",
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        logprobs=body.logprobs,
    )
    reply = Reply(service.tokenizer, body.stops, harmony=False)
    return Prepared(prompt, sampling, reply, stop=(ENDOFTEXT,))


def _prompt(prompt: str | list[str] | list[int] | list[list[int]], service: Service) -> list[int]:
    """The prompt's token ids: a text encoded as it is, or token ids as given (in the vocabulary);
    a list must hold exactly one prompt."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if len(prompts) != 1:
        raise ApiError(400, "prompt: give one prompt per request", param="prompt")
    if isinstance(prompts[0], str):
        text = prompts[0]
        service.check_text(len(text.encode()), "prompt")
        return service.tokenizer.encode(text)
    ids, vocab = prompts[0], service.tokenizer.n_vocab
    if not ids:
        raise ApiError(400, "prompt: the token ids are empty", param="prompt")
    outside = next((i for i in ids if not 0 <= i < vocab), None)
    if outside is not None:
        message = f"prompt: token id {outside} is not in the vocabulary [0, {vocab})"
        raise ApiError(400, message, param="prompt", code="invalid_value")
    return ids


def completion(body: CompletionRequest, reply: Reply, done: Done, service: Service) -> dict:
    """The `text_completion` object of a finished reply."""
    shown = [lp for part in reply.parts for lp in part.logprobs]
    choice = {
        "index": 0,
        "text": reply.text("text"),
        "logprobs": _logprobs(body, shown, 0, service),
    }
    choice["finish_reason"] = reply.finish_reason(done.finish_reason)
    return {**_head(service), "choices": [choice], "usage": usage(reply, done)}


def stream(body: CompletionRequest, job: Job, reply: Reply, service: Service) -> AsyncIterator[str]:
    """Server-sent `text_completion` chunks, then `[DONE]`."""
    head = _head(service)

    def chunk(text: str, finish: str | None = None, logprobs: dict | None = None) -> str:
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return sse({**head, "choices": [choice]})

    async def events() -> AsyncIterator[str]:
        sent = 0  # characters of text so far
        async for item in changes(job, reply):
            if isinstance(item, Done):
                yield chunk("", reply.finish_reason(item.finish_reason))
            else:
                for change in item:
                    if change.kind == "delta":
                        yield chunk(
                            change.text, None, _logprobs(body, change.logprobs, sent, service)
                        )
                        sent += len(change.text)
        yield DONE

    return guarded(events(), job, sse_error)


def _logprobs(body: CompletionRequest, logprobs, offset: int, service: Service) -> dict | None:
    return None if body.logprobs is None else legacy(logprobs, service.tokenizer, offset)


def _head(service: Service) -> dict:
    kind = "text_completion"
    return {
        "id": new_id("cmpl-"),
        "object": kind,
        "created": int(time.time()),
        "model": service.model_id,
    }
