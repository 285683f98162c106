"""Authenticated senders: a connection proves who it is once; the server then writes every sender."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from thriftpy2.thrift import TApplicationException

from async_chat import ChatClient, ChatServer, Message, Unauthorized
from async_chat.auth import mint, verify

from .conftest import LOOPBACK, ServerFactory, raw_connection

SECRET = b"s" * 48


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    return path


@pytest.fixture
async def auth_server(make_server: ServerFactory, secret_file: Path) -> ChatServer:
    return await make_server(auth_secret_file=str(secret_file))


async def test_the_server_writes_the_sender_a_connection_proved(auth_server: ChatServer) -> None:
    token = mint(SECRET, "alice", ttl=60)
    async with (
        ChatClient(LOOPBACK, auth_server.port, token=token) as alice,
        alice.subscribe("r") as stream,
    ):
        await alice.publish(Message(sender="mallory", content="it was me", room="r"))
        await alice.sendMessage(Message(sender="", content="classic call", room="r"))
        got = [await anext(stream), await anext(stream)]
        assert alice.identity == "alice"
    assert [(m.sender, m.content) for m in got] == [("alice", "it was me"), ("alice", "classic call")]


async def test_calls_before_authenticating_are_unauthorized(auth_server: ChatServer) -> None:
    async with ChatClient(LOOPBACK, auth_server.port) as anonymous:
        with pytest.raises(Unauthorized, match="authenticate first"):
            await anonymous.publish(Message(sender="alice", content="x"))
        with pytest.raises(Unauthorized, match="authenticate first"):
            await anonymous.create_subscription("r", 0)
        with pytest.raises(Unauthorized):
            await anonymous.history("r", 0, 10)
    async with raw_connection(auth_server.port) as raw:  # sendMessage declares no exception
        with pytest.raises(TApplicationException, match=r"^UNAUTHORIZED: authenticate first"):
            await raw.client.sendMessage(Message(sender="alice", content="x"))
    assert auth_server.hub is not None
    assert auth_server.hub.published_total == 0


def _tampered(token: str) -> str:
    """`token` with its payload rewritten to name someone else, its signature left as it was."""
    header, _payload, signature = token.split(".")
    claims = base64.urlsafe_b64encode(json.dumps({"sub": "admin", "exp": int(time.time()) + 60}).encode())
    return f"{header}.{claims.rstrip(b'=').decode()}.{signature}"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (mint(SECRET, "alice", ttl=-60), "the token has expired"),
        (mint(b"another secret, not the server's" * 2, "alice", ttl=60), "bad token signature"),
        (_tampered(mint(SECRET, "alice", ttl=60)), "bad token signature"),  # alice -> admin, signature kept
        (jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, None, algorithm="none"),
         "algorithm is not accepted"),
        (jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"), "no 'exp' claim"),
        (jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"), "no 'sub' claim"),
        (jwt.encode({"sub": "a", "exp": int(time.time()) + 600, "nbf": int(time.time()) + 300}, SECRET,
                    algorithm="HS256"), "not valid yet"),
        ("alice", "malformed token"),
        ("", "a token is required"),
    ],
    ids=["expired", "other-secret", "tampered", "alg-none", "no-exp", "no-sub", "not-yet", "malformed", "empty"],
)
async def test_bad_tokens_are_refused_with_the_reason(auth_server: ChatServer, token: str, reason: str) -> None:
    async with ChatClient(LOOPBACK, auth_server.port, token=token) as client:
        with pytest.raises(Unauthorized, match=reason):
            await client.publish(Message(sender="s", content="x"))


async def test_authentication_belongs_to_one_connection(auth_server: ChatServer) -> None:
    async with raw_connection(auth_server.port) as first, raw_connection(auth_server.port) as second:
        assert await first.client.authenticate(mint(SECRET, "bob", ttl=60)) == "bob"
        assert await first.client.publish(Message(sender="x", content="ok")) == 1
        with pytest.raises(Exception, match="authenticate first"):
            await second.client.publish(Message(sender="bob", content="not on this connection"))


async def test_without_auth_senders_are_taken_as_given(server: ChatServer, client: ChatClient) -> None:
    async with raw_connection(server.port) as raw:
        assert await raw.client.authenticate("anything") == ""
    await client.publish(Message(sender="anyone", content="x", room="free"))
    assert [m.sender for m in await client.history("free", 0, 10)] == ["anyone"]


def test_tokens_expire_and_carry_any_identity() -> None:
    token = mint(SECRET, "zoë ünicode.with.dots", ttl=10, now=1000.0)
    assert verify(SECRET, token, now=1009.0) == "zoë ünicode.with.dots"
    with pytest.raises(Unauthorized, match="expired"):
        verify(SECRET, token, now=1016.0)  # 10 s, and the 5 s allowed for clocks that differ


def test_admin_mints_tokens_the_server_accepts_and_short_secrets_are_refused(
    secret_file: Path, tmp_path: Path
) -> None:
    minted = subprocess.run(
        [sys.executable, "-m", "async_chat.admin", "token", "--secret-file", str(secret_file), "--identity", "carol"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert verify(SECRET, minted.stdout.strip(), now=time.time()) == "carol"
    short = tmp_path / "short"
    short.write_bytes(b"too short")
    done = subprocess.run(
        [sys.executable, "-m", "async_chat.server", "--port", "0", "--auth-secret-file", str(short)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().endswith("use at least 32 (e.g. `head -c 48 /dev/urandom | base64 > secret`)")
    assert done.stderr.count("\n") == 1


async def test_stats_names_rooms_to_admin_identities_only(make_server: ServerFactory, secret_file: Path) -> None:
    server = await make_server(auth_secret_file=str(secret_file), admin_identities="ops, root")
    async with ChatClient(LOOPBACK, server.port, token=mint(SECRET, "alice", ttl=60)) as user:
        await user.publish(Message(sender="x", content="in a secret room", room="secret-project"))
        with pytest.raises(Unauthorized, match=r"stats\(\) is for the identities in --admin-identities"):
            await user.stats(10)
    async with ChatClient(LOOPBACK, server.port, token=mint(SECRET, "ops", ttl=60)) as admin:
        stats = await admin.stats(10)
    assert stats.published == 1


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
async def test_jwts_from_an_identity_provider_with_audience_and_issuer(
    make_server: ServerFactory, tmp_path: Path, kind: str
) -> None:
    """Tokens the server can check but not mint: an identity provider's RS256 or ES256 JWTs."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "RS256" \
        else ec.generate_private_key(ec.SECP256R1())
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path / "idp.pem"
    key_file.write_bytes(public_pem)
    server = await make_server(auth_public_key_file=str(key_file), auth_audience="chat", auth_issuer="idp")
    soon = int(time.time()) + 60

    def token(**claims: Any) -> str:
        return jwt.encode({"sub": "dana", "exp": soon, "aud": "chat", "iss": "idp", **claims}, private, algorithm=kind)

    async with ChatClient(LOOPBACK, server.port, token=token()) as client:
        assert await client.publish(Message(sender="ignored", content="hi", room="idp")) == 1
        assert [m.sender for m in await client.history("idp", 0, 10)] == ["dana"]
    refused = {
        "another audience": token(aud="mail"),
        "another issuer": token(iss="evil"),
        # the public key used as an HS256 secret: the old algorithm-confusion attack
        "confused": jwt.encode({"sub": "dana", "exp": soon, "aud": "chat", "iss": "idp"}, "x" * 32, algorithm="HS256"),
    }
    for case, bad in refused.items():
        async with ChatClient(LOOPBACK, server.port, token=bad) as client:
            with pytest.raises(Unauthorized):
                await client.publish(Message(sender="x", content=case))
