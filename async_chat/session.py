"""What the server knows about the connection a call came on: who it proved to be, its publish budget, and
the subscriptions it opened.

Every connection is served by a task of its own, and a task's context is its own, so the session lives
in a context variable that the server sets when the connection opens and the handler reads per call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up: a sustained rate with room for short bursts."""

    __slots__ = ("_clock", "_last", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst = rate, burst
        self._clock = clock
        self.tokens = float(burst)
        self._last = self._clock()

    def take(self) -> float:
        """Spend one token: 0.0 when there was one, else the seconds until there will be (nothing spent)."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1 - 1e-9:  # a whole token, up to float rounding of the refill
            self.tokens = max(self.tokens - 1, 0.0)
            return 0.0
        return (1 - self.tokens) / self.rate


@dataclass
class Session:
    identity: str | None = None
    """Who the connection proved to be with authenticate(); None until then (or without auth)."""
    publishes: TokenBucket | None = field(default=None, repr=False)
    """The connection's publish budget; None: unlimited."""
    subscriptions: set[str] = field(default_factory=set, repr=False)
    """Subscriptions opened on this connection (some may have ended since: pruned when at the limit)."""


SESSION: ContextVar[Session | None] = ContextVar("async_chat_session", default=None)
