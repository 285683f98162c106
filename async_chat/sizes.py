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


def memory_size(message: Any) -> int:
    """What keeping `message` costs in memory, at most (its room name is shared, so not counted). On the
    hot path: computed once per message, and kept beside it where it is queued."""
    content, sender, key = message.content or "", message.sender or "", message.client_msg_id or ""
    size = MEMORY_OVERHEAD + len(content) + len(sender) + len(key)
    if not (content.isascii() and sender.isascii() and key.isascii()):
        size += 3 * (len(content) + len(sender) + len(key))  # up to 4 bytes a character
    return size


def wire_size(memory: int, room: str) -> int:
    """What a message of `memory_size` `memory` in `room` takes in a reply, at most."""
    return memory - MEMORY_OVERHEAD + WIRE_OVERHEAD + text_size(room)
