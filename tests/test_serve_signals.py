"""`gptoss-lite serve` stopped by real signals, in a subprocess on the tiny checkpoint.

SIGTERM or a first Ctrl-C: the running stream ends with a final chunk (`finish_reason`
"interrupted") and `[DONE]`, queued requests (streamed or not) get a 503 in the OpenAI shape,
generation stops and the command exits 0 without waiting out the grace period (uvicorn then
logs that it cancels tasks). A second Ctrl-C cuts a shutdown still waiting on a client short:
status 130. Clients that left while queued leave nothing behind to wait for. The tiny model
decodes a few to a few dozen tokens a second here, so a 1,500-token stream is surely still
running when the signal comes. Exit times are bounded loosely (a loaded machine takes seconds
to tear down torch); the times measured on a quiet one are in scripts/serve_hostile.py's notes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
from test_cli_serve import URL, _lines

pytest_plugins = ["cli_fixtures"]

WAIT_S = 60.0  # loading the tiny model and importing torch, on a busy machine
EXIT_S = 20.0  # bounds a hang; a wait on a stuck client shows as uvicorn's "Cancel" line
LONG = {"model": "ckpt", "prompt": "Once upon a time", "max_tokens": 1500, "temperature": 0}
CHAT = {"model": "ckpt", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


class Served:
    """A `serve` subprocess on the tiny model, its base URL and its stderr lines; one sequence
    at a time (`--parallel 1`), so that a second request waits in the queue."""

    def __init__(self, tiny_model, *args: str) -> None:
        command = "from gptoss_lite.cli import main; main()"
        argv = ["serve", "-m", str(tiny_model), "--device", "cpu", "--port", "0", "--parallel", "1"]
        argv += args
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", command, *argv], stderr=subprocess.PIPE, text=True, env=env
        )
        self.lines = _lines(self.process.stderr)
        self.lines.get(timeout=WAIT_S)  # the plan
        served = URL.match(self.lines.get(timeout=WAIT_S))
        assert served is not None
        self.url = served.group(2)
        self.client = httpx.Client(base_url=self.url, timeout=WAIT_S)

    def queue(self) -> dict:
        return self.client.get("/health").json()["queue"]

    def wait_queue(self, running: int, waiting: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while (self.queue()["running"], self.queue()["waiting"]) != (running, waiting):
            assert time.monotonic() < deadline, f"the queue never held {running}, {waiting}"
            time.sleep(0.05)

    def stop(self, sig: int) -> tuple[int, float]:
        """Send `sig`; (exit status, seconds it took)."""
        started = time.monotonic()
        self.process.send_signal(sig)
        status = self.process.wait(timeout=WAIT_S)
        return status, time.monotonic() - started

    def stderr(self) -> str:
        self.process.wait(timeout=WAIT_S)
        lines = []
        while not self.lines.empty():
            lines.append(self.lines.get())
        return "\n".join(lines)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=WAIT_S)


class Stream(threading.Thread):
    """A streamed request read in a thread: its status, its `data:` payloads, and an event set
    at its first text."""

    def __init__(self, url: str, path: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.path, self.body = url, path, body
        self.status, self.events, self.body_text = None, [], ""
        self.first_text = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=WAIT_S) as client:
            body = {**self.body, "stream": True}
            with client.stream("POST", self.path, json=body) as response:
                self.status = response.status_code
                if self.status != 200:
                    self.body_text = response.read().decode()
                    return
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
                        if '"text": "' in line and '"text": ""' not in line:
                            self.first_text.set()


def error_of(status: int, text: str) -> dict:
    """The OpenAI-shaped error body of a 503."""
    assert status == 503, text
    body = json.loads(text)
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_sigterm_ends_streams_refuses_the_queued_and_exits_0(
    tiny_model, o200k_env, o200k_tokenizer
):
    served = Served(tiny_model, "--max-queue", "4")
    try:
        running = Stream(served.url, "/v1/completions", LONG)
        running.start()
        assert running.first_text.wait(WAIT_S), "the long stream never started"
        queued_stream = Stream(served.url, "/v1/chat/completions", CHAT)
        queued_stream.start()
        queued: dict = {}
        plain = threading.Thread(
            target=lambda: queued.update(r=served.client.post("/v1/chat/completions", json=CHAT))
        )
        plain.start()
        served.wait_queue(1, 2)
        status, seconds = served.stop(signal.SIGTERM)
        assert status == 0 and seconds < EXIT_S
        for thread in (running, queued_stream, plain):
            thread.join(WAIT_S)
        final = json.loads(running.events[-2])
        assert running.events[-1] == "[DONE]"
        assert final["choices"][0]["finish_reason"] == "interrupted"
        text = "".join(json.loads(e)["choices"][0]["text"] for e in running.events[:-1])
        assert len(o200k_tokenizer.encode(text)) < LONG["max_tokens"] / 2  # stopped, far from it
        assert error_of(queued_stream.status, queued_stream.body_text)["code"] == (
            "server_shutting_down"
        )
        response = queued["r"]
        assert error_of(response.status_code, response.text)["code"] == "server_shutting_down"
        log = served.stderr()
        assert "Traceback" not in log and "Cancel" not in log, log
    finally:
        served.kill()


def test_ctrl_c_twice_cuts_the_shutdown_short(tiny_model, o200k_env):
    """The first Ctrl-C ends the running stream and waits for a client still sending its body;
    the second exits at once with 130."""
    served = Served(tiny_model)
    try:
        running = Stream(served.url, "/v1/completions", LONG)
        running.start()
        assert running.first_text.wait(WAIT_S), "the long stream never started"
        stalled = socket.create_connection(("127.0.0.1", int(served.url.rsplit(":", 1)[1])))
        stalled.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        time.sleep(0.5)  # the server reads the head and waits for the body
        served.process.send_signal(signal.SIGINT)
        running.join(WAIT_S)
        assert running.events[-1] == "[DONE]"
        assert json.loads(running.events[-2])["choices"][0]["finish_reason"] == "interrupted"
        assert served.process.poll() is None  # still waiting for the stalled body
        status, seconds = served.stop(signal.SIGINT)
        assert status == 130 and seconds < EXIT_S
        stalled.close()
    finally:
        served.kill()


def test_clients_that_left_while_queued_leave_nothing_to_wait_for(tiny_model, o200k_env):
    """Clients time out while queued behind a stream, then the stream's client leaves too:
    with nothing running, SIGTERM finds no handler left to wait for."""
    served = Served(tiny_model, "--max-queue", "8")
    try:
        with served.client.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r:
            lines = r.iter_lines()
            while '"text": "' not in next(lines):
                pass
            # Five clients queue at once and give up together after a second, so the stream
            # needs to outlast one second only, however fast the model decodes.
            answered = []

            def impatient() -> None:
                try:
                    httpx.post(f"{served.url}/v1/chat/completions", json=CHAT, timeout=1.0)
                    answered.append(True)
                except httpx.TimeoutException:
                    pass

            clients = [threading.Thread(target=impatient) for _ in range(5)]
            for client in clients:
                client.start()
            for client in clients:
                client.join()
            assert not answered, "a queued request was answered while the stream ran"
            served.wait_queue(1, 0)
        served.wait_queue(0, 0)
        status, seconds = served.stop(signal.SIGTERM)
        assert status == 0 and seconds < EXIT_S
        log = served.stderr()
        assert "Cancel" not in log and "Traceback" not in log, log
    finally:
        served.kill()
