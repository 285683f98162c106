"""ChatHandler: the service's methods, as thriftpy2's processor calls them.

It validates what arrives (thriftpy2 enforces no required field and no size), normalises the room, copies
only the client's own fields (seq and sent_at_ms are the server's to assign), and hands
the rest to the hub. It raises `async_chat.errors.ChatError` kinds; the processor maps them to the wire.
Method names are the IDL's, camelCase included.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import auth
from .brokers import redact
from .contract import CONTROL_CHARACTERS, DEFAULT_ROOM, ServerStats
from .delivery import LATER
from .errors import InvalidRequest, RateLimited, TooLarge, Unauthorized
from .hub import Hub
from .session import SESSION
from .settings import Settings

MAX_STATS_ROOMS = 1000


class ChatHandler:
    """Implements `service ChatService` from chat.thrift."""

    def __init__(
        self,
        hub: Hub,
        settings: Settings,
        connections: Callable[[], tuple[int, int]] | None = None,
        verifier: auth.Verifier | None = None,
    ) -> None:
        self.hub = hub
        self.settings = settings
        self._verifier = verifier
        """None: no authentication (senders are taken as given)."""
        self._connections = connections or (lambda: (0, 0))
        """(open, total) connections: the server's, for stats()."""
        self._admins = frozenset(n.strip() for n in (settings.admin_identities or "").split(",") if n.strip())
        """With authentication on, who may call stats()."""
        self._started = time.monotonic()

    def __repr__(self) -> str:
        return f"<ChatHandler {self.hub!r}>"

    # -- the service --------------------------------------------------------------------------

    async def authenticate(self, token: str | None) -> str:
        if self._verifier is None:
            return ""  # authentication is off: every connection may send as anyone, as before
        session = SESSION.get()
        if session is None:
            raise Unauthorized("no connection to authenticate")
        session.identity = self._verifier.verify(token or "")
        return session.identity

    async def sendMessage(self, message: Any) -> None:  # the IDL's name
        await self.hub.publish(self._accept(message, self._classic_sender()))

    async def publish(self, message: Any) -> int:
        return await self.hub.publish(self._accept(message, self._caller()))

    def at_once(self) -> dict[str, Callable[..., Any]]:
        """The methods with a synchronous form, by IDL name: a poll (which returns `LATER` when it must
        await the broker or its turn), and the two publishes when the broker stores without waiting. A call
        to one is answered with no coroutine at all (processor.py), which gave a void sendMessage 9-12 %
        more calls/s. The other methods may wait (a replay, a broker round trip)."""
        forms: dict[str, Callable[..., Any]] = {"poll": self._poll_now}
        if self.hub.broker.stores_at_once:
            forms |= {"sendMessage": self._send_now, "publish": self._publish_now}
        return forms

    def _send_now(self, message: Any) -> None:
        self.hub.publish_now(self._accept(message, self._classic_sender()))

    def _publish_now(self, message: Any) -> int:
        return self.hub.publish_now(self._accept(message, self._caller()))

    def _classic_sender(self) -> str | None:
        """sendMessage's sender: the authenticated identity when authentication is on, else the message's."""
        return self._caller() if self._verifier is not None else None

    async def subscribe(self, room: str | None, from_seq: int | None) -> Any:
        self._caller()
        from_seq = from_seq or 0
        if from_seq < 0:
            raise InvalidRequest(f"from_seq must be 0 (live only) or a seq >= 1, not {from_seq}")
        session = SESSION.get()
        if session is not None:
            limit = self.settings.max_subscriptions_per_connection
            if len(session.subscriptions) >= limit:
                session.subscriptions &= self.hub.live_ids(session.subscriptions)  # forget ended ones first
            if len(session.subscriptions) >= limit:
                raise TooLarge(f"this connection holds {limit} subscriptions, its limit; unsubscribe some first")
        sub = await self.hub.subscribe(self._room(room), from_seq)
        if session is not None:
            session.subscriptions.add(sub.subscription_id)
        return sub

    async def poll(
        self,
        subscription_id: str | None,
        max_messages: int | None,
        wait_ms: int | None,
        from_seq: int | None = None,
        linger_ms: int | None = None,
    ) -> Any:
        terms = self._poll_terms(subscription_id, max_messages, wait_ms, from_seq, linger_ms)
        answer = self.hub.poll_now(*terms)  # most polls: answered, or parked to wait with no task (delivery.py)
        if answer is None:
            answer = await self.hub.poll_later(*terms[:4])
        return answer

    def _poll_now(self, *args: Any) -> Any:
        """`poll` (the same arguments) with no coroutine: `LATER` when it must await the broker's history or
        its turn."""
        answer = self.hub.poll_now(*self._poll_terms(*args))
        return LATER if answer is None else answer

    def _poll_terms(
        self,
        subscription_id: str | None,
        max_messages: int | None,
        wait_ms: int | None,
        from_seq: int | None,
        linger_ms: int | None,
    ) -> tuple[str, int, float, int, float]:
        """A poll's arguments checked, and within the server's limits, as the hub takes them."""
        self._caller()
        if not subscription_id:
            raise InvalidRequest("subscription_id is required")
        if max_messages is None or max_messages < 1:
            raise InvalidRequest(f"max_messages must be at least 1, not {max_messages}")
        if wait_ms is None or wait_ms < 0:
            raise InvalidRequest(f"wait_ms must be 0 or more, not {wait_ms}")
        if from_seq is not None and from_seq < 0:
            raise InvalidRequest(f"from_seq must be 0 (the server's position) or a seq >= 1, not {from_seq}")
        if linger_ms is not None and linger_ms < 0:
            raise InvalidRequest(f"linger_ms must be 0 (answer at once) or more, not {linger_ms}")
        limits = self.settings
        return (subscription_id, min(max_messages, limits.max_poll_messages),
                min(wait_ms, limits.max_poll_wait_ms) / 1000, from_seq or 0,
                min(linger_ms or 0, limits.max_poll_wait_ms) / 1000)

    async def unsubscribe(self, subscription_id: str | None) -> None:
        self._caller()
        if subscription_id:
            self.hub.unsubscribe(subscription_id)
            session = SESSION.get()
            if session is not None:
                session.subscriptions.discard(subscription_id)

    async def history(self, room: str | None, from_seq: int | None, limit: int | None) -> list[Any]:
        self._caller()
        if from_seq is None or from_seq < 0:
            raise InvalidRequest(f"from_seq must be 0 or more, not {from_seq}")
        if limit is None or limit < 1:
            raise InvalidRequest(f"limit must be at least 1, not {limit}")
        return await self.hub.history(self._room(room), from_seq, min(limit, self.settings.max_poll_messages))

    async def stats(self, max_rooms: int | None) -> Any:
        caller = self._caller()
        if caller is not None and caller not in self._admins:
            # Every room's name and size is the operators' to see, not every user's.
            raise Unauthorized(f"stats() is for the identities in --admin-identities; {caller!r} is not one")
        if max_rooms is None or not 0 <= max_rooms <= MAX_STATS_ROOMS:
            raise InvalidRequest(f"max_rooms must be 0..{MAX_STATS_ROOMS}, not {max_rooms}")
        hub = self.hub
        open_now, total = self._connections()
        return ServerStats(
            connections=open_now,
            connections_total=total,
            subscriptions=hub.subscription_count,
            rooms=hub.room_count,
            published=hub.published_total,
            delivered=hub.delivered_total,
            dropped=hub.dropped_total,
            expired=hub.expired_total,
            broker_up=hub.broker.up,
            broker=redact(self.settings.broker),
            uptime_s=time.monotonic() - self._started,
            top_rooms=hub.room_stats(max_rooms),
            broker_bytes=hub.broker.store_bytes(),
        )

    # -- validation ---------------------------------------------------------------------------

    def _caller(self) -> str | None:
        """Who this connection proved to be; None without authentication. UNAUTHORIZED before it has."""
        if self._verifier is None:
            return None
        session = SESSION.get()
        if session is None or session.identity is None:
            raise Unauthorized("authenticate first: call authenticate(token) on this connection")
        return session.identity

    def _accept(self, message: Any, identity: str | None = None) -> Any:
        """`message` made fit to store: checked, the room normalised, and only the client's own fields kept
        (seq and sent_at_ms are the server's to assign). It is the message decoded for this call, so it is
        taken over rather than copied."""
        if message is None:
            raise InvalidRequest("message is required")
        session = SESSION.get()
        bucket = session.publishes if session is not None else None
        if bucket is not None:  # one publish from this connection's budget, or RATE_LIMITED (nothing is queued)
            wait = bucket.take()
            if wait:
                raise RateLimited(
                    f"this connection publishes faster than {bucket.rate:g}/s (bursts of {bucket.burst});"
                    f" retry in {wait:.3f}s"
                )
        sender, content = identity or message.sender, message.content  # authenticated: the server says who
        if not isinstance(sender, str) or not sender:
            raise InvalidRequest("sender is required and must be a non-empty string")
        if not isinstance(content, str):
            raise InvalidRequest("content is required and must be a string")
        self._name("sender", sender)
        limit = self.settings.max_content_bytes
        # No code point takes more than 4 UTF-8 bytes: only content that might be over is encoded to count.
        if len(content) * 4 > limit:
            size = len(content.encode("utf-8", "surrogatepass"))
            if size > limit:
                raise TooLarge(f"content is {size} bytes; the limit is {limit}")
        client_msg_id = message.client_msg_id or None
        if client_msg_id is not None:
            self._name("client_msg_id", client_msg_id)
        message.sender, message.room, message.client_msg_id = sender, self._room(message.room), client_msg_id
        message.seq = message.sent_at_ms = None
        return message

    def _room(self, room: str | None) -> str:
        if not room:
            return DEFAULT_ROOM
        self._name("room", room)
        return room

    def _name(self, what: str, value: Any) -> None:
        if not isinstance(value, str):
            raise InvalidRequest(f"{what} must be a string")
        if len(value) > self.settings.max_name_length:
            raise TooLarge(f"{what} is {len(value)} characters; the limit is {self.settings.max_name_length}")
        if value.isascii() and value.isprintable():
            return  # no control character, without the search (ASCII's printable ones are all allowed)
        control = CONTROL_CHARACTERS.search(value)
        if control is not None:  # a newline or an escape in a name would forge or garble every reader's line
            raise InvalidRequest(f"{what} must not contain control characters (it has U+{ord(control[0]):04X})")
