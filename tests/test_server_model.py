"""The server end to end on a tiny random checkpoint (full o200k vocabulary), on 127.0.0.1.

Greedy requests must give exactly the tokens `runner.generate` gives for the same prompt; four
concurrent requests must each get what they get alone (the queue serializes them on the one
KV cache); a client that leaves mid-stream must free the queue at once; a conversation that
resends its history must be served from the cache, and say so in `cached_tokens`.
"""

from __future__ import annotations

import datetime
import threading
import time

import httpx
import openai
import pytest

from gptoss_lite.chat.harmony import Conversation, Message, render_prompt
from gptoss_lite.chat.reply import read_reply
from gptoss_lite.chat.tokens import ENDOFTEXT, STOP_TOKENS
from gptoss_lite.config import read_config
from gptoss_lite.engine.batch import Batch
from gptoss_lite.engine.runner import load
from gptoss_lite.engine.session import chat_ring_slots
from gptoss_lite.server.service import Service

pytest_plugins = ["cli_fixtures", "server_fixtures"]

WAIT_S = 30.0  # bound on any wait; a tiny-model token takes milliseconds


@pytest.fixture(scope="module")
def runner(tiny_model):
    # float32, so a prompt prefilled in one pass or resumed from the cache picks the same argmax
    ring = chat_ring_slots(read_config(tiny_model))
    return load(tiny_model, device="cpu", dtype="fp32", context=1024, ring_slots=ring)


@pytest.fixture(scope="module")
def reference(tiny_model):
    """The same model loaded apart, for the tokens expected: the server's batch holds the
    served runner's caches."""
    ring = chat_ring_slots(read_config(tiny_model))
    return load(tiny_model, device="cpu", dtype="fp32", context=1024, ring_slots=ring)


@pytest.fixture
def served(runner, o200k_tokenizer, serve_http, monkeypatch):
    """(openai client, service, generated) on the tiny model; `generated` counts every token
    the server's batch makes, across requests."""
    generated = [0]
    real = Batch.step

    def counting(batch):
        changed = real(batch)
        generated[0] += sum(1 for s in changed if s.finish_reason != "error")
        return changed

    monkeypatch.setattr(Batch, "step", counting)
    service = Service(runner, o200k_tokenizer, "tiny", max_queue=8)
    url = serve_http(service)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=WAIT_S)
    yield client, service, generated
    service.close()


def _wait_idle(service: Service) -> None:
    """Wait (at most WAIT_S) until nothing runs or waits: a reply can reach its client just
    before the worker marks its job finished."""
    deadline = time.monotonic() + WAIT_S
    while service.queue.counts() != (0, 0):
        assert time.monotonic() < deadline, "the queue never emptied"
        time.sleep(0.01)


def _chat(text: str) -> list[int]:
    return [{"role": "user", "content": text}]


def _prompt(text: str, tokenizer) -> list[int]:
    today = datetime.date.today().isoformat()
    return render_prompt(Conversation([Message.user(text)], date=today), tokenizer)


def test_greedy_requests_give_the_runners_tokens(served, reference, o200k_tokenizer):
    client, _, _ = served
    raw = o200k_tokenizer.encode("Once upon a time")
    direct = list(reference.generate(raw, max_new_tokens=10, temperature=0, stop=(ENDOFTEXT,)))
    reply = client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=10, temperature=0
    )
    text = o200k_tokenizer.decode(t for t in direct if not o200k_tokenizer.is_special(t))
    assert reply.choices[0].text == text
    assert reply.usage.completion_tokens == len(direct)

    prompt = _prompt("Hello", o200k_tokenizer)
    direct = list(reference.generate(prompt, max_new_tokens=10, temperature=0, stop=STOP_TOKENS))
    expected = read_reply(direct, o200k_tokenizer)
    streamed = client.chat.completions.create(
        model="tiny",
        messages=_chat("Hello"),
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == expected.text("text") != ""
    assert chunks[-1].usage.completion_tokens == len(direct)
    assert chunks[-1].usage.prompt_tokens == len(prompt)


def test_four_concurrent_requests_each_as_alone(served):
    client, service, _ = served
    texts = ["Hi", "What is 2 + 2?", "Tell me a story about a cat.", "Bonjour"]

    def ask(text: str) -> tuple[str, int]:
        reply = client.chat.completions.create(
            model="tiny", messages=_chat(text), max_tokens=6, temperature=0
        )
        message = reply.choices[0].message
        return (message.content, message.reasoning_content), reply.usage.completion_tokens

    alone = [ask(text) for text in texts]
    assert len(set(alone)) == len(texts)  # four different replies to tell apart
    together: dict[int, tuple] = {}
    threads = [
        threading.Thread(target=lambda i=i: together.__setitem__(i, ask(texts[i])))
        for i in range(len(texts))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert [together.get(i) for i in range(len(texts))] == alone
    _wait_idle(service)


def test_a_disconnect_mid_stream_frees_the_queue(served):
    client, service, generated = served
    base = str(client.base_url)
    body = {
        "model": "tiny",
        "messages": _chat("Go on"),
        "max_tokens": 900,
        "temperature": 0,
        "stream": True,
    }
    http = httpx.Client(base_url=base, timeout=WAIT_S)
    with http.stream("POST", "chat/completions", json=body) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")
        next(lines)
    http.close()
    _wait_idle(service)
    assert generated[0] < 900
    reply = client.chat.completions.create(model="tiny", messages=_chat("Hi"), max_tokens=2)
    assert reply.usage.completion_tokens == 2


def test_a_resent_history_is_served_from_the_cache(served, o200k_tokenizer):
    client, _, _ = served
    first = client.chat.completions.create(
        model="tiny", messages=_chat("Hello"), max_tokens=8, temperature=0
    )
    answer = first.choices[0].message.content or "(nothing)"
    history = [*_chat("Hello"), {"role": "assistant", "content": answer}, *_chat("And then?")]
    second = client.chat.completions.create(
        model="tiny", messages=history, max_tokens=4, temperature=0
    )
    # Everything up to the first reply's start is reused: the new turn alone is prefilled.
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 5
