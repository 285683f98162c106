"""The embedded broker: one process, everything in memory, delivery inside the publishing call.

It is the default, not a test double: seq assignment, the history ring and the dedup window behave as the
contract says, and they are lost when the process exits (a restarted server starts every room at seq 1;
subscribers that resume past a room's end are told through `Subscription.next_seq`).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from itertools import islice
from typing import Any

from ..errors import Unavailable
from . import Broker, Deliver


class _Room:
    __slots__ = ("dedup", "history", "next_seq")

    def __init__(self, history: int) -> None:
        self.next_seq = 1
        self.history: deque[Any] = deque(maxlen=history)
        self.dedup: OrderedDict[tuple[str, str], int] = OrderedDict()


class MemoryBroker(Broker):
    """Rooms, seq counters, bounded history rings and dedup windows in this process."""

    eager = True

    def __init__(self, *, history: int, dedup_window: int, max_rooms: int = 10_000) -> None:
        self._history = history
        self._dedup_window = dedup_window
        self._max_rooms = max_rooms
        self._rooms: dict[str, _Room] = {}
        self._deliver: Deliver | None = None

    def __repr__(self) -> str:
        return f"<MemoryBroker rooms={len(self._rooms)} history={self._history}>"

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def publish(self, message: Any) -> tuple[int, bool]:
        room = self._rooms.get(message.room)
        if room is None:
            if len(self._rooms) >= self._max_rooms:
                # Rooms hold history and are never forgotten while the process lives: bound their number.
                raise Unavailable(f"the server holds its maximum of {self._max_rooms} rooms")
            room = self._rooms[message.room] = _Room(self._history)
        key = (message.sender, message.client_msg_id) if message.client_msg_id else None
        if key is not None:
            seq = room.dedup.get(key)
            if seq is not None:
                return seq, False
        message.seq = seq = room.next_seq
        room.next_seq = seq + 1
        message.sent_at_ms = time.time_ns() // 1_000_000
        if self._history:
            room.history.append(message)
        if key is not None:
            room.dedup[key] = seq
            if len(room.dedup) > self._dedup_window:
                room.dedup.popitem(last=False)
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

    async def aclose(self) -> None:
        self._deliver = None
