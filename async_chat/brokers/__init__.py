"""Brokers: where messages get their seq, where history lives, and how messages reach every node's hub.

A broker is chosen by URL (`memory://`, `sqlite:///file.db`, `redis://`, `rediss://`) and imported only
when asked for, so the default install needs no Redis client. The hub is the broker's only caller: it publishes through
`publish`, reads `history` and `next_seq` for replays, says which rooms it has subscribers in (`watch`,
`unwatch`), and receives every stored message of a watched room (from any node) through the `deliver`
callback, per room in increasing seq order. A seq the broker could not deliver (lost with a failed
Redis, trimmed before this node read it) is simply absent: the hub counts such a gap as missed.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import InvalidRequest

if TYPE_CHECKING:
    from ..settings import Settings

SCHEMES = ("memory", "sqlite", "redis", "rediss")
"""The broker URL schemes this version knows."""

Deliver = Callable[[Any], None]
"""Called with each stored Message (room, seq and sent_at_ms set), per room in seq order."""


class Broker(abc.ABC):
    """The small interface between the hub and where messages are stored."""

    up: bool = True
    """Whether the broker is reachable now (an embedded one always is); /readyz and stats() show it."""
    outages = 0
    reconnects = 0
    errors = 0
    """Calls to the broker that failed (each answered UNAVAILABLE)."""
    eager: bool = False
    """Whether a call may start outside any task (connection.py runs calls eagerly when it can): true
    only if nothing the broker awaits asks for the current task, as `asyncio.timeout` and redis-py do."""

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

    async def watch(self, room: str) -> None:  # noqa: B027 - optional: a broker that delivers everything ignores it
        """Deliver `room`'s messages from now on; returns once nothing published after it can be missed."""

    def renumbered(self, room: str, start: int, end: int) -> int | None:
        """If `room`'s numbering jumped between seqs `start` and `end` (a new epoch after the broker may
        have lost data), the floor it jumped to: seqs up to it were never issued in the new epoch, and how
        many were lost before it is unknown. None for an ordinary gap (or a broker that never jumps)."""
        return None

    def unwatch(self, room: str) -> None:  # noqa: B027 - optional, as watch
        """This node has no subscriber left in `room`: its messages need not be delivered any more."""

    def store_bytes(self) -> int | None:
        """Bytes this server's store takes now (memory counted, or a file on disk); None for a shared one."""
        return None

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop delivering and release what the broker holds."""


def redact(url: str) -> str:
    """`url` without its credentials, for logs and reprs: redis://:pw@host/0 -> redis://***@host/0."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def open_broker(settings: Settings) -> Broker:
    """Build the broker `settings.broker` names; its module is imported only here, when asked for."""
    url = settings.broker
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(
            history=settings.history,
            dedup_window=settings.dedup_window,
            max_rooms=settings.max_rooms,
            max_memory=settings.max_memory,
            room_ttl=settings.room_ttl,
        )
    if scheme == "sqlite":
        from .sqlite import SqliteBroker

        return SqliteBroker(
            url,
            history=settings.history,
            history_ttl=settings.history_ttl,
            dedup_ttl=settings.dedup_ttl,
            max_rooms=settings.max_rooms,
            room_ttl=settings.room_ttl,
            timeout=settings.broker_timeout,
        )
    if scheme in ("redis", "rediss"):
        from .redis import RedisBroker

        return RedisBroker(
            url,
            history=settings.history,
            dedup_ttl=settings.dedup_ttl,
            timeout=settings.broker_timeout,
            room_ttl=settings.room_ttl,
        )
    raise InvalidRequest(f"unsupported broker URL {url!r}: expected one of {', '.join(s + '://' for s in SCHEMES)}")
