"""TLS on the server and in ChatClient, from explicit SSLContexts: hostnames checked, client certificates
required when asked, and no silent fall-back to plain TCP."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from async_chat import ChatClient, ChatServer, ConnectionLost, Message, Unavailable

from .certs import Certificates, make_certificates
from .conftest import LOOPBACK, ServerFactory


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def client_context(certs: Certificates, *, with_certificate: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))  # hostname checking on
    if with_certificate:
        context.load_cert_chain(certs.client_cert, certs.client_key)
    return context


@pytest.fixture
async def tls_server(make_server: ServerFactory, certs: Certificates) -> ChatServer:
    return await make_server(tls_cert=str(certs.server_cert), tls_key=str(certs.server_key))


async def test_messages_flow_over_tls(tls_server: ChatServer, certs: Certificates) -> None:
    async with (
        ChatClient(LOOPBACK, tls_server.port, ssl=client_context(certs)) as client,
        client.subscribe("secret") as stream,
    ):
        assert await client.publish(Message(sender="s", content="over TLS", room="secret")) == 1
        async with asyncio.timeout(10):
            got = await anext(stream)
    assert got.content == "over TLS"


async def test_a_plain_client_gets_an_error_not_a_plaintext_session(tls_server: ChatServer) -> None:
    async with ChatClient(LOOPBACK, tls_server.port, timeout=5) as plain:
        with pytest.raises((ConnectionLost, Unavailable)):
            await plain.publish(Message(sender="s", content="in the clear"))
    assert tls_server.hub is not None
    assert tls_server.hub.published_total == 0


async def test_the_server_hostname_is_checked(tls_server: ChatServer, certs: Certificates) -> None:
    context = client_context(certs)
    async with ChatClient(LOOPBACK, tls_server.port, ssl=context, server_hostname="chat.example") as client:
        with pytest.raises(Unavailable, match="certificate verify failed"):
            await client.publish(Message(sender="s", content="to whom?"))


async def test_client_certificates_are_required_when_asked_for(
    make_server: ServerFactory, certs: Certificates
) -> None:
    server = await make_server(
        tls_cert=str(certs.server_cert), tls_key=str(certs.server_key), tls_client_ca=str(certs.ca)
    )
    async with ChatClient(LOOPBACK, server.port, ssl=client_context(certs), timeout=5) as anonymous:
        with pytest.raises((ConnectionLost, Unavailable)):
            await anonymous.publish(Message(sender="s", content="who am I?"))
    context = client_context(certs, with_certificate=True)
    async with ChatClient(LOOPBACK, server.port, ssl=context) as known:
        assert await known.publish(Message(sender="s", content="certified")) == 1


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], 2,
         "tls-cert /nonexistent/cert.pem: no such file; tls-key /nonexistent/key.pem: no such file"),
        (["--tls-cert", __file__, "--tls-key", __file__], 1, "cannot use the TLS files"),
        (["--tls-cert", "/nonexistent/cert.pem"], 2, "tls-cert and tls-key go together"),
        (["--tls-client-ca", "/nonexistent/ca.pem"], 2, "tls-client-ca needs tls-cert"),
    ],
    ids=["missing-files", "not-pem", "cert-without-key", "ca-without-cert"],
)
def test_tls_misconfiguration_is_one_line(args: list[str], status: int, says: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "async_chat.server", "--port", "0", *args],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == status
    assert says in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


async def test_admin_stats_reaches_a_tls_only_server(tmp_path: Path) -> None:
    from benchmarks.processes import start_server

    certs = make_certificates(tmp_path)
    server = await start_server("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key))
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "async_chat.admin", "stats", "--port", str(server.port), "--tls-ca", str(certs.ca),
             "--json"],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        await server.kill()
    assert done.returncode == 0, done.stderr
    assert '"broker_up": true' in done.stdout
