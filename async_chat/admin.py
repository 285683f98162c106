"""`python -m async_chat.admin stats`: what a running server is doing, for operators (and `token`).

Reads `stats()` over the server's own Thrift port, so it works without the metrics endpoint and shows
what metrics deliberately leave out: figures per room (the busiest rooms, by subscribers on that server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl as ssl_module
import sys
from collections.abc import Sequence
from typing import Any

from . import auth
from .client import ChatClient
from .errors import ChatError
from .handler import MAX_STATS_ROOMS
from .settings import OneLineParser
from .tlsargs import add_tls_arguments, client_tls


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m async_chat.admin", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stats = commands.add_parser(
        "stats", help="print connections, subscriptions, message counts and the busiest rooms of a server",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    stats.add_argument("--host", default="127.0.0.1", help="the server's address")
    stats.add_argument("--port", type=int, default=9090, help="the server's Thrift port")
    stats.add_argument("--rooms", type=int, default=20, help=f"how many rooms to list (0..{MAX_STATS_ROOMS})")
    stats.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    stats.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the server")
    stats.add_argument("--token", help="a token, for a server started with --auth-secret-file (an identity"
                       " in its --admin-identities)")
    add_tls_arguments(stats)
    token = commands.add_parser(
        "token", help="mint a token (an HS256 JWT) for a server started with --auth-secret-file",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    token.add_argument("--secret-file", required=True, help="the server's --auth-secret-file")
    token.add_argument("--identity", required=True, help="who the token's holder is: their messages' sender")
    token.add_argument("--ttl", type=float, default=86400.0, help="seconds the token can be presented")
    token.add_argument("--audience", help="its aud claim, for a server with --auth-audience")
    token.add_argument("--issuer", help="its iss claim, for a server with --auth-issuer")
    return parser


def render(stats: Any) -> str:
    """The table an operator reads."""
    lines = [
        f"broker     {stats.broker} ({'up' if stats.broker_up else 'UNREACHABLE'})",
        f"uptime     {stats.uptime_s:.0f} s",
        f"connections {stats.connections} open, {stats.connections_total} since start",
        f"subscriptions {stats.subscriptions} in {stats.rooms} room(s); {stats.expired} expired",
        f"messages   {stats.published} published, {stats.delivered} delivered, {stats.dropped} dropped (missed)",
    ]
    if stats.top_rooms:
        width = max(4, *(len(r.room) for r in stats.top_rooms))
        lines += ["", f"{'room':<{width}}  subscribers  queued  max queue  dropped"]
        lines += [
            f"{r.room:<{width}}  {r.subscribers:>11}  {r.queued:>6}  {r.max_queue_depth:>9}  {r.dropped:>7}"
            for r in stats.top_rooms
        ]
    return "\n".join(lines)


def as_json(stats: Any) -> str:
    fields = {name: getattr(stats, name) for _id, (_kind, name, *_rest) in sorted(stats.thrift_spec.items())}
    fields["top_rooms"] = [
        {name: getattr(r, name) for _id, (_kind, name, *_rest) in sorted(r.thrift_spec.items())}
        for r in stats.top_rooms
    ]
    return json.dumps(fields)


async def fetch(host: str, port: int, rooms: int, timeout: float, token: str | None,
                ssl: ssl_module.SSLContext | None = None) -> Any:
    async with ChatClient(host, port, pool_size=1, timeout=timeout, connect_timeout=timeout, token=token,
                          ssl=ssl) as client:
        return await client.stats(rooms)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "token":
            secret = auth.load_secret(args.secret_file)
            print(auth.mint(secret, args.identity, args.ttl, audience=args.audience, issuer=args.issuer))
            return 0
        stats = asyncio.run(fetch(args.host, args.port, args.rooms, args.timeout, args.token, client_tls(args)))
    except ChatError as exc:
        parser.exit(1, f"async_chat.admin: {exc}\n")
    except ValueError as exc:
        parser.error(str(exc))
    print(as_json(stats) if args.json else render(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
