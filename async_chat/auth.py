"""Authentication: a client proves who it is once per connection, and from then on the server writes
that identity as the `sender` of every message the connection sends: no one can speak as someone else.

Tokens are standard JWTs (RFC 7519), checked with PyJWT rather than a format of our own, so the identity
providers people already run can mint them: the identity is the `sub` claim; `exp` is required, `nbf` is
honoured, and `aud` and `iss` are checked when the server is told what to expect. Two kinds of key:
- `--auth-secret-file`: a shared secret, HS256 (anything holding it can mint tokens, as
  `python -m async_chat.admin token` does);
- `--auth-public-key-file`: an RSA or EC public key (PEM), RS256 or ES256: the server can check tokens
  but not mint them. Only the algorithms of the key given are accepted (never `none`, never HS256 with
  a public key).
A token is checked when presented; a connection authenticated before its token expires stays
authenticated. Which connection a call came on, and what it proved, is in `session.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from .contract import CONTROL_CHARACTERS
from .errors import InvalidRequest, Unauthorized

MIN_SECRET_BYTES = 32
MAX_TOKEN_LENGTH = 8192
LEEWAY_S = 5.0
"""Clock difference allowed between the token's minter and this server, for exp and nbf."""


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


def load_public_key(path: str) -> tuple[Any, list[str]]:
    """The public key in the PEM file `path`, and the algorithm its tokens must use."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise InvalidRequest(f"cannot read the auth public key file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InvalidRequest(f"the auth public key file {path} holds no PEM public key ({exc})") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key, ["ES256"]
    raise InvalidRequest(f"the auth public key in {path} is neither RSA (RS256) nor EC (ES256)")


@dataclass(frozen=True)
class Verifier:
    """What the server checks a token against."""

    key: Any
    algorithms: list[str]
    audience: str | None = None
    issuer: str | None = None
    max_identity_length: int = 256

    @classmethod
    def from_files(cls, secret_file: str | None, public_key_file: str | None, *, audience: str | None = None,
                   issuer: str | None = None, max_identity_length: int = 256) -> Verifier | None:
        """The server's verifier, or None when authentication is off."""
        if secret_file is not None:
            key: Any = load_secret(secret_file)
            algorithms = ["HS256"]
        elif public_key_file is not None:
            key, algorithms = load_public_key(public_key_file)
        else:
            return None
        return cls(key, algorithms, audience, issuer, max_identity_length)

    def verify(self, token: str, *, now: float | None = None) -> str:
        """The identity (`sub`) `token` proves, or Unauthorized saying why not."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized(f"a token is required (a JWT of at most {MAX_TOKEN_LENGTH} characters)")
        if not token.isascii():
            raise Unauthorized("malformed token: a JWT is ASCII")
        options: Any = {"require": ["exp", "sub"], "verify_aud": self.audience is not None}
        try:
            if now is None:
                claims = jwt.decode(token, self.key, algorithms=self.algorithms, audience=self.audience,
                                    issuer=self.issuer, options=options, leeway=LEEWAY_S)
            else:
                claims = _decode_at(token, self, options, now)
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(f"the token is not for this audience (expected aud {self.audience!r})") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(f"the token is not from the expected issuer ({self.issuer!r})") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("bad token signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            accepted = ", ".join(self.algorithms)
            raise Unauthorized(f"the token's algorithm is not accepted here (only {accepted})") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"malformed token ({exc})") from None
        identity = claims.get("sub")
        if not isinstance(identity, str) or not identity:
            raise Unauthorized("the token's sub (the identity) must be a non-empty string")
        if len(identity) > self.max_identity_length or CONTROL_CHARACTERS.search(identity):
            raise Unauthorized("the token's sub is too long or has control characters: it cannot be a sender")
        return identity


def _decode_at(token: str, verifier: Verifier, options: Any, now: float) -> dict[str, Any]:
    """jwt.decode as if the time were `now` (for tests of expiry): the signature, then the times by hand."""
    untimed: Any = {**options, "verify_exp": False, "verify_nbf": False}
    claims: dict[str, Any] = jwt.decode(
        token, verifier.key, algorithms=verifier.algorithms, audience=verifier.audience, issuer=verifier.issuer,
        options=untimed,
    )
    if claims["exp"] <= now - LEEWAY_S:
        raise jwt.ExpiredSignatureError("expired")
    if "nbf" in claims and claims["nbf"] > now + LEEWAY_S:
        raise jwt.ImmatureSignatureError("not yet")
    return claims


def mint(secret: bytes, identity: str, ttl: float, *, now: float | None = None, audience: str | None = None,
         issuer: str | None = None) -> str:
    """An HS256 JWT for `identity` (its `sub`), valid for `ttl` seconds: for tests and small setups."""
    if not identity:
        raise ValueError("identity must not be empty")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": identity, "iat": issued, "exp": issued + int(ttl)}
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


def verify(secret: bytes, token: str, *, now: float | None = None) -> str:
    """The identity an HS256 `token` signed with `secret` proves (Verifier.verify, for the shared secret)."""
    return Verifier(secret, ["HS256"]).verify(token, now=now)
