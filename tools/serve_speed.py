"""Measure what `gptoss-lite serve` costs: decode tok/s through HTTP, and time to first token.

Run against a server already listening (e.g. `gptoss-lite serve -m ./tiny --device cpu`):

    python tools/serve_speed.py --url http://127.0.0.1:8000 --gen-tokens 128 --repeats 3

Decode: a streamed `/v1/completions` request of `--gen-tokens` greedy tokens after a prompt of
`--prompt-tokens` tokens; the rate is the tokens after the first over the time from the first
chunk to the finishing one, as the client sees it (`gptoss-lite bench` times its decode steps
after the first token the same way, inside the process). Time to first token: a chat history
of about `--history-tokens` tokens answered with one token (`max_tokens` 1), first from a cold
cache, then again with one more turn appended, which the cache serves (`cached_tokens`).
`--direct MODEL` times the same decode on a runner loaded in this process as `serve` loads it
(the chat-sized sliding-window rings, which make each decode step dearer than `bench`'s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx


def decode_rate(client: httpx.Client, model: str, prompt_tokens: int, gen_tokens: int) -> float:
    prompt = " ".join(["word"] * prompt_tokens)
    body = {"model": model, "prompt": prompt, "max_tokens": gen_tokens, "temperature": 0}
    first = finish = None
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            choice = json.loads(line[6:])["choices"][0]
            first = first or time.perf_counter()
            if choice["finish_reason"] is not None:
                finish = time.perf_counter()
                assert choice["finish_reason"] == "length", "stopped before --gen-tokens"
    return (gen_tokens - 1) / (finish - first)


def direct_rate(model: str, prompt_tokens: int, gen_tokens: int) -> float:
    """The same greedy decode on the runner itself, loaded as `serve` loads it (chat rings)."""
    import gptoss_lite
    from gptoss_lite.chat.session import chat_ring_slots
    from gptoss_lite.chat.tokenizer import ENDOFTEXT, load_tokenizer
    from gptoss_lite.config import read_config

    ring = chat_ring_slots(read_config(model))
    runner = gptoss_lite.load(model, device="cpu", ring_slots=ring)
    prompt = load_tokenizer(model).encode(" ".join(["word"] * prompt_tokens))
    tokens = runner.generate(prompt, max_new_tokens=gen_tokens, temperature=0, stop=(ENDOFTEXT,))
    next(tokens)
    start = time.perf_counter()
    count = sum(1 for _ in tokens)
    assert count == gen_tokens - 1, "stopped before --gen-tokens"
    return count / (time.perf_counter() - start)


def first_token_seconds(client: httpx.Client, model: str, messages: list[dict]) -> tuple:
    body = {"model": model, "messages": messages, "max_tokens": 1, "temperature": 0}
    start = time.perf_counter()
    reply = client.post("/v1/chat/completions", json=body).json()
    usage = reply["usage"]
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    return time.perf_counter() - start, usage["prompt_tokens"], cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--history-tokens", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--direct", metavar="MODEL", help="time the runner itself instead")
    args = parser.parse_args()
    if args.direct:
        rates = [direct_rate(args.direct, args.prompt_tokens, args.gen_tokens)]
        print(f"decode on the runner: {rates[0]:.2f} tok/s")
        return
    client = httpx.Client(base_url=args.url, timeout=600)
    model = client.get("/v1/models").json()["data"][0]["id"]
    rates = [
        decode_rate(client, model, args.prompt_tokens, args.gen_tokens) for _ in range(args.repeats)
    ]
    print(f"decode through the server: median {statistics.median(rates):.2f} tok/s {rates}")
    for run in range(args.repeats):
        history = [{"role": "user", "content": f"{run} " + "story " * args.history_tokens}]
        cold = first_token_seconds(client, model, history)
        history += [
            {"role": "assistant", "content": "Go on."},
            {"role": "user", "content": "And then?"},
        ]
        warm = first_token_seconds(client, model, history)
        print(
            f"time to first token: {cold[0]:.3f} s for {cold[1]} tokens ({cold[2]} cached), "
            f"{warm[0]:.3f} s for {warm[1]} tokens ({warm[2]} cached)"
        )


if __name__ == "__main__":
    main()
