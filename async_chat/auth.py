"""Authentication: a client proves who it is once per connection, and from then on the server writes
that identity as the `sender` of every message the connection sends: no one can speak as someone else.

Tokens are HMAC-SHA256 signed, with an expiry, so the server needs no user list, only a shared secret
(`--auth-secret-file`), and anything holding the secret can mint them (`python -m async_chat.admin
token`). Format: `v1.<identity, base64url>.<expiry, Unix seconds>.<signature, base64url>`. A token is
checked when presented; a connection authenticated before its token expires stays authenticated.

Which connection a call came on, and what it proved, is in `session.py`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path

from .errors import InvalidRequest, Unauthorized

VERSION = "v1"
MIN_SECRET_BYTES = 32
MAX_TOKEN_LENGTH = 4096


def load_secret(path: str) -> bytes:
    """The secret in `path` (surrounding whitespace ignored); at least MIN_SECRET_BYTES long."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise InvalidRequest(f"cannot read the auth secret file {path}: {exc.strerror or exc}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise InvalidRequest(
            f"the auth secret in {path} is {len(secret)} bytes; use at least {MIN_SECRET_BYTES}"
            " (e.g. `head -c 48 /dev/urandom | base64 > secret`)"
        )
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())


def mint(secret: bytes, identity: str, ttl: float, *, now: float | None = None) -> str:
    """A token for `identity`, valid for `ttl` seconds."""
    if not identity:
        raise ValueError("identity must not be empty")
    expiry = int((time.time() if now is None else now) + ttl)
    payload = f"{VERSION}.{_b64(identity.encode())}.{expiry}"
    return f"{payload}.{_sign(secret, payload)}"


def verify(secret: bytes, token: str, *, now: float | None = None) -> str:
    """The identity `token` proves, or Unauthorized saying why not."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("a token is required (at most 4096 characters)")
    if not token.isascii():  # never a token we minted; and hmac.compare_digest raises on non-ASCII text
        raise Unauthorized(f"malformed token: expected {VERSION}.<identity>.<expiry>.<signature>, in ASCII")
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != VERSION:
        raise Unauthorized(f"malformed token: expected {VERSION}.<identity>.<expiry>.<signature>")
    payload = ".".join(parts[:3])
    if not hmac.compare_digest(_sign(secret, payload), parts[3]):
        raise Unauthorized("bad token signature")
    try:
        identity = _unb64(parts[1]).decode()
        expiry = int(parts[2])
    except ValueError:
        raise Unauthorized("malformed token") from None
    if expiry <= (time.time() if now is None else now):
        raise Unauthorized("the token has expired")
    return identity
