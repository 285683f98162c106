"""The Thrift contract, loaded once from the chat.thrift that ships inside the package.

thriftpy2 builds the types at import time from the IDL, so there is no generated code to keep in step:
`Message`, `Batch`, `Subscription` and `ChatService` below are the IDL's own types. Their attributes are
dynamic, hence `Any` for mypy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import thriftpy2

IDL_PATH = Path(__file__).with_name("chat.thrift")
"""Where the contract lives in the installed package (a copy of chat.thrift at the repository root)."""

chat_thrift: Any = thriftpy2.load(str(IDL_PATH), module_name="chat_thrift")

Message: Any = chat_thrift.Message
Batch: Any = chat_thrift.Batch
Subscription: Any = chat_thrift.Subscription
RoomStats: Any = chat_thrift.RoomStats
ServerStats: Any = chat_thrift.ServerStats
ChatService: Any = chat_thrift.ChatService
WireChatError: Any = chat_thrift.ChatError
"""The IDL's `exception ChatError`; callers see `async_chat.errors.ChatError` instead."""

DEFAULT_ROOM = "general"

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""What a name (sender, room, client_msg_id, a token's identity) may not contain: C0 and C1 controls, DEL,
line and paragraph separators. A newline or an escape in a name would forge or garble every reader's line."""

