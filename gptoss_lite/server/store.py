"""The Responses store: the turns of stored responses, for `previous_response_id`, within a budget.

Each stored response keeps its whole conversation so far (`Turns`: the harmony messages and the
function name of each call id). The store keeps the newest responses whose sizes add up to at
most its byte budget (`serve --store-mib`), forgetting the oldest first; a size counts every
message's text as Python holds it plus a fixed overhead per message, so messages shared between
stored responses are counted once for each (the budget is an upper bound on what they hold). A
response larger than the whole budget is not kept. Asking for a response that was evicted (or
never kept) is a 400 that says so; one the store never saw is a 400 saying it was not found.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from ..chat.harmony import Message
from .errors import ApiError, shown

MESSAGE_OVERHEAD = 400  # bytes: a Message object, its short fields, list and dict slots
EVICTED_IDS = 16384  # ids of evicted responses remembered, to say why they are gone


@dataclass
class Turns:
    """A conversation's harmony turns so far and the function name of each call id in them."""

    messages: list[Message] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)

    def nbytes(self) -> int:
        """What keeping these turns costs, at most."""
        texts = sum(sys.getsizeof(m.content) for m in self.messages)
        names = sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in self.names.items())
        return texts + names + MESSAGE_OVERHEAD * (len(self.messages) + len(self.names))


class ResponseStore:
    """The turns of the newest stored responses, by response id, within `budget` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._turns: OrderedDict[str, tuple[Turns, int]] = OrderedDict()
        self._evicted: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._turns)

    def get(self, response_id: str) -> Turns:
        """A copy of the turns of `response_id`, or a 400 saying why there are none."""
        with self._lock:
            kept = self._turns.get(response_id)
            evicted = response_id in self._evicted
        if kept is None:
            why = (
                f"was evicted from this server's store, which keeps the newest responses within "
                f"{self.budget / (1 << 20):g} MiB; send the whole conversation instead"
                if evicted
                else "was not found"
            )
            raise ApiError(
                400,
                f"previous response {shown(response_id)} {why}",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        turns = kept[0]
        return Turns(list(turns.messages), dict(turns.names))

    def put(self, response_id: str, turns: Turns) -> None:
        """Keep `turns` as `response_id`, evicting the oldest responses beyond the budget."""
        size = turns.nbytes()
        with self._lock:
            if size > self.budget:
                self._forget(response_id)
                return
            self._turns[response_id] = (turns, size)
            self.used += size
            while self.used > self.budget:
                oldest, (_, oldest_size) = self._turns.popitem(last=False)
                self.used -= oldest_size
                self._forget(oldest)

    def _forget(self, response_id: str) -> None:
        self._evicted[response_id] = None
        while len(self._evicted) > EVICTED_IDS:
            self._evicted.popitem(last=False)
