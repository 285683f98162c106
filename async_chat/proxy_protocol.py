"""The PROXY protocol (v1 text and v2 binary, as HAProxy, nginx and cloud TCP load balancers send it):
behind a balancer, every connection comes from the balancer's address, so per-address limits and logs
would see one client. With `--proxy-protocol`, each connection must begin with the header the balancer
writes, naming the real client, and the server uses that address from then on.

Only a balancer may be allowed to send it: with the flag on, anyone who reaches the port directly can
claim any address. The specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107
"""A v1 header's longest, CRLF included."""
V2_MAX = 16 + 65535


class ProxyHeaderError(ValueError):
    """Bytes that are not a PROXY header: the connection is closed."""


def parse(data: bytes | bytearray) -> tuple[int, tuple[str, int] | None] | None:
    """The header `data` begins with: (its length, the client's (address, port), or None when the header
    says the connection is the balancer's own: v1 UNKNOWN, v2 LOCAL, a family other than TCP over IPv4
    or IPv6). None if more bytes are needed; ProxyHeaderError if `data` cannot begin one."""
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    if data:
        raise ProxyHeaderError("the connection did not begin with a PROXY header (--proxy-protocol is on)")
    return None


def _parse_v1(data: bytes | bytearray) -> tuple[int, tuple[str, int] | None] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or not b"PROXY "[: len(data)] == bytes(data[:6]):
            raise ProxyHeaderError("a PROXY v1 header longer than 107 bytes, or not one at all")
        return None
    words = bytes(data[:end]).decode("ascii", "replace").split(" ")
    if words[0] != "PROXY" or len(words) < 2:
        raise ProxyHeaderError("not a PROXY v1 header")
    if words[1] == "UNKNOWN":
        return end + 2, None
    if words[1] not in ("TCP4", "TCP6") or len(words) != 6:
        raise ProxyHeaderError(f"a PROXY v1 header of an unknown form: {' '.join(words)[:60]!r}")
    try:
        source = ipaddress.ip_address(words[2])
        port = int(words[4])
    except ValueError:
        raise ProxyHeaderError("a PROXY v1 header with a malformed address or port") from None
    if (source.version == 4) != (words[1] == "TCP4") or not 0 <= port <= 65535:
        raise ProxyHeaderError("a PROXY v1 header whose address does not match its family")
    return end + 2, (str(source), port)


def _parse_v2(data: bytes | bytearray) -> tuple[int, tuple[str, int] | None] | None:
    if len(data) < 16:
        if bytes(data[:12]) != V2_SIGNATURE[: len(data)]:
            raise ProxyHeaderError("not a PROXY v2 header")
        return None
    if bytes(data[:12]) != V2_SIGNATURE:
        raise ProxyHeaderError("not a PROXY v2 header")
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2 or command > 1:
        raise ProxyHeaderError(f"a PROXY v2 header of version {version}, command {command}")
    length = int.from_bytes(data[14:16], "big")
    end = 16 + length
    if len(data) < end:
        return None
    if command == 0:  # LOCAL: the balancer's own connection (its health check)
        return end, None
    family, body = data[13], bytes(data[16:end])
    if family == 0x11 and length >= 12:  # TCP over IPv4: source, destination, their ports
        return end, (str(ipaddress.IPv4Address(body[0:4])), int.from_bytes(body[8:10], "big"))
    if family == 0x21 and length >= 36:  # TCP over IPv6
        return end, (str(ipaddress.IPv6Address(body[0:16])), int.from_bytes(body[32:34], "big"))
    return end, None  # UDP, a UNIX socket, or unspecified: keep the connection's own address
