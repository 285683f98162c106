"""One exception tree for callers of async_chat.

Callers catch `ChatError` (or one of its kinds) and never see thriftpy2, asyncio or OSError types: the
server maps these to the IDL's `ChatError` exception (or a TApplicationException for `sendMessage`, which
declares none) at the wire, and the client maps what arrives back to these.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Mirrors `enum ErrorCode` in chat.thrift (a test keeps the two equal)."""

    INVALID = 1
    TOO_LARGE = 2
    NO_SUCH_SUBSCRIPTION = 3
    RATE_LIMITED = 4
    UNAVAILABLE = 5
    UNAUTHORIZED = 6


class ChatError(Exception):
    """A call was refused or could not be completed; `code` says what kind, `reason` says why."""

    code: ErrorCode | None = None

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        kind = self.code.name if self.code is not None else type(self).__name__
        return f"{kind}: {self.reason}"

    @staticmethod
    def from_code(code: int | None, reason: str) -> ChatError:
        """Build the exception of the right kind from a code read off the wire."""
        for kind in _KINDS:
            if kind.code == code:
                return kind(reason)
        return ChatError(f"code {code}: {reason}")


class InvalidRequest(ChatError):
    code = ErrorCode.INVALID


class TooLarge(ChatError):
    code = ErrorCode.TOO_LARGE


class NoSuchSubscription(ChatError):
    code = ErrorCode.NO_SUCH_SUBSCRIPTION


class RateLimited(ChatError):
    code = ErrorCode.RATE_LIMITED


class Unavailable(ChatError):
    """The server (or the connection to it, or its broker) cannot serve the call now; retrying may work."""

    code = ErrorCode.UNAVAILABLE


class Unauthorized(ChatError):
    code = ErrorCode.UNAUTHORIZED


class ConnectionLost(Unavailable):
    """The connection failed or closed before a reply arrived: the call may or may not have taken effect."""


class CallTimeout(Unavailable):
    """No reply within the call's timeout; the connection was discarded (a late reply would desync it)."""


class ServerError(ChatError):
    """The server answered with a Thrift TApplicationException (an internal error, an unknown method)."""

    def __init__(self, reason: str, *, type: int = 0) -> None:
        super().__init__(reason)
        self.type = type


_KINDS: tuple[type[ChatError], ...] = (
    InvalidRequest,
    TooLarge,
    NoSuchSubscription,
    RateLimited,
    Unavailable,
    Unauthorized,
)
