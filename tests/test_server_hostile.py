"""`serve` against clients that leave, stall, idle, half-close or send megabytes, over real
sockets on a scripted model.

A scripted model held on a gate makes "one running, N waiting" a state the test controls; raw
sockets do what the `openai` client cannot (idle, send a byte at a time, half-close). Every wait
is bounded; no assertion is on speed, only on what happens (measured figures are in
scripts/serve_hostile.py).
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import threading
import time
import weakref

import httpx
import pytest

from gptoss_lite.server.limits import Limits

pytest_plugins = ["server_fixtures"]

REPLY = "<|channel|>final<|message|>Hello there, friend.<|return|>"
CHAT = {"model": "gpt-oss-test", "messages": [{"role": "user", "content": "Hi"}]}
WAIT_S = 10.0  # bound on every wait for the server


def wait_for(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def serve(scripted_service, serve_http):
    """`serve(text, limits=None, **service_options)` → (base URL, service) of a running
    scripted server."""

    def start(text: str = REPLY, limits: Limits | None = None, **options):
        service = scripted_service(text, **options)
        return serve_http(service, limits), service

    return start


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def post(path: str, body: dict, extra_headers: str = "") -> bytes:
    """A whole HTTP/1.1 POST request of JSON `body`."""
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n{extra_headers}\r\n"
    )
    return head.encode() + data


def read_all(sock: socket.socket, timeout: float = WAIT_S) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def final_response(raw: bytes) -> tuple[int, dict]:
    """(status, JSON body) of the last response in `raw`, after any interim 1xx ones."""
    head, _, body = raw.rpartition(b"\r\n\r\n")
    status = int(head.rsplit(b"HTTP/1.1 ", 1)[1][:3])
    return status, json.loads(body)


# ------------------------------------------------------------------ item 1: left while queued


def test_a_client_that_leaves_while_queued_ends_its_request(serve):
    """Its job ends at once: the handler returns (its job is freed), /health stops counting
    it, and the queue has room again, while the running request is still held."""
    url, service = serve(max_queue=20)
    gate = service.runner.gate = threading.Event()
    jobs = []
    submit = service.submit

    def tracked(*args, **kwargs):
        job = submit(*args, **kwargs)
        jobs.append(weakref.ref(job))
        return job

    service.submit = tracked
    client = httpx.Client(base_url=url, timeout=WAIT_S)
    running = threading.Thread(target=lambda: client.post("/v1/chat/completions", json=CHAT))
    running.start()
    wait_for(lambda: service.queue.counts() == (1, 0), "the first request to run")
    impatient = httpx.Client(base_url=url, timeout=0.5)

    def leave() -> None:
        with pytest.raises(httpx.TimeoutException):
            impatient.post("/v1/chat/completions", json=CHAT)

    leaving = [threading.Thread(target=leave) for _ in range(12)]
    for thread in leaving:
        thread.start()
    for thread in leaving:
        thread.join(WAIT_S)
    assert len(jobs) == 13
    wait_for(lambda: service.queue.counts() == (1, 0), "the departed to leave the queue")
    assert client.get("/health").json()["queue"]["waiting"] == 0

    def freed() -> bool:
        gc.collect()
        return sum(ref() is not None for ref in jobs[1:]) == 0

    wait_for(freed, "the departed clients' handlers to return")
    gate.set()
    running.join(WAIT_S)
    assert service.runner.prompts and len(service.runner.prompts) == 1  # none of them ran


# ------------------------------------------------------------------ item 3: off the event loop


def test_bodies_are_rendered_and_tokenized_off_the_event_loop(serve, monkeypatch):
    """No tokenizing (nor anything it waits on) runs on the event loop; a text larger than the
    context could ever hold is refused before it is tokenized at all."""
    url, service = serve(context=4096)
    tokenizer = service.tokenizer
    encode = tokenizer.encode
    calls: list[tuple[int, bool]] = []

    def watched(text: str, **kwargs):
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        calls.append((len(text.encode()), on_loop))
        return encode(text, **kwargs)

    monkeypatch.setattr(tokenizer, "encode", watched)
    client = httpx.Client(base_url=url, timeout=WAIT_S)
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert calls and not any(on_loop for _, on_loop in calls)

    calls.clear()
    most = 4096 * tokenizer.max_token_bytes
    huge = "word " * (1_150_000 // 5)  # 1.15 MB, within the body limit of a 4k context
    bodies = [
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": huge}]}),
        ("/v1/responses", {"model": "gpt-oss-test", "input": huge}),
        ("/v1/completions", {"model": "gpt-oss-test", "prompt": huge}),
    ]
    for path, body in bodies:
        response = client.post(path, json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "context_length_exceeded"
    assert all(size <= most for size, _ in calls)
    assert service.runner.prompts == [service.runner.prompts[0]]  # only the first request ran


# ------------------------------------------------------------------ item 6: idle and slow


def test_idle_and_slow_connections_are_closed_while_others_are_served(serve):
    limits = Limits(header_timeout=1.0, body_timeout=1.0, max_connections=64)
    url, _ = serve(limits=limits)
    port = port_of(url)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    slow_head = socket.create_connection(("127.0.0.1", port))
    slow_head.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    slow_body = socket.create_connection(("127.0.0.1", port))
    slow_body.sendall(post("/v1/chat/completions", CHAT)[:-10])  # all but the body's end
    # Meanwhile an ordinary request is served.
    reply = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=WAIT_S)
    assert reply.json()["choices"][0]["message"]["content"] == "Hello there, friend."
    started = time.monotonic()
    for sock in idle:
        assert read_all(sock) == b""  # closed without a word: it never asked anything
    status, body = final_response(read_all(slow_head))
    assert status == 408 and body["error"]["code"] == "request_timeout"
    status, body = final_response(read_all(slow_body))
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < WAIT_S
    for sock in [*idle, slow_head, slow_body]:
        sock.close()


def test_a_trickle_of_header_bytes_does_not_keep_a_connection(serve):
    """One byte every 0.2 s: the head must be whole within the header timeout, however often
    bytes come."""
    url, _ = serve(limits=Limits(header_timeout=1.0))
    sock = socket.create_connection(("127.0.0.1", port_of(url)))
    request = post("/v1/chat/completions", CHAT)
    deadline = time.monotonic() + WAIT_S
    closed = False
    for byte in request[:200]:
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # the server closed the connection: as it should
            closed = True
            break
        time.sleep(0.2)
        assert time.monotonic() < deadline
    sock.settimeout(WAIT_S)
    data = b"" if closed else read_all(sock)
    assert closed or final_response(data)[0] == 408


def test_connections_beyond_the_cap_are_refused(serve):
    url, _ = serve(limits=Limits(max_connections=8))
    port = port_of(url)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    extra = socket.create_connection(("127.0.0.1", port))
    status, body = final_response(read_all(extra))
    assert status == 503 and body["error"]["code"] == "too_many_connections"
    for sock in held:
        sock.close()
    # Once they are closed, requests are served again.
    wait_for(lambda: httpx.get(f"{url}/health", timeout=WAIT_S).status_code == 200, "a free slot")


# ------------------------------------------------------------------ item 10: half-closed


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_half_closes_is_answered(serve, stream):
    url, _ = serve()
    sock = socket.create_connection(("127.0.0.1", port_of(url)))
    sock.sendall(post("/v1/chat/completions", {**CHAT, "stream": stream}))
    sock.shutdown(socket.SHUT_WR)  # "that is all I have to say"
    raw = read_all(sock)
    sock.close()
    assert b"HTTP/1.1 200 OK" in raw
    if stream:  # each event is one chunk, so its `data:` line is whole
        events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
        deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
        assert "".join(d.get("content", "") for d in deltas) == "Hello there, friend."
        assert events[-1] == b"[DONE]"
    else:
        assert final_response(raw)[1]["choices"][0]["message"]["content"] == "Hello there, friend."


def test_a_client_that_closes_while_queued_is_still_noticed(serve):
    """A client that closes for good looks like one that half-closed until it is written
    to: the interim responses find out, and its request leaves the queue."""
    url, service = serve(max_queue=4)
    gate = service.runner.gate = threading.Event()
    client = httpx.Client(base_url=url, timeout=WAIT_S)
    running = threading.Thread(target=lambda: client.post("/v1/chat/completions", json=CHAT))
    running.start()
    wait_for(lambda: service.queue.counts() == (1, 0), "the first request to run")
    sock = socket.create_connection(("127.0.0.1", port_of(url)))
    sock.sendall(post("/v1/chat/completions", CHAT))
    wait_for(lambda: service.queue.counts() == (1, 1), "the second request to wait")
    sock.close()
    wait_for(lambda: service.queue.counts() == (1, 0), "the closed client's request to end")
    gate.set()
    running.join(WAIT_S)
