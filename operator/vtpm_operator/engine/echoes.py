"""Which echoed statuses are an engine's own, so that a status someone else replaced (a replica
that lagged behind, a person) is written again at once rather than at the next refresh."""

from __future__ import annotations

from collections import deque
from typing import Any

KEPT = 4  # writes whose echo may still be on its way (the publisher writes an object ≤ 1/s)


class Echoes:
    """The conditions of one object's recent status writes, in the order they were written.

    The API server sends the echoes back in that order, so an echo is ours when it matches a write
    no older than the last one matched. An older state shown again later is someone else's.
    """

    def __init__(self) -> None:
        self._sent: deque[Any] = deque(maxlen=KEPT)

    def wrote(self, conditions: Any) -> None:
        self._sent.append(conditions)

    def replaced_by_another(self, conditions: Any) -> bool:
        """Take in an echo; True when another writer made it (then the next write is a heal)."""
        if not self._sent:
            return False  # nothing of ours on its way, or healed already: late echoes pass
        try:
            index = self._sent.index(conditions)
        except ValueError:
            self._sent.clear()
            return True
        for _ in range(index):  # those writes were overtaken: their echoes are behind us
            self._sent.popleft()
        return False
