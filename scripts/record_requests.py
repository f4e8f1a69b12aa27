"""Record what an API client sends to `gptoss-lite serve`, as the agent replay tests store it.

Two steps. `proxy` listens on 127.0.0.1:PORT, forwards every request to the server at UPSTREAM
(streams included) and appends each request, with the status of its answer, to a JSONL file:

    python scripts/record_requests.py proxy --upstream http://127.0.0.1:8000 --port 8001 rec.jsonl
    CODEX_HOME=... codex exec "..."      # configured with base_url http://127.0.0.1:8001/v1

`fixture` turns such a file into a fixture of tests/fixtures/agents/: the requests in order
(`/health` probes left out), each body byte for byte as sent, except that with `--left-out` the
prose the client's authors wrote (its system and developer messages, tool and parameter
descriptions, grammars) is replaced by a note of its length: those texts belong to the client's
project, and the replay needs only their shape.

    python scripts/record_requests.py fixture rec.jsonl tests/fixtures/agents/codex-answer.json \\
        --client "codex-cli 0.171.0" --command 'codex exec "Say hi"' --left-out
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PROSE_KEYS = ("description", "definition")  # in tools, at any depth
PROSE_ROLES = ("system", "developer")  # messages the client writes itself


def proxy(upstream: str, port: int, out: Path) -> None:
    """Forward everything to `upstream`, appending each request to `out` once answered."""
    import httpx
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(timeout=None)
    hop = {"host", "content-length", "accept-encoding", "transfer-encoding", "connection"}

    async def forward(request: Request) -> StreamingResponse:
        body = await request.body()
        record: dict[str, Any] = {"method": request.method, "path": request.url.path}
        record["body"] = json.loads(body) if body else None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        sent = client.build_request(
            request.method, upstream + request.url.path, headers=headers, content=body,
            params=request.query_params,
        )  # fmt: skip
        answer = await client.send(sent, stream=True)

        async def relay():
            try:
                async for chunk in answer.aiter_raw():
                    yield chunk
            finally:  # also when the client leaves as soon as it has what it wants
                await answer.aclose()
                record["status"] = answer.status_code
                with out.open("a", encoding="utf-8") as file:
                    file.write(json.dumps(record, ensure_ascii=False) + "\n")

        dropped = hop | {"content-encoding"}
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in dropped}
        return StreamingResponse(relay(), status_code=answer.status_code, headers=kept)

    methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]
    app = Starlette(routes=[Route("/{path:path}", forward, methods=methods)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def fixture(records: Path, out: Path, client: str, command: str, left_out: bool) -> None:
    """Write the fixture of a recording."""
    requests = []
    for line in records.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["path"] == "/health":
            continue
        body = record["body"]
        if left_out and isinstance(body, dict):
            body = _without_prose(body)
        requests.append({"method": record["method"], "path": record["path"], "body": body})
    data = {"client": client, "command": command, "prose_left_out": left_out, "requests": requests}
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _without_prose(body: dict) -> dict:
    body = dict(body)
    if isinstance(body.get("tools"), list):
        body["tools"] = [_note_keys(tool) for tool in body["tools"]]
    if isinstance(body.get("instructions"), str):
        body["instructions"] = _note(body["instructions"])
    for key in ("input", "messages"):
        if isinstance(body.get(key), list):
            body[key] = [_note_message(item) for item in body[key]]
    return body


def _note(text: str) -> str:
    return f"[{len(text)} characters of the client's own text, left out]"


def _note_keys(value: Any) -> Any:
    if isinstance(value, dict):
        noted = {k: _note(v) if k in PROSE_KEYS and isinstance(v, str) else _note_keys(v)
                 for k, v in value.items()}  # fmt: skip
        return noted
    if isinstance(value, list):
        return [_note_keys(v) for v in value]
    return value


def _note_message(item: Any) -> Any:
    if not isinstance(item, dict) or item.get("role") not in PROSE_ROLES:
        return item
    content = item.get("content")
    if isinstance(content, str):
        return {**item, "content": _note(content)}
    if isinstance(content, list):
        parts = [{**p, "text": _note(p["text"])} if isinstance(p.get("text"), str) else p
                 for p in content]  # fmt: skip
        return {**item, "content": parts}
    return item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    listen = steps.add_parser("proxy", help="record the requests a client sends")
    listen.add_argument("out", type=Path, help="JSONL file the requests are appended to")
    listen.add_argument("--upstream", required=True, help="the server, e.g. http://127.0.0.1:8000")
    listen.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    make = steps.add_parser("fixture", help="turn a recording into a replay fixture")
    make.add_argument("records", type=Path, help="the proxy's JSONL file")
    make.add_argument("out", type=Path, help="the fixture to write")
    make.add_argument("--client", required=True, help='e.g. "codex-cli 0.171.0"')
    make.add_argument("--command", required=True, help="what was run to make the requests")
    make.add_argument("--left-out", action="store_true", help="replace the client's own prose")
    args = parser.parse_args()
    if args.step == "proxy":
        proxy(args.upstream.rstrip("/"), args.port, args.out)
    else:
        fixture(args.records, args.out, args.client, args.command, args.left_out)


if __name__ == "__main__":
    main()
