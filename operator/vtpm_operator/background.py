"""One call made in a thread of its own while the caller goes on with other work."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


def in_background(call: Callable[[], T], name: str) -> Future[T]:
    """call() in a daemon thread: a vCenter that leaves the call unanswered must not hold up the
    process's exit, as a pool's thread would. Its result, or what it raised, is the future's."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as error:  # handed to whoever takes the result
            future.set_exception(error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
