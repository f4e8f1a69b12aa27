"""What one server allows its clients: read timeouts, open connections, the store's bytes.

`Limits` gathers the bounds `serve` takes as flags, with the defaults it uses: a request's head
must arrive within `header_timeout` seconds of the connection opening (or of the previous
response), and its body within `body_timeout` seconds of the head; at most `max_connections`
connections are open at once (one more is answered 503 and closed); the Responses store keeps
the newest stored responses within `store_bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """The bounds a server holds its clients to."""

    header_timeout: float = 30.0
    body_timeout: float = 30.0
    max_connections: int = 256
    store_bytes: int = 256 * MIB
