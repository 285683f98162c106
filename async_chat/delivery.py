"""What a poll is answered with: queued messages encoded once per protocol, now or later.

A busy room's cost is its fan-out: one message, a thousand subscribers, a thousand poll replies. Three
things keep that cheap:
- A message delivered to a room is wrapped once in an `Entry`, and every subscriber's queue holds that
  same entry. The codec keeps its encoding on it (`binary`, `compact`), so a batch reply is a header,
  the messages' bytes as they are, and a trailer (`Codec.batch_reply`): no re-encoding per subscriber.
- A poll is answered with a `Delivery` (entries plus the batch's figures), which becomes a thriftpy2
  `Batch` only for callers that want one (`Hub.poll`).
- A long-poll that must wait is `Parked`: no task and no coroutine wait for it, only this record on its
  subscription. The hub answers the parked polls that messages woke, or whose wait is over, from one
  queue, a chunk a callback (`hub.CHUNK`), calling `finish`, which encodes (`encode`, set by the
  processor) and writes (`deliver`, set by the connection).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .contract import Batch


class Entry:
    """One message as the subscribers' queues hold it, with its encodings once made."""

    __slots__ = ("at", "binary", "compact", "message", "size")

    def __init__(self, message: Any, size: int, at: float = 0.0) -> None:
        self.message = message
        self.at = at
        """When it was queued (the loop's clock): a lingering poll waits from there."""
        self.size = size
        """The message's sizes.memory_size, counted against --queue-bytes. Its encodings, once made, add
        at most its wire size per protocol its subscribers speak (one, mostly)."""
        self.binary: bytes | None = None
        """The message struct in the binary protocol (strict or not: a struct is the same in both)."""
        self.compact: bytes | None = None
        """The message struct in the compact protocol."""


class Delivery:
    """A poll's answer: the figures of the IDL's `Batch`, with the messages as queued entries."""

    __slots__ = ("entries", "missed", "next_seq", "renumbered")

    def __init__(self, entries: list[Entry], next_seq: int, missed: int, renumbered: bool) -> None:
        self.entries = entries
        self.next_seq = next_seq
        self.missed = missed
        self.renumbered = renumbered

    def batch(self) -> Any:
        """The IDL's `Batch`."""
        return Batch(messages=[e.message for e in self.entries], next_seq=self.next_seq, missed=self.missed,
                     renumbered=self.renumbered)


class Parked:
    """A long-poll waiting for its subscription's next message, at the cost of this record alone.

    The hub calls `finish` once, when a message arrives, the wait ends, or the subscription goes; unless
    the call's connection went first and called `cancel`."""

    __slots__ = ("deliver", "encode")

    def __init__(self) -> None:
        self.encode: Callable[[Delivery], bytes] | None = None
        """Makes the reply's bytes: the processor's (which knows the call, its codec and its metrics)."""
        self.deliver: Callable[[bytes], None] | None = None
        """Writes them: the connection's."""

    def finish(self, delivery: Delivery) -> None:
        encode, deliver = self.encode, self.deliver
        self.encode = self.deliver = None
        if encode is not None and deliver is not None:
            deliver(encode(delivery))

    def cancel(self) -> None:
        """Nobody will read the answer (its connection closed): the subscription may serve another poll."""
        self.encode = self.deliver = None
        self._forget()

    def _forget(self) -> None:
        """What the waiting's owner undoes when the poll is cancelled."""


LATER: Any = object()
"""What a synchronous form (`ChatHandler.at_once`) returns when it cannot answer without waiting: the
call is answered by its coroutine instead, from the start (the form has changed nothing)."""
