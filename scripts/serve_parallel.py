"""Measure what continuous batching gives through HTTP: aggregate tok/s of N concurrent streams.

Run against a server already listening (e.g. `gptoss-lite serve -m CKPT -p cpu --parallel 8`):

    python scripts/serve_parallel.py --url http://127.0.0.1:8000 --streams 1 2 4 8 --rounds 3

Throughput: a round sends, for each N of `--streams` in turn, N concurrent greedy Chat
Completions of `--gen-tokens` tokens each (a short message that no other request shares, so
nothing comes from another's cache), and times them from the first request sent to the last
reply received: the aggregate is every reply's tokens over that time. Rounds repeat the whole
sequence, so the single stream and the concurrent ones alternate on a machine whose speed
drifts; the figures are medians over the rounds, and each N's ratio is to the single stream's.
`--latency`: a prompt of about `--long-tokens` tokens is sent, and once the server says it runs
(`/health`) and `--after` seconds have passed, a short chat request asks for one token: the
time that request takes is its time to first token while the long prompt prefills (`--rounds`
times, each long prompt a new one).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import httpx

WORDS = ["amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "heron", "iris", "jade"]


def chat(client: httpx.Client, model: str, text: str, max_tokens: int) -> dict:
    """One greedy chat completion; its usage."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    reply = client.post("/v1/chat/completions", json=body)
    reply.raise_for_status()
    return reply.json()["usage"]


def concurrent_rate(client: httpx.Client, model: str, streams: int, tokens: int, tag: int) -> float:
    """Aggregate tok/s of `streams` concurrent requests, each a message of its own."""
    made = [0] * streams

    def ask(i: int) -> None:
        text = f"{WORDS[i % len(WORDS)]} {tag} {i}: say something"
        made[i] = chat(client, model, text, tokens)["completion_tokens"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(streams)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if min(made) < tokens:
        print(f"  note: a reply ended early ({min(made)} of {tokens} tokens)")
    return sum(made) / seconds


def throughput(client: httpx.Client, model: str, streams: list[int], tokens: int, rounds: int):
    rates: dict[int, list[float]] = {n: [] for n in streams}
    tag = 0
    for r in range(rounds + 1):  # round 0 warms up
        for n in streams:
            tag += 1
            rate = concurrent_rate(client, model, n, tokens, tag)
            if r:
                rates[n].append(rate)
                print(f"round {r}: {n} streams {rate:.2f} tok/s", flush=True)
    single = statistics.median(rates[min(streams)])
    print(f"\n{'streams':>8} {'tok/s (median)':>15} {'per stream':>11} {'ratio':>6}  rounds")
    for n in streams:
        median = statistics.median(rates[n])
        each = " ".join(f"{x:.2f}" for x in rates[n])
        print(f"{n:>8} {median:>15.2f} {median / n:>11.2f} {median / single:>6.2f}  {each}")


def latency(client: httpx.Client, model: str, long_tokens: int, after: float, tag: int) -> None:
    long_text = f"{tag} " + " ".join(WORDS[i % len(WORDS)] for i in range(long_tokens))
    done: dict[str, float] = {}

    def long_request() -> None:
        start = time.perf_counter()
        chat(client, model, long_text, 1)
        done["long"] = time.perf_counter() - start

    thread = threading.Thread(target=long_request)
    thread.start()
    while client.get("/health").json()["queue"]["running"] < 1:
        time.sleep(0.01)
    time.sleep(after)
    start = time.perf_counter()
    usage = chat(client, model, f"Hi there {tag}", 1)
    short = time.perf_counter() - start
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    long_running = "long" not in done
    thread.join()
    print(
        f"short request's first token: {short:.2f} s ({usage['prompt_tokens']} prompt tokens, "
        f"{cached} of them cached), sent {after:.1f} s after a "
        f"{long_tokens}-word prompt began (still prefilling then: {long_running}); the long "
        f"prompt's first token after {done['long']:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="[default: the server's]")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--gen-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", action="store_true", help="measure the latency case only")
    parser.add_argument("--long-tokens", type=int, default=2000)
    parser.add_argument("--after", type=float, default=1.0, help="seconds into the long prefill")
    args = parser.parse_args()
    client = httpx.Client(base_url=args.url, timeout=3600)
    model = args.model or client.get("/v1/models").json()["data"][0]["id"]
    if args.latency:
        for tag in range(args.rounds):
            latency(client, model, args.long_tokens, args.after, tag)
    else:
        throughput(client, model, sorted(args.streams), args.gen_tokens, args.rounds)


if __name__ == "__main__":
    main()
