"""Brokers: where messages get their seq, where history lives, and how messages reach every node's hub.

A broker is chosen by URL (`memory://`, later `redis://`) and imported only when asked for, so the
default install needs no Redis client. The hub is the broker's only caller: it publishes through
`publish`, reads `history` and `next_seq` for replays, and receives every stored message (from any node)
through the `deliver` callback, per room in seq order.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..errors import InvalidRequest

SCHEMES = ("memory",)
"""The broker URL schemes this version knows."""

Deliver = Callable[[Any], None]
"""Called with each stored Message (room, seq and sent_at_ms set), per room in seq order."""


class Broker(abc.ABC):
    """The small interface between the hub and where messages are stored."""

    @abc.abstractmethod
    async def start(self, deliver: Deliver) -> None:
        """Begin delivering stored messages to `deliver`."""

    @abc.abstractmethod
    async def publish(self, message: Any) -> tuple[int, bool]:
        """Store `message` (room set; seq and sent_at_ms assigned here) and deliver it.

        Returns (seq, stored). A message whose (room, sender, client_msg_id) is still in the dedup window
        is not stored again: the first send's seq comes back with stored False.
        """

    @abc.abstractmethod
    async def history(self, room: str, from_seq: int, limit: int) -> list[Any]:
        """Up to `limit` retained messages of `room` with seq >= from_seq, oldest first."""

    @abc.abstractmethod
    async def next_seq(self, room: str) -> int:
        """The seq the next message published to `room` will get (1 for a room never written)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop delivering and release what the broker holds."""


def open_broker(url: str, *, history: int, dedup_window: int, max_rooms: int) -> Broker:
    """Build the broker a URL names; its module is imported only here, when asked for."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(history=history, dedup_window=dedup_window, max_rooms=max_rooms)
    raise InvalidRequest(f"unsupported broker URL {url!r}: expected one of {', '.join(s + '://' for s in SCHEMES)}")
