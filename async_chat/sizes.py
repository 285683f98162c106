"""What a message costs: in a reply on the wire, and in this process's memory.

The hub sizes poll replies with the first and bounds queues with the second; the memory broker counts its
store against --max-memory with the second. Both are upper estimates computed from string lengths (a
character of non-ASCII text is counted as 4 bytes), cheap enough for every message on the hot path.
"""

from __future__ import annotations

from typing import Any

WIRE_OVERHEAD = 48
"""A message's bytes in a reply beyond its strings: field headers, seq, sent_at_ms, string lengths."""
MEMORY_OVERHEAD = 480
"""A message's bytes in memory beyond its strings' characters: the Message object, its attribute dict,
its ints, the string headers and a deque slot. Measured with tracemalloc on CPython 3.11 for messages
decoded by the server's codec: 408 bytes; the rest is margin."""


def text_size(value: str | None) -> int:
    """An upper bound of `value`'s UTF-8 length, without encoding it."""
    if not value:
        return 0
    return len(value) if value.isascii() else 4 * len(value)


def wire_size(message: Any) -> int:
    """What `message` takes in a reply, at most."""
    return (
        WIRE_OVERHEAD + text_size(message.content) + text_size(message.sender) + text_size(message.room)
        + text_size(message.client_msg_id)
    )


def memory_size(message: Any) -> int:
    """What keeping `message` costs in memory, at most (its room name is shared, so not counted)."""
    return MEMORY_OVERHEAD + text_size(message.content) + text_size(message.sender) + text_size(message.client_msg_id)
