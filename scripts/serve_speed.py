"""Measure what `gptoss-lite serve` costs: decode tok/s through HTTP, and time to first token.

Run against a server already listening (e.g. `gptoss-lite serve -m ./tiny --device cpu`):

    python scripts/serve_speed.py --url http://127.0.0.1:8000 --gen-tokens 128 --repeats 3

Decode: a streamed `/v1/completions` request of `--gen-tokens` greedy tokens after a prompt of
`--prompt-tokens` tokens; the rate is the tokens after the first over the time from the first
chunk to the finishing one, as the client sees it (`gptoss-lite bench` times its decode steps
after the first token the same way, inside the process). With `--server-pid` (same machine) the
rate is also given per second of the server's CPU time, which a busy shared machine disturbs far
less than wall time. `--direct MODEL` times the same decode on a runner loaded in this process
as `serve` loads it (sliding-window rings sized to rewind over a reply, as `chat` has them), or
with `--bench-rings` as `bench` loads it. Time to first token: a chat history of about
`--history-tokens` tokens answered with one token (`max_tokens` 1), first from a cold cache,
then again with one more turn appended, which the cache serves (`cached_tokens`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import httpx


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) process `pid` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def decode_rate(
    client: httpx.Client, model: str, prompt_tokens: int, gen_tokens: int, pid: int | None
) -> tuple[float, float | None]:
    """(tokens per second of wall time, of the server's CPU time) of one streamed decode."""
    prompt = " ".join(["word"] * prompt_tokens)
    body = {"model": model, "prompt": prompt, "max_tokens": gen_tokens, "temperature": 0}
    first = finish = None
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            choice = json.loads(line[6:])["choices"][0]
            if first is None:
                first, first_cpu = time.perf_counter(), pid and cpu_seconds(pid)
            if choice["finish_reason"] is not None:
                finish, finish_cpu = time.perf_counter(), pid and cpu_seconds(pid)
                assert choice["finish_reason"] == "length", "stopped before --gen-tokens"
    cpu = (gen_tokens - 1) / (finish_cpu - first_cpu) if pid else None
    return (gen_tokens - 1) / (finish - first), cpu


def direct_rate(
    model: str, prompt_tokens: int, gen_tokens: int, rings: bool = True
) -> tuple[float, float]:
    """The same greedy decode on the runner itself, loaded as `serve` loads it (chat rings), or
    with `rings` off as `bench` loads it: tokens per second of wall time and of CPU time."""
    import gptoss_lite
    from gptoss_lite.chat.tokenizer import load_tokenizer
    from gptoss_lite.chat.tokens import ENDOFTEXT
    from gptoss_lite.config import read_config
    from gptoss_lite.engine.session import chat_ring_slots

    ring = chat_ring_slots(read_config(model)) if rings else None
    runner = gptoss_lite.load(model, device="cpu", ring_slots=ring)
    prompt = load_tokenizer(model).encode(" ".join(["word"] * prompt_tokens))
    tokens = runner.generate(prompt, max_new_tokens=gen_tokens, temperature=0, stop=(ENDOFTEXT,))
    next(tokens)
    start, start_cpu = time.perf_counter(), time.process_time()
    count = sum(1 for _ in tokens)
    assert count == gen_tokens - 1, "stopped before --gen-tokens"
    return count / (time.perf_counter() - start), count / (time.process_time() - start_cpu)


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
    parser.add_argument("--bench-rings", action="store_true", help="with --direct: bench's rings")
    parser.add_argument("--server-pid", type=int, help="also count the server's CPU time")
    args = parser.parse_args()
    if args.direct:
        rings = not args.bench_rings
        wall, cpu = direct_rate(args.direct, args.prompt_tokens, args.gen_tokens, rings)
        name = "chat" if rings else "bench"
        print(f"decode on the runner ({name} rings): {wall:.2f} tok/s, {cpu:.2f} tok/CPU-s")
        return
    client = httpx.Client(base_url=args.url, timeout=600)
    model = client.get("/v1/models").json()["data"][0]["id"]
    for _ in range(args.repeats):
        wall, cpu = decode_rate(client, model, args.prompt_tokens, args.gen_tokens, args.server_pid)
        per_cpu = f", {cpu:.2f} tok/CPU-s" if cpu else ""
        print(f"decode through the server: {wall:.2f} tok/s{per_cpu}")
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
