"""The embedded broker: one process, everything in memory, delivery inside the publishing call.

It is the default, not a test double: seq assignment, the history ring and the dedup window behave as the
contract says, and they are lost when the process exits (a restarted server starts every room at seq 1;
subscribers that resume past a room's end are told through `Subscription.next_seq`).

What it keeps is bounded three ways, so that no client can grow it without end or lock others out:
- in bytes: history, dedup records and room records are counted as they arrive, against `max_memory`.
  Past it, the rooms published to least recently give up their oldest history first (a reader that
  needed it is told through `missed`), then their dedup records. Publishing is never refused for memory.
- in rooms: at most `max_rooms`. A new room past it forgets the least recently used room that has no
  subscriber here, rather than refusing: filling the table locks nobody out. Only when every room has a
  subscriber is a new one refused (UNAVAILABLE).
- in time: a room without subscribers and without a publish for `room_ttl` seconds is forgotten.
A forgotten room starts again at seq 1, as after a restart, and is told to resuming subscribers the same way.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from itertools import islice
from typing import Any

from ..errors import Unavailable
from ..sizes import memory_size, text_size
from . import Broker, Deliver

DEDUP_OVERHEAD = 260
"""Bytes a dedup record takes beyond its strings' characters: the key tuple, the dict slot, the seq, and
the two string headers (once its message has left history, the record alone keeps them). Measured with
tracemalloc: 131 bytes while the strings are shared with the message, about 230 once they are not."""
ROOM_OVERHEAD = 1200
"""Bytes an empty room takes beyond its name's characters: its record, deque and dict, and its slot in
the room table. Measured with tracemalloc: 1,115 bytes."""


def _dedup_size(key: tuple[str, str]) -> int:
    """What a dedup record of (sender, client_msg_id) costs, counted when it is kept and when it goes."""
    return DEDUP_OVERHEAD + text_size(key[0]) + text_size(key[1])


class _Room:
    __slots__ = ("bytes", "dedup", "history", "last_used", "name", "next_seq", "sizes")

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.next_seq = 1
        self.history: deque[Any] = deque()
        self.sizes: deque[int] = deque()
        """Each history message's memory_size, in step with `history`."""
        self.dedup: OrderedDict[tuple[str, str], int] = OrderedDict()
        self.last_used = now
        self.bytes = ROOM_OVERHEAD + text_size(name)


class MemoryBroker(Broker):
    """Rooms, seq counters, bounded history rings and dedup windows in this process."""

    eager = True
    stores_at_once = True

    def __init__(
        self,
        *,
        history: int,
        dedup_window: int,
        max_rooms: int = 10_000,
        max_memory: int = 1 << 30,
        room_ttl: float = 86_400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._history = history
        self._dedup_window = dedup_window
        self._max_rooms = max_rooms
        self.max_memory = max_memory
        self._room_ttl = room_ttl
        self._clock = clock
        self._rooms: OrderedDict[str, _Room] = OrderedDict()
        """Least recently published to first."""
        self._watched: set[str] = set()
        self._deliver: Deliver | None = None
        self.bytes = 0
        """What the rooms hold now, as counted against max_memory."""
        self.trimmed = 0
        """Messages dropped from history to stay within max_memory."""
        self.forgotten = 0
        """Rooms forgotten: idle past room_ttl, or the least recently used when the table was full."""

    def __repr__(self) -> str:
        return (
            f"<MemoryBroker rooms={len(self._rooms)} history={self._history} bytes={self.bytes}"
            f"/{self.max_memory} trimmed={self.trimmed} forgotten={self.forgotten}>"
        )

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def watch(self, room: str) -> None:
        self._watched.add(room)

    def unwatch(self, room: str) -> None:
        self._watched.discard(room)

    async def publish(self, message: Any) -> tuple[int, bool]:
        return self.publish_now(message)

    def publish_now(self, message: Any) -> tuple[int, bool]:
        now = self._clock()
        room = self._rooms.get(message.room)
        if room is None:
            room = self._open(message.room, now)
        else:
            room.last_used = now
            self._rooms.move_to_end(message.room)
        key = (message.sender, message.client_msg_id) if message.client_msg_id else None
        if key is not None:
            seq = room.dedup.get(key)
            if seq is not None:
                return seq, False
        message.seq = seq = room.next_seq
        room.next_seq = seq + 1
        message.sent_at_ms = time.time_ns() // 1_000_000
        if self._history:
            size = memory_size(message)
            room.history.append(message)
            room.sizes.append(size)
            if len(room.history) > self._history:
                room.history.popleft()
                size -= room.sizes.popleft()
            room.bytes += size
            self.bytes += size
        if key is not None:
            room.dedup[key] = seq
            self._charge(room, _dedup_size(key))
            if len(room.dedup) > self._dedup_window:
                self._drop_dedup(room)
        if self.bytes > self.max_memory:
            self._make_room(room)
        if self._deliver is not None:
            self._deliver(message)
        return seq, True

    async def history(self, room: str, from_seq: int, limit: int) -> list[Any]:
        state = self._rooms.get(room)
        if state is None or not state.history or limit <= 0:
            return []
        first = state.history[0].seq
        start = max(from_seq - first, 0)
        return list(islice(state.history, start, start + limit))

    async def next_seq(self, room: str) -> int:
        state = self._rooms.get(room)
        return 1 if state is None else state.next_seq

    def store_bytes(self) -> int | None:
        return self.bytes

    async def aclose(self) -> None:
        self._deliver = None

    # -- bounds ---------------------------------------------------------------------------------------

    def _open(self, name: str, now: float) -> _Room:
        """A new room `name`, after forgetting what the bounds say to."""
        self._forget_idle(now)
        if len(self._rooms) >= self._max_rooms and not self._forget_one(lambda r: True):
            raise Unavailable(
                f"the server holds its maximum of {self._max_rooms} rooms, each with a subscriber"
            )
        room = self._rooms[name] = _Room(name, now)
        self.bytes += room.bytes
        return room

    def _forget_idle(self, now: float) -> None:
        """Forget rooms nobody published to for room_ttl and nobody here subscribes to (oldest first)."""
        deadline = now - self._room_ttl
        while self._forget_one(lambda r: r.last_used < deadline, stop_at_first_fresh=True):
            pass

    def _forget_one(self, eligible: Callable[[_Room], bool], *, stop_at_first_fresh: bool = False) -> bool:
        """Forget the least recently used room without a subscriber that is `eligible`; whether one was."""
        for room in self._rooms.values():
            if not eligible(room):
                if stop_at_first_fresh:
                    return False
                continue
            if room.name in self._watched:
                continue
            del self._rooms[room.name]
            self.bytes -= room.bytes
            self.forgotten += 1
            return True
        return False

    def _make_room(self, keep: _Room) -> None:
        """Over max_memory: the least recently used rooms give up their oldest history, then their dedup
        records, until the store fits again (the room just published to last of all, and never its newest
        message). A room left with nothing and no subscriber here is forgotten."""
        emptied: list[str] = []
        for room in self._rooms.values():
            if self.bytes <= self.max_memory:
                break
            while room.history and self.bytes > self.max_memory and (room is not keep or len(room.history) > 1):
                room.history.popleft()
                self._charge(room, -room.sizes.popleft())
                self.trimmed += 1
            while room.dedup and self.bytes > self.max_memory and room is not keep:
                self._drop_dedup(room)
            if not room.history and not room.dedup and room.name not in self._watched:
                emptied.append(room.name)
        for name in emptied:
            self.bytes -= self._rooms.pop(name).bytes
            self.forgotten += 1

    def _drop_dedup(self, room: _Room) -> None:
        key, _seq = room.dedup.popitem(last=False)
        self._charge(room, -_dedup_size(key))

    def _charge(self, room: _Room, size: int) -> None:
        room.bytes += size
        self.bytes += size
