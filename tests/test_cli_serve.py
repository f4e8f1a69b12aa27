"""`gptoss-lite serve` as a user starts it: the plan and the URL on stderr, Ctrl-C to stop.

The command runs in a subprocess on the tiny checkpoint with `--port 0` (a free port of
127.0.0.1, which the URL line names); every wait on it is bounded.
"""

from __future__ import annotations

import importlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from types import SimpleNamespace

import httpx

from gptoss_lite.config import preset
from gptoss_lite.errors import GptossError
from gptoss_lite.server.limits import MIB, Limits

pytest_plugins = ["cli_fixtures"]

WAIT_S = 60.0  # loading the tiny model and importing torch, on a busy machine
URL = re.compile(r"^serving (\S+) at (http://127\.0\.0\.1:\d+)/v1$")


def _lines(stream) -> queue.Queue:
    """The lines of `stream`, read in a thread so that waiting for one can time out."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_serve_prints_the_plan_and_the_url_and_stops_on_ctrl_c(tiny_model, o200k_env):
    command = "from gptoss_lite.cli import main; main()"
    args = ["serve", "-m", str(tiny_model), "--device", "cpu", "--port", "0", "--api-key", "k"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-c", command, *args], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        lines = _lines(server.stderr)
        plan = lines.get(timeout=WAIT_S)
        assert plan.startswith("ckpt on cpu (cpu): context "), plan
        served = URL.match(lines.get(timeout=WAIT_S))
        assert served is not None and served.group(1) == "ckpt"
        base = served.group(2)
        assert httpx.get(f"{base}/health", timeout=WAIT_S).json()["model"] == "ckpt"
        models = httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer k"})
        assert [m["id"] for m in models.json()["data"]] == ["ckpt"]
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=WAIT_S) == 0  # a clean stop (a second Ctrl-C would be 130)
    finally:
        server.kill()
        server.wait(timeout=WAIT_S)


def test_a_port_in_use_is_one_line(cli, tiny_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = cli("serve", "-m", tiny_model, "--device", "cpu", "--port", port)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_cpu_experts_reach_the_loading(cli, monkeypatch):
    serve = importlib.import_module("gptoss_lite.cli.serve")
    asked = []

    def open_model(model, options, **_):
        asked.append(options.cpu_experts)
        raise GptossError("stopped before loading")

    monkeypatch.setattr(serve, "bind", lambda host, port: None)
    monkeypatch.setattr(serve, "open_model", open_model)
    assert cli("serve", "--cpu-experts", "3").exit_code == 1
    assert cli("serve", env={"GPTOSS_LITE_CPU_EXPERTS": "all"}).exit_code == 1
    assert asked == [3, "all"]


def test_limits_reach_the_server(cli, monkeypatch):
    serve = importlib.import_module("gptoss_lite.cli.serve")
    made = []

    class Stopped:
        force_exit = started = False

        def run(self, sockets) -> None:
            pass

    def make_server(service, limits):
        made.append(limits)
        service.close()
        return Stopped()

    runner = SimpleNamespace(context=64, config=preset("tiny"), caches=[None], batch=lambda: None)
    loaded = SimpleNamespace(runner=runner, tokenizer=None)
    opened = []
    monkeypatch.setattr(
        serve, "bind", lambda host, port: SimpleNamespace(getsockname=lambda: (host, port))
    )
    monkeypatch.setattr(
        serve, "open_model", lambda model, options, **_: opened.append(options) or loaded
    )
    monkeypatch.setattr(serve, "make_server", make_server)
    flags = ["--store-mib", "8", "--header-timeout", "5", "--body-timeout", "7"]
    result = cli("serve", *flags, "--max-connections", "9")
    assert result.exit_code == 0, result.output
    assert cli("serve").exit_code == 0
    assert made == [Limits(5.0, 7.0, 9, 8 * MIB), Limits()]
    assert [o.parallel for o in opened] == [None, None]  # auto: the planner's count
    assert cli("serve", "--parallel", "3").exit_code == 0
    assert cli("serve", env={"GPTOSS_LITE_PARALLEL": "2"}).exit_code == 0
    assert [o.parallel for o in opened[2:]] == [3, 2]
    shown = cli("serve", "--help").output
    assert "--store-mib" in shown and "--header-timeout" in shown and "--max-connections" in shown
