"""When to try a remote call again, pure: which answers are worth another attempt, how long to wait (exponential
backoff with jitter, or the server's Retry-After), and when a wait is too long to be worth it."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

# Answers worth another attempt (what the openai client itself retries).
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds a server asks us to wait: retry-after-ms, else retry-after (seconds or an HTTP date); None if neither."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except ValueError:
            pass
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError, IndexError):
            continue
    return None


class WaitTooLong(Exception):
    """The server asks for a wait longer than the policy allows: give up now rather than sleep past any deadline."""


@dataclass
class Backoff:
    """Waits before retries: `base_s * 2^(attempt-1)` capped at `max_s`, with "equal jitter" (half fixed, half
    random: concurrent clients spread out, and no wait is shorter than half its step). A server's Retry-After wins,
    plus up to 10% (never sooner than asked); one beyond `max_s` raises WaitTooLong."""

    base_s: float
    max_s: float
    rng: random.Random = field(default_factory=random.Random)

    def wait(self, attempt: int, asked_s: float | None = None) -> float:
        """Seconds before retry number `attempt` (1 = the first retry)."""
        if asked_s is not None:
            if asked_s > self.max_s:
                raise WaitTooLong(f"asks to retry after {asked_s:g}s, more than {self.max_s:g}s")
            return asked_s * (1.0 + 0.1 * self.rng.random())
        step = min(self.max_s, self.base_s * 2 ** (attempt - 1))
        return step / 2 + self.rng.random() * step / 2
