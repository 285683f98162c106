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
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

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

    stores_at_once: bool = False
    """Whether `publish_now` works: the broker stores a message without waiting for anything (the memory
    broker). A publish is then answered with no coroutine at all (processor.py)."""

    @abc.abstractmethod
    async def start(self, deliver: Deliver) -> None:
        """Begin delivering stored messages to `deliver`."""

    @abc.abstractmethod
    async def publish(self, message: Any) -> tuple[int, bool]:
        """Store `message` (room set; seq and sent_at_ms assigned here) and deliver it.

        Returns (seq, stored). A message whose (room, sender, client_msg_id) is still in the dedup window
        is not stored again: the first send's seq comes back with stored False.
        """

    def publish_now(self, message: Any) -> tuple[int, bool]:
        """`publish`, done before returning: only for a broker that `stores_at_once`."""
        raise NotImplementedError(f"{type(self).__name__} must wait to store a message; await publish()")

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


_REDIS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "socket_timeout": float, "socket_connect_timeout": float, "health_check_interval": int,
    "socket_keepalive": lambda v: {"true": True, "false": False, "1": True, "0": False}[v.lower()],
    "ssl_check_hostname": lambda v: {"true": True, "false": False, "1": True, "0": False}[v.lower()],
    "ssl_cert_reqs": lambda v: {"none": v, "optional": v, "required": v}[v.lower()],
    "ssl_ca_certs": str, "ssl_certfile": str, "ssl_keyfile": str, "client_name": str, "protocol": int,
}
"""The redis-py connection options a broker URL may carry, each with how its value is read; the rest
(retries among them: a retried publish could store twice) are refused rather than passed on blindly."""
_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def check_url(url: str) -> None:
    """InvalidRequest, in one line naming what is wrong, for a broker URL that cannot work; nothing is
    imported or reached here (a Redis that is down is the broker's to report)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "[::1", port 99999, port "abc"
        raise InvalidRequest(f"broker URL {redact(url)!r}: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise InvalidRequest(f"broker must be a URL of {', '.join(s + '://' for s in SCHEMES)}, not {redact(url)!r}")
    if parts.scheme == "sqlite":
        from .sqlite import parse_url

        parse_url(url)
    elif parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise InvalidRequest(f"broker URL {redact(url)!r}: no host (redis://host:6379/0)")
        if port == 0:
            raise InvalidRequest(f"broker URL {redact(url)!r}: port 0 is not a Redis port")
        database = parts.path.strip("/")
        if database and not database.isdigit():
            raise InvalidRequest(f"broker URL {redact(url)!r}: the database must be a number (/0), not {database!r}")
        try:
            options = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError as exc:
            raise InvalidRequest(f"broker URL {redact(url)!r}: {exc}") from None
        for name, values in options.items():
            read = _REDIS_OPTIONS.get(name)
            if read is None:
                raise InvalidRequest(
                    f"broker URL {redact(url)!r}: unknown option {name!r} (known: {', '.join(sorted(_REDIS_OPTIONS))})"
                )
            try:
                read(values[-1])
            except (ValueError, KeyError):
                value = values[-1]
                raise InvalidRequest(f"broker URL {redact(url)!r}: {name}={value!r} is not a valid value") from None
            if name in _FILES and not os.path.isfile(values[-1]):
                raise InvalidRequest(f"broker URL {redact(url)!r}: the {name} file {values[-1]} does not exist")


def redact(url: str) -> str:
    """`url` without its credentials, for logs and reprs: redis://:pw@host/0 -> redis://***@host/0."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL urllib can split: hide whatever stands before an @ all the same
        return re.sub(r"//[^/@]*@", "//***@", url)
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
        try:
            from .redis import RedisBroker
        except ImportError as exc:
            raise InvalidRequest(
                f"the {scheme}:// broker needs redis-py, which is not installed ({exc}):"
                " pip install 'async-chat[redis]'"
            ) from None

        return RedisBroker(
            url,
            history=settings.history,
            dedup_ttl=settings.dedup_ttl,
            timeout=settings.broker_timeout,
            room_ttl=settings.room_ttl,
        )
    raise InvalidRequest(f"unsupported broker URL {url!r}: expected one of {', '.join(s + '://' for s in SCHEMES)}")
