"""`python -m async_chat.chat`: a terminal chat client, so two terminals can talk through a server.

Lines typed are sent; messages arriving (your own included, as the server's echo) are printed with their
time, seq and sender; a lost-message notice is printed whenever the server reports `missed`. It is built
only on the public API: `ChatClient.sendMessage` and `ChatClient.subscribe`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from .client import ChatClient, MessageStream, Missed
from .contract import Message
from .errors import ChatError
from .server import run
from .settings import OneLineParser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m async_chat.chat",
        description="Chat in a room of an async_chat server: type a line and press Enter to send it; "
        "Ctrl-D (end of input) or Ctrl-C to leave.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--name", required=True,
        help="your name, shown as the sender of your messages (a server with authentication uses the token's)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("ASYNC_CHAT_TOKEN"),
        help="a token, for a server started with --auth-secret-file [env ASYNC_CHAT_TOKEN]",
    )
    parser.add_argument("--room", default="general", help="the room to join")
    parser.add_argument("--host", default=os.environ.get("ASYNC_CHAT_HOST", "127.0.0.1"), help="server address")
    parser.add_argument("--port", type=int, default=int(os.environ.get("ASYNC_CHAT_PORT", "9090")), help="server port")
    parser.add_argument(
        "--replay", type=int, default=10, metavar="N", help="show the room's last N messages on joining"
    )
    return parser


def format_item(item: Any) -> str:
    """One line of the transcript for a Message or a Missed notice."""
    if isinstance(item, Missed):
        if item.reset:
            return "*** the server restarted and forgot this room: messages sent meanwhile may be lost"
        return f"*** {item.count} message(s) lost: you were reading too slowly or history did not reach back"
    when = datetime.fromtimestamp(item.sent_at_ms / 1000).strftime("%H:%M:%S") if item.sent_at_ms else "--:--:--"
    return f"[{when}] #{item.seq} {item.sender}: {item.content}"


async def _print_all(stream: MessageStream, out: TextIO) -> None:
    async for item in stream:
        print(format_item(item), file=out, flush=True)


async def _stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def chat(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    async with ChatClient(args.host, args.port, token=args.token) as client:
        start = 0
        if args.replay > 0:
            probe = await client.create_subscription(args.room, 0)
            await client.unsubscribe(probe.subscription_id)
            start = max(1, probe.next_seq - args.replay)
        print(f"*** joined {args.room!r} on {args.host}:{args.port} as {args.name!r}", file=out, flush=True)
        async with asyncio.TaskGroup() as tasks, client.subscribe(args.room, from_seq=start) as stream:
            receiver = tasks.create_task(_print_all(stream, out))
            try:
                lines = await _stdin_lines()
                while line := await lines.readline():
                    text = line.decode("utf-8", "replace").rstrip("\r\n")
                    if not text:
                        continue
                    try:
                        await client.sendMessage(Message(sender=args.name, content=text, room=args.room))
                    except ChatError as exc:
                        print(f"*** not sent: {exc}", file=out, flush=True)
            finally:
                receiver.cancel()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status = 0
    try:
        run(chat(args))
    except* KeyboardInterrupt:
        pass
    except* ChatError as group:
        for exc in group.exceptions:
            print(f"async_chat.chat: {exc}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
