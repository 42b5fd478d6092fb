"""Retry waits, pure: Retry-After in its three forms, exponential backoff with equal jitter, waits too long."""

from __future__ import annotations

import email.utils
import random
import time

import pytest

from council.backends.retry import Backoff, WaitTooLong, retry_after


def test_retry_after_reads_milliseconds_seconds_and_dates() -> None:
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({"retry-after": "2"}) == 2.0
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (retry_after({"retry-after": when}) or 0) <= 30
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None and retry_after(None) is None
    assert retry_after({"retry-after": "-3"}) == 0.0


def test_backoff_doubles_with_equal_jitter_and_is_capped() -> None:
    backoff = Backoff(0.5, 3.0, random.Random(0))
    for attempt, step in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)]:
        waits = [backoff.wait(attempt) for _ in range(200)]
        assert step / 2 <= min(waits) and max(waits) <= step and len(set(waits)) > 1


def test_a_servers_retry_after_wins_never_sooner_and_not_beyond_the_cap() -> None:
    backoff = Backoff(0.5, 3.0, random.Random(0))
    assert all(2.0 <= backoff.wait(1, 2.0) <= 2.2 for _ in range(100))
    with pytest.raises(WaitTooLong, match="retry after 60s, more than 3s"):
        backoff.wait(1, 60.0)
