"""Behind a TCP load balancer: the PROXY protocol header (v1 and v2) names the real client, and the
per-address limit and the logs use it."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct

import pytest

from async_chat import Settings
from async_chat.errors import InvalidRequest
from async_chat.proxy_protocol import V2_SIGNATURE, ProxyHeaderError, parse
from benchmarks.peers import call_bytes

from .conftest import LOOPBACK, ServerFactory, read_to_close


def v1(address: str, port: int = 40000) -> bytes:
    family = "TCP4" if ipaddress.ip_address(address).version == 4 else "TCP6"
    return f"PROXY {family} {address} 10.0.0.1 {port} 9090\r\n".encode()


def v2(address: str, port: int = 40000, local: bool = False) -> bytes:
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        family, body = 0x11, ip.packed + bytes(4) + struct.pack(">HH", port, 9090)
    else:
        family, body = 0x21, ip.packed + bytes(16) + struct.pack(">HH", port, 9090)
    body += b"\x04\x00\x01z"  # a TLV the server does not need: skipped with the rest of the header
    return V2_SIGNATURE + bytes([0x20 if local else 0x21, family]) + struct.pack(">H", len(body)) + body


def test_headers_of_both_versions_are_read_whole_and_only_whole() -> None:
    for header, client in [
        (v1("203.0.113.7"), ("203.0.113.7", 40000)),
        (v1("2001:db8::1", 5), ("2001:db8::1", 5)),
        (b"PROXY UNKNOWN\r\n", None),
        (v2("203.0.113.7"), ("203.0.113.7", 40000)),
        (v2("2001:db8::1", 7), ("2001:db8::1", 7)),
        (v2("203.0.113.7", local=True), None),
    ]:
        assert parse(header + b"\x80\x01") == (len(header), client)
        for cut in range(len(header)):
            assert parse(header[:cut]) is None, (header, cut)
    for garbage in (b"GET / HTTP/1.1\r\n", b"\x80\x01\x00\x01", b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n",
                    b"PROXY " + b"x" * 200, b"\r\n\r\n\x00\r\nQUIX\n" + bytes(8)):
        with pytest.raises(ProxyHeaderError):
            parse(garbage)


async def call_through(port: int, header: bytes) -> bytes:
    """A classic sendMessage after `header`, on a new connection; what the server sends back before closing."""
    request, _reply = call_bytes("buffered", "binary")
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(header + request)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read(65536)
    finally:
        writer.close()


async def test_limits_see_the_client_the_header_names_not_the_balancer(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server(proxy_protocol="on", max_connections_per_address=2)
    _request, reply = call_bytes("buffered", "binary")
    held = []
    for header in (v1("203.0.113.7"), v2("203.0.113.7")):  # the same client, twice: its limit
        reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
        request, _ = call_bytes("buffered", "binary")
        writer.write(header + request)
        async with asyncio.timeout(10):
            assert await reader.readexactly(len(reply)) == reply
        held.append(writer)
    try:
        with caplog.at_level(logging.WARNING):
            refused = await call_through(server.port, v1("203.0.113.7"))  # a third from that client
        assert refused == b""
        assert "from 203.0.113.7" in caplog.text  # the log names the client, not the balancer
        # Other clients through the same balancer address are served.
        assert await call_through(server.port, v1("198.51.100.2")) == reply
        assert await call_through(server.port, v2("2001:db8::5")) == reply
        assert await call_through(server.port, v2("203.0.113.9", local=True)) == reply  # a health check
    finally:
        for writer in held:
            writer.close()


async def test_a_connection_without_the_header_is_refused(make_server: ServerFactory) -> None:
    server = await make_server(proxy_protocol="on")
    request, _reply = call_bytes("buffered", "binary")
    reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
    try:
        writer.write(request)
        async with asyncio.timeout(10):
            assert await read_to_close(reader) == b""
    finally:
        writer.close()
    assert server.refused_total == 1


def test_the_proxy_protocol_is_not_combined_with_tls() -> None:
    with pytest.raises(InvalidRequest, match="proxy-protocol cannot be combined with tls-cert"):
        Settings(proxy_protocol="on", tls_cert=__file__, tls_key=__file__)


async def test_a_connection_that_never_sends_its_header_is_closed_at_the_idle_timeout(
    make_server: ServerFactory,
) -> None:
    server = await make_server(proxy_protocol="on", idle_timeout=1.5, max_poll_wait_ms=1000, subscription_ttl=2)
    reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
    try:
        writer.write(b"PROXY TCP4 203.0.113.7")  # and nothing more: a balancer (or anyone) stalling
        async with asyncio.timeout(30):
            assert await read_to_close(reader) == b""
    finally:
        writer.close()
    assert server.connection_count == 0
