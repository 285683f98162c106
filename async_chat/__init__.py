"""async_chat: a real-time message service that speaks Apache Thrift.

Names load on first use, so that `python -m async_chat.server` does not import its own module twice.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

from . import build  # noqa: F401  # first: which build the other modules load from (build.py)

try:
    __version__ = metadata.version("async-chat")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from .client import ChatClient, MessageStream, Missed
    from .contract import IDL_PATH, Batch, Message, Subscription
    from .errors import (
        CallTimeout,
        ChatError,
        ConnectionLost,
        ErrorCode,
        InvalidRequest,
        NoSuchSubscription,
        RateLimited,
        ServerError,
        TooLarge,
        Unauthorized,
        Unavailable,
    )
    from .server import ChatServer
    from .settings import Settings

_WHERE = {
    # serving
    "ChatServer": "server",
    "Settings": "settings",
    # calling
    "ChatClient": "client",
    "MessageStream": "client",
    "Missed": "client",
    # the contract's types
    "IDL_PATH": "contract",
    "Batch": "contract",
    "Message": "contract",
    "Subscription": "contract",
    # errors
    "CallTimeout": "errors",
    "ChatError": "errors",
    "ConnectionLost": "errors",
    "ErrorCode": "errors",
    "InvalidRequest": "errors",
    "NoSuchSubscription": "errors",
    "RateLimited": "errors",
    "ServerError": "errors",
    "TooLarge": "errors",
    "Unauthorized": "errors",
    "Unavailable": "errors",
}

__all__ = [
    "IDL_PATH",
    "Batch",
    "CallTimeout",
    "ChatClient",
    "ChatError",
    "ChatServer",
    "ConnectionLost",
    "ErrorCode",
    "InvalidRequest",
    "Message",
    "MessageStream",
    "Missed",
    "NoSuchSubscription",
    "RateLimited",
    "ServerError",
    "Settings",
    "Subscription",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'async_chat' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
