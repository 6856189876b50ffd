"""in_background: the call's result or its exception reaches whoever takes it; the exit never waits."""

from __future__ import annotations

import threading

import pytest

from vtpm_operator.background import in_background


def test_the_result_and_the_exception_reach_the_taker() -> None:
    assert in_background(lambda: 42, "answer").result(timeout=5) == 42

    def refuse() -> int:
        raise LookupError("refused")

    with pytest.raises(LookupError, match="refused"):
        in_background(refuse, "refusal").result(timeout=5)


def test_a_call_left_unanswered_does_not_hold_up_the_exit() -> None:
    release = threading.Event()
    future = in_background(lambda: release.wait(), "unanswered")
    (thread,) = [t for t in threading.enumerate() if t.name == "unanswered"]
    assert thread.daemon
    assert not future.done()
    release.set()
    assert future.result(timeout=5) is True
