"""Authenticated senders: a connection proves who it is once; the server then writes every sender."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

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


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (mint(SECRET, "alice", ttl=-1), "the token has expired"),
        (mint(b"another secret, not the server's", "alice", ttl=60), "bad token signature"),
        (mint(SECRET, "alice", ttl=60).replace(".YWxpY2U.", ".YWRtaW4."), "bad token signature"),  # alice -> admin
        ("alice", "malformed token"),
        ("", "a token is required"),
    ],
    ids=["expired", "other-secret", "tampered", "malformed", "empty"],
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
        verify(SECRET, token, now=1010.0)


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
