"""Log-probabilities: the model's log-softmax, checked against the runner's own logits.

The values the server reports must equal log-softmax of the logits that one fresh forward pass
of the runner gives for the same tokens, computed here independently (float64), with the top
alternatives sorted, most likely first, and parsed by the official clients: on the random `tiny`
model (plain text through /v1/completions, where every token shows) and on the scripted
checkpoint (Chat Completions, Responses and Ollama, where the answer's tokens are known). The
bad values are a 400 naming the field.
"""

from __future__ import annotations

import datetime
import math

import httpx
import ollama
import openai
import pytest
import torch
from scripted_model import ANSWER, THINK

from gptoss_lite.chat.harmony import Conversation, Message, render_prompt
from gptoss_lite.chat.tokens import ENDOFTEXT
from gptoss_lite.config import read_config
from gptoss_lite.engine.logprobs import token_logprobs
from gptoss_lite.engine.runner import load
from gptoss_lite.engine.session import chat_ring_slots
from gptoss_lite.server.service import Service

pytest_plugins = ["cli_fixtures", "server_fixtures"]

# float32 weights and activations: a whole-sequence forward pass and the server's prefill then
# cached decode steps add in different orders; they agree to ~1e-6, far inside this.
ATOL = 1e-4
REPLY = (
    f"<|channel|>analysis<|message|>{THINK}<|end|>"
    f"<|start|>assistant<|channel|>final<|message|>{ANSWER}<|return|>"
)


def _runner(model):
    ring = chat_ring_slots(read_config(model))
    return load(model, device="cpu", dtype="fp32", context=1024, ring_slots=ring)


@pytest.fixture(scope="module")
def tiny(tiny_model, o200k_tokenizer, serve_module):
    """The served model's URL, and the same weights loaded apart: the server's batch holds the
    served runner's caches, so the expected values come from the other."""
    served = Service(_runner(tiny_model), o200k_tokenizer, "tiny")
    return serve_module(served), _runner(tiny_model)


@pytest.fixture(scope="module")
def scripted(scripted_model, o200k_tokenizer, serve_module):
    served = Service(_runner(scripted_model), o200k_tokenizer, "scripted")
    return serve_module(served), _runner(scripted_model)


def _expected(runner, prompt: list[int], reply: list[int]) -> torch.Tensor:
    """log-softmax [len(reply), V] of one fresh forward pass over prompt + reply."""
    logits = runner.logits(prompt + reply[:-1])[len(prompt) - 1 :]
    return torch.log_softmax(logits.double(), dim=-1)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)


def test_token_logprobs_is_log_softmax_with_the_top_sorted():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3
    found = token_logprobs(logits, 17, top=5)
    expected = torch.log_softmax(logits.double(), dim=-1)
    assert found.token == 17 and math.isclose(found.logprob, expected[17], abs_tol=1e-5)
    order = torch.argsort(expected, descending=True)[:5].tolist()
    assert [t for t, _ in found.top] == order
    assert [v for _, v in found.top] == pytest.approx(expected[order].tolist(), abs=1e-5)
    assert token_logprobs(logits, 3).top == ()


def test_completions_logprobs_are_the_models(tiny, o200k_tokenizer):
    url, runner = tiny
    prompt = o200k_tokenizer.encode("Once upon a time")
    ids = list(runner.generate(prompt, max_new_tokens=8, temperature=0, stop=(ENDOFTEXT,)))
    expected = _expected(runner, prompt, ids)
    client = _client(url)
    reply = client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=5
    )
    logprobs = reply.choices[0].logprobs
    shown = [i for i, token in enumerate(ids) if not o200k_tokenizer.is_special(token)]
    assert len(logprobs.tokens) == len(shown) > 0
    for n, i in enumerate(shown):
        assert logprobs.tokens[n] == o200k_tokenizer.decode([ids[i]])
        assert logprobs.token_logprobs[n] == pytest.approx(expected[i, ids[i]].item(), abs=ATOL)
        best = torch.topk(expected[i], 5)
        top = logprobs.top_logprobs[n]
        names = [o200k_tokenizer.decode([t]) for t in best.indices.tolist()]
        assert list(top) == names and list(top.values()) == sorted(top.values(), reverse=True)
        assert list(top.values()) == pytest.approx(best.values.tolist(), abs=ATOL)
    assert logprobs.text_offset[0] == 0 and "".join(logprobs.tokens) == reply.choices[0].text
    chunks = list(
        client.completions.create(
            model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=5,
            stream=True,
        )
    )  # fmt: skip
    streamed = [
        v for c in chunks if c.choices[0].logprobs for v in c.choices[0].logprobs.token_logprobs
    ]
    assert streamed == pytest.approx(logprobs.token_logprobs, abs=ATOL)


def _answer_logprobs(runner, tokenizer, user: str) -> tuple[list[int], torch.Tensor]:
    """The answer's tokens and their expected log-softmax rows, for the scripted reply."""
    prompt = render_prompt(
        Conversation([Message.user(user)], date=datetime.date.today().isoformat()), tokenizer
    )
    reply = tokenizer.encode(REPLY, allow_special=True)
    answer = tokenizer.encode(ANSWER)
    start = len(reply) - 1 - len(answer)  # the answer, then <|return|>
    assert reply[start : start + len(answer)] == answer
    rows = _expected(runner, prompt, reply)[start : start + len(answer)]
    return answer, rows


def _check_entries(entries, answer: list[int], rows: torch.Tensor, tokenizer, top: int) -> None:
    assert [e.token for e in entries] == [tokenizer.decode([t]) for t in answer]
    for entry, token, row in zip(entries, answer, rows, strict=True):
        assert entry.bytes == list(tokenizer.token_bytes(token))
        assert entry.logprob == pytest.approx(row[token].item(), abs=ATOL)
        best = torch.topk(row, top)
        assert [t.token for t in entry.top_logprobs] == [
            tokenizer.decode([t]) for t in best.indices.tolist()
        ]
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert values == pytest.approx(best.values.tolist(), abs=ATOL)


def test_chat_logprobs_are_the_models(scripted, o200k_tokenizer):
    url, runner = scripted
    answer, rows = _answer_logprobs(runner, o200k_tokenizer, "Say hi")
    client = _client(url)
    asked = {"model": "scripted", "messages": [{"role": "user", "content": "Say hi"}]}
    reply = client.chat.completions.create(**asked, logprobs=True, top_logprobs=3)
    assert reply.choices[0].message.content == ANSWER
    _check_entries(reply.choices[0].logprobs.content, answer, rows, o200k_tokenizer, 3)
    chunks = list(
        client.chat.completions.create(**asked, logprobs=True, top_logprobs=3, stream=True)
    )
    streamed = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    _check_entries(streamed, answer, rows, o200k_tokenizer, 3)
    plain = client.chat.completions.create(**asked)
    assert plain.choices[0].logprobs is None


def test_responses_logprobs_are_the_models(scripted, o200k_tokenizer):
    url, runner = scripted
    answer, rows = _answer_logprobs(runner, o200k_tokenizer, "Say hi")
    client = _client(url)
    asked = {
        "model": "scripted",
        "input": "Say hi",
        "include": ["message.output_text.logprobs"],
        "top_logprobs": 2,
    }
    response = client.responses.create(**asked)
    text = response.output[-1].content[0]
    assert text.text == ANSWER and response.top_logprobs == 2
    _check_entries(text.logprobs, answer, rows, o200k_tokenizer, 2)
    events = list(client.responses.create(**asked, stream=True))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    _check_entries([lp for d in deltas for lp in d.logprobs], answer, rows, o200k_tokenizer, 2)
    [done] = [e for e in events if e.type == "response.output_text.done"]
    _check_entries(done.logprobs, answer, rows, o200k_tokenizer, 2)
    plain = client.responses.create(model="scripted", input="Say hi")
    assert plain.output[-1].content[0].logprobs == []


def test_ollama_logprobs_are_the_models(scripted, o200k_tokenizer):
    url, runner = scripted
    answer, rows = _answer_logprobs(runner, o200k_tokenizer, "Say hi")
    client = ollama.Client(host=url)
    user = [{"role": "user", "content": "Say hi"}]
    reply = client.chat(model="scripted", messages=user, logprobs=True, top_logprobs=2)
    assert reply.message.content == ANSWER
    assert [e.token for e in reply.logprobs] == [o200k_tokenizer.decode([t]) for t in answer]
    for entry, token, row in zip(reply.logprobs, answer, rows, strict=True):
        assert entry.logprob == pytest.approx(row[token].item(), abs=ATOL)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(
            torch.topk(row, 2).values.tolist(), abs=ATOL
        )


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),  # without logprobs
        ("/v1/responses", {"top_logprobs": 21}, "top_logprobs"),
        ("/v1/responses", {"top_logprobs": -1}, "top_logprobs"),
        ("/v1/completions", {"logprobs": 6}, "logprobs"),
    ],
)
def test_bad_logprobs_requests_are_400s_naming_the_field(scripted, path, body, param):
    url, _ = scripted
    base = {
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
        "/v1/responses": {"input": "hi"},
        "/v1/completions": {"prompt": "hi"},
    }[path]
    answer = httpx.post(f"{url}{path}", json={"model": "scripted", **base, **body})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param
