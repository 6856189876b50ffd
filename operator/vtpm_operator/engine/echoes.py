"""Which echoed statuses are an engine's own, so that a status someone else replaced (a replica
that lagged behind, a person) is written again at once rather than at the next refresh."""

from __future__ import annotations

from collections import deque
from typing import Any

KEPT = 4  # writes whose echo may still be on its way (the publisher writes an object ≤ 1/s)


class Echoes:
    """The conditions of one object's recent status writes, in the order they were written.

    The API server sends the object's events in the order it stored them, our writes among them.
    So an event before the echo of our first write predates that write, and the write replaces it:
    it says nothing of another writer (the startup listing, read before the write, arrives so).
    After an echo, an event is ours when it matches a write no older than the last one matched;
    anything else was stored after ours by someone else.
    """

    def __init__(self) -> None:
        self._sent: deque[Any] = deque(maxlen=KEPT)
        self._echoed = False  # an echo of one of them has come back

    def wrote(self, conditions: Any) -> None:
        self._sent.append(conditions)

    def replaced_by_another(self, conditions: Any) -> bool:
        """Take in an event; True when another writer made it (then the next write is a heal)."""
        if not self._sent:
            return False  # nothing of ours on its way, or healed already: late echoes pass
        try:
            index = self._sent.index(conditions)
        except ValueError:
            if not self._echoed:
                return False  # stored before our first write, which replaces it
            self._sent.clear()
            self._echoed = False
            return True
        for _ in range(index):  # those writes were overtaken: their echoes are behind us
            self._sent.popleft()
        self._echoed = True
        return False
