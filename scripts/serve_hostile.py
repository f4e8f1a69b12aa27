"""Measure what hostile clients cost a running `gptoss-lite serve`: memory, descriptors, latency.

Run against a server already listening on this machine (its pid is needed to read its memory and
open descriptors from /proc), e.g. `gptoss-lite serve -m ./tiny --device cpu -c 2048`:

    python scripts/serve_hostile.py --url http://127.0.0.1:8000 --server-pid PID queued bodies

Cases (any of them, in order):
- `queued`: one long stream holds the queue; `--clients` non-streamed requests wait behind it
  and give up after half a second. Resident memory and open descriptors before and after,
  and what `/health` counts as waiting once they are gone.
- `bodies`: eight chat bodies of `--body-kb` KB (default 1,150), each too large for the context,
  sent at once while `/health` is asked every 10 ms: the slowest and the median answer of
  `/health` meanwhile.
- `store`: `--stored` Responses with ~1,956-token inputs (one shared prefix, so the KV cache
  serves most of each prompt), each stored: resident memory before and after.
- `idle`: 200 connections that never send a byte and 40 that send their head at a byte a second;
  open descriptors at once and after `--after` seconds, and whether a request is served
  meanwhile.
The figures print as one JSON object per case.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid`, in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def waiting(client: httpx.Client) -> int:
    return client.get("/health").json()["queue"]["waiting"]


def long_stream(url: str, model: str, stop: threading.Event, started: threading.Event) -> None:
    """A streamed completion that runs until `stop` is set (or its tokens run out)."""
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": 1500, "stream": True}
    with (
        httpx.Client(base_url=url, timeout=600) as client,
        client.stream("POST", "/v1/completions", json=body) as response,
    ):
        for _ in response.iter_lines():
            started.set()
            if stop.is_set():
                return


def queued(url: str, model: str, pid: int, clients: int) -> dict:
    control = httpx.Client(base_url=url, timeout=30)
    stop, started = threading.Event(), threading.Event()
    holder = threading.Thread(target=long_stream, args=(url, model, stop, started), daemon=True)
    holder.start()
    started.wait(120)
    before = rss_mib(pid), fds(pid)

    def leave() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{url}/v1/chat/completions", json={"model": model, **CHAT}, timeout=0.5)

    threads = [threading.Thread(target=leave) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(1.0)
    after = rss_mib(pid), fds(pid)
    left_waiting = waiting(control)
    stop.set()
    holder.join(120)
    return {
        "case": "queued",
        "clients": clients,
        "rss_mib": [round(before[0], 1), round(after[0], 1)],
        "fds": [before[1], after[1]],
        "waiting_after": left_waiting,
    }


def bodies(url: str, model: str, kilobytes: int) -> dict:
    text = "word " * (kilobytes * 1000 // 5)
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    statuses: list[int] = []

    def send() -> None:
        statuses.append(
            httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).status_code
        )

    senders = [threading.Thread(target=send) for _ in range(8)]
    latencies = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for sender in senders:
            sender.start()
        while any(s.is_alive() for s in senders):
            started = time.perf_counter()
            client.get("/health")
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
    return {
        "case": "bodies",
        "kilobytes": kilobytes,
        "statuses": sorted(set(statuses)),
        "health_ms_max": round(max(latencies) * 1000, 1),
        "health_ms_median": round(statistics.median(latencies) * 1000, 1),
        "health_calls": len(latencies),
    }


def store(url: str, model: str, pid: int, stored: int) -> dict:
    base = " ".join(f"w{i % 97}" for i in range(940))  # 1,880 tokens; ~1,956 with the rest
    client = httpx.Client(base_url=url, timeout=600)
    before = rss_mib(pid)
    for i in range(stored):
        body = {"model": model, "input": f"{base} {i}", "max_output_tokens": 1}
        response = client.post("/v1/responses", json=body)
        response.raise_for_status()
    after = rss_mib(pid)
    usage = response.json()["usage"]
    return {
        "case": "store",
        "stored": stored,
        "input_tokens": usage["input_tokens"],
        "rss_mib": [round(before, 1), round(after, 1)],
    }


def idle(url: str, pid: int, after: float) -> dict:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    before = fds(pid)
    sockets = [socket.create_connection((host, int(port))) for _ in range(200)]
    slow = [socket.create_connection((host, int(port))) for _ in range(40)]
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    started = time.monotonic()
    opened = fds(pid)
    served = httpx.get(f"{url}/health", timeout=30).status_code
    sent = 0
    while time.monotonic() - started < after:
        for sock in slow:
            with contextlib.suppress(OSError):
                sock.sendall(head[sent : sent + 1])
        sent = (sent + 1) % len(head)
        time.sleep(1.0)
    later = fds(pid)
    for sock in sockets + slow:
        sock.close()
    return {"case": "idle", "fds": [before, opened, later], "after_s": after, "served": served}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="+", choices=["queued", "bodies", "store", "idle"])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--model", default=None, help="the model id (default: the one served)")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--body-kb", type=int, default=1150)
    parser.add_argument("--stored", type=int, default=250)
    parser.add_argument("--after", type=float, default=35.0)
    args = parser.parse_args()
    model = args.model or httpx.get(f"{args.url}/v1/models").json()["data"][0]["id"]
    for case in args.cases:
        if case == "queued":
            result = queued(args.url, model, args.server_pid, args.clients)
        elif case == "bodies":
            result = bodies(args.url, model, args.body_kb)
        elif case == "store":
            result = store(args.url, model, args.server_pid, args.stored)
        else:
            result = idle(args.url, args.server_pid, args.after)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
