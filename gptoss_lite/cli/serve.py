"""`gptoss-lite serve`: the OpenAI-compatible HTTP server, like `llama-server` or `ollama serve`.

It loads one model once (the memory plan on stderr first, with the sliding-window rings sized so
a conversation's cache can rewind over a reply, as in `chat`), binds the address (a port in use is
one error line), prints the URL and serves Chat Completions, Responses and Completions until
SIGTERM or Ctrl-C: then running streams end with "interrupted", queued requests get a 503 and
the command exits 0 within a few seconds (130 after a second Ctrl-C). Every option can also come
from its GPTOSS_LITE_* variable. `--parallel N` requests are decoded together, each with a KV
cache of its own (the plan line says the context each gets); more wait in the queue.
"""

from __future__ import annotations

import os
import socket
import sys

import click

from ..errors import GptossError
from ..server.http_server import make_server
from ..server.limits import MIB, Limits
from ..server.service import DEFAULT_MAX_QUEUE, Service, model_name
from .common import open_model
from .options import (
    budget_option,
    context_option,
    cpu_experts_option,
    device_option,
    kv_cache_option,
    model_option,
    parallel_option,
    profile_option,
    take_model_options,
)


@click.command()
@model_option("Hugging Face repo id or local checkpoint folder.", default="openai/gpt-oss-20b")
@profile_option()
@context_option("Context length in tokens [default: the largest that fits the profile].")
@device_option()
@budget_option()
@kv_cache_option()
@cpu_experts_option()
@parallel_option(default="auto")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on (0: any free one).",
)
@click.option(
    "--api-key", default=None, help="Require 'Authorization: Bearer KEY' on /v1 [default: none]."
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_QUEUE,
    show_default=True,
    help="Requests that may wait for a free slot (see --parallel); more get 503.",
)
@click.option(
    "--store-mib",
    type=click.IntRange(min=0),
    default=Limits.store_bytes // MIB,
    show_default=True,
    help="Memory for stored Responses (previous_response_id), in MiB; the oldest are evicted "
    "first.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0.1, max=3600),
    default=Limits.header_timeout,
    show_default=True,
    help="Seconds a client has to send a request's headers; then the connection is closed.",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0.1, max=3600),
    default=Limits.body_timeout,
    show_default=True,
    help="Seconds a client has to send a request's body once its headers came; then 408.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=Limits.max_connections,
    show_default=True,
    help="Connections open at once; one more is answered 503 and closed.",
)
def serve(
    model: str,
    host: str,
    port: int,
    api_key: str | None,
    max_queue: int,
    store_mib: int,
    header_timeout: float,
    body_timeout: float,
    max_connections: int,
    **opening,
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API until SIGTERM or Ctrl-C.

    Endpoints: /v1/chat/completions, /v1/responses, /v1/completions, /v1/models, /health.
    """
    options = take_model_options(opening)
    listener = bind(host, port)
    loaded = open_model(model, options, chat=True)  # a reply has no fixed length here
    service = Service(
        loaded.runner, loaded.tokenizer, model_name(model), api_key=api_key, max_queue=max_queue
    )
    bound_host, bound_port = listener.getsockname()[:2]
    click.echo(f"serving {service.model_id} at {url(bound_host, bound_port)}/v1", err=True)
    limits = Limits(header_timeout, body_timeout, max_connections, store_mib * MIB)
    server = make_server(service, limits)
    server.run(sockets=[listener])
    status = 130 if server.force_exit else 0  # 130: a second Ctrl-C, as for run and chat
    if server.started:  # stopped cleanly: skip the interpreter's teardown (seconds, with torch)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one error line (address in use, bad host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise GptossError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    family, kind, _, _, address = infos[0]
    listener = socket.socket(family, kind)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        listener.close()
        raise GptossError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return listener


def url(host: str, port: int) -> str:
    """The base URL of a bound address (IPv6 in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
