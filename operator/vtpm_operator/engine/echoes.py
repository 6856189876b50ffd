"""Which echoed statuses are an engine's own, so that a status someone else replaced (a replica
that lagged behind, a person) is written again at once rather than at the next refresh."""

from __future__ import annotations

from collections import deque
from typing import Any

KEPT = 4  # writes whose echo may still be on its way (the publisher writes an object ≤ 1/s)


class Echoes:
    """The conditions of one object's recent status writes, in the order they were written.

    The API server sends an object's events in the order it stored them, ours among them, and
    Kopf hands on every event, one by one, in that order. So an event that comes while our newest
    write has not been echoed was stored before that write, which replaces it: it asks for nothing
    (the startup listing, read before the first write, arrives so). Once the newest write has been
    echoed, an event that matches none of the writes still on their way was stored after ours by
    someone else. An event is ours when it matches a write no older than the last one matched.
    """

    def __init__(self) -> None:
        self._sent: deque[Any] = deque(maxlen=KEPT)
        self._newest_echoed = False

    def wrote(self, conditions: Any) -> None:
        if not self._sent or self._sent[-1] != conditions:  # a refresh: its echo looks like the last
            self._sent.append(conditions)
        self._newest_echoed = False

    def replaced_by_another(self, conditions: Any) -> bool:
        """Take in an event; True when another writer made it (then the next write is a heal)."""
        if not self._sent:
            return False  # nothing of ours on its way, or healed already: late echoes pass
        try:
            index = self._sent.index(conditions)
        except ValueError:
            if not self._newest_echoed:
                return False  # stored before our newest write, which replaces it
            self._sent.clear()
            return True
        for _ in range(index):  # those writes were overtaken: their echoes are behind us
            self._sent.popleft()
        self._newest_echoed = len(self._sent) == 1
        return False
