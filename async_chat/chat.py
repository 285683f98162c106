"""`python -m async_chat.chat`: a terminal chat client, so two terminals can talk through a server.

Lines typed are sent; messages arriving (your own included, as the server's echo) are printed with their
time, seq and sender; a lost-message notice is printed whenever the server reports `missed`, and a line
when the connection is lost and when it is back. It is built only on the public API: `ChatClient` and its
`subscribe()` stream.

What it prints cannot be taken for something else: a message's content reaches the terminal with its
control characters made visible (an escape sequence cannot clear your screen or move the cursor), and
each further line of a multi-line message is marked as a continuation, so no content can pass for a line
from another sender. On a terminal, prompt_toolkit keeps the line being typed intact while messages
print above it; from a pipe, a file or /dev/null (cron, systemd, `docker run` without `-t`) it reads
lines as they come and leaves at their end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any, TextIO

from .client import ChatClient, MessageStream, Missed
from .contract import Message
from .errors import ChatError
from .server import run
from .settings import OneLineParser
from .tlsargs import add_tls_arguments, client_tls

MAX_LINE = 1 << 20
"""The longest line read from a pipe; a longer one is refused whole, without holding it in memory."""
CONTINUATION = "    | "
"""Marks each further line of a multi-line message: no message line starts with it."""

_UNSAFE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""What must not reach a terminal as itself: C0 and C1 controls (ESC among them) but the newline, DEL,
Unicode's line and paragraph separators, and the bidirectional overrides that reorder what is shown."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m async_chat.chat",
        description="Chat in a room of an async_chat server: type a line and press Enter to send it; "
        "Ctrl-D (end of input) or Ctrl-C to leave. Reads lines from a pipe or a file too.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--name", help="your name, shown as the sender of your messages (required unless a --token names you)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("ASYNC_CHAT_TOKEN"),
        help="a token, for a server started with --auth-secret-file: the server then names you by it"
        " [env ASYNC_CHAT_TOKEN]",
    )
    parser.add_argument("--room", default="general", help="the room to join")
    parser.add_argument("--host", default=os.environ.get("ASYNC_CHAT_HOST", "127.0.0.1"), help="server address")
    parser.add_argument("--port", type=int, default=int(os.environ.get("ASYNC_CHAT_PORT", "9090")), help="server port")
    parser.add_argument(
        "--replay", type=int, default=10, metavar="N", help="show the room's last N messages on joining"
    )
    add_tls_arguments(parser)
    return parser


def visible(text: str) -> str:
    """`text` with every character that could act on a terminal shown as an escape (`\\x1b`, `\\u202e`)."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def format_item(item: Any) -> str:
    """The transcript's lines for a Message or a Missed notice: one line, plus a marked one for each
    further line of a multi-line message."""
    if isinstance(item, Missed):
        if item.reset:
            return "*** the room's numbering started over (the server lost or forgot it): messages may be missing"
        return f"*** {item.count} message(s) lost: you were reading too slowly or history did not reach back"
    when = datetime.fromtimestamp(item.sent_at_ms / 1000).strftime("%H:%M:%S") if item.sent_at_ms else "--:--:--"
    first, *rest = visible(item.content).split("\n")
    lines = [f"[{when}] #{item.seq} {visible(item.sender)}: {first}"]
    lines += [CONTINUATION + line for line in rest]
    return "\n".join(lines)


async def _print_all(stream: MessageStream, say: Callable[[str], None]) -> None:
    async for item in stream:
        say(format_item(item))


async def _watch_connection(stream: MessageStream, say: Callable[[str], None], where: str) -> None:
    """Say at once when the stream loses its server and when it has it again, rather than only when the
    user next types. The stream counts its reconnection attempts; this looks at the count."""
    seen, down = stream.reconnects, False
    while True:
        await asyncio.sleep(0.25)  # a glance, four times a second: the stream has no event for this
        if stream.reconnects != seen:
            seen = stream.reconnects
            if not down:
                down = True
                say(f"*** lost the connection to {where}; reconnecting (your lines wait until it is back)")
        elif down and stream.subscription_id is not None and stream.connected:
            down = False
            say(f"*** connected to {where} again")


async def _piped_lines() -> AsyncIterator[str | None]:
    """Lines from stdin when it is not a terminal (a pipe, a file, /dev/null), read on a thread of their
    own: uvloop cannot watch a regular file, and a blocking read must not hold the event loop. None
    stands for a line longer than MAX_LINE, which is skipped unread past its limit."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | EOFError | None] = asyncio.Queue(maxsize=16)

    def read() -> None:  # a daemon thread: it may block on stdin until the process exits
        source = sys.stdin.buffer
        while True:
            line = source.readline(MAX_LINE)
            if not line:
                asyncio.run_coroutine_threadsafe(queue.put(EOFError()), loop).result()
                return
            if not line.endswith(b"\n") and len(line) == MAX_LINE:
                while (rest := source.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                    pass  # the rest of an over-long line: read and dropped
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()
                continue
            asyncio.run_coroutine_threadsafe(queue.put(line), loop).result()

    threading.Thread(target=read, name="async_chat.chat.stdin", daemon=True).start()
    while True:
        item = await queue.get()
        if isinstance(item, EOFError):
            return
        yield None if item is None else item.decode("utf-8", "replace").rstrip("\r\n")


async def _typed_lines(prompt: str) -> AsyncIterator[str | None]:
    """Lines typed at a terminal, with prompt_toolkit: the line being typed stays whole while messages
    print above it."""
    from prompt_toolkit import PromptSession

    session: PromptSession[str] = PromptSession()
    while True:
        try:
            yield await session.prompt_async(prompt)
        except EOFError:  # Ctrl-D
            return


async def chat(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    interactive = sys.stdin.isatty() and out.isatty()
    tls = client_tls(args)
    async with ChatClient(args.host, args.port, token=args.token, ssl=tls) as client:
        start = 0
        probe = await client.create_subscription(args.room, 0)  # also proves who we are, with a token
        await client.unsubscribe(probe.subscription_id)
        if args.replay > 0:
            start = max(1, probe.next_seq - args.replay)
        name = client.identity or args.name
        where = f"{args.host}:{args.port}"
        patched = contextlib.ExitStack()
        if interactive:
            from prompt_toolkit.patch_stdout import patch_stdout

            patched.enter_context(patch_stdout())

        def say(text: str) -> None:
            print(text, file=sys.stdout if interactive else out, flush=True)

        with patched:
            told = f" (the server names you by your token; --name {args.name!r} is not used)" \
                if client.identity and args.name and args.name != client.identity else ""
            async with asyncio.TaskGroup() as tasks, client.subscribe(args.room, from_seq=start) as stream:
                say(f"*** joined {visible(args.room)!r} on {where}{' over TLS' if tls else ''} as"
                    f" {visible(name)!r}{told}")
                receiver = tasks.create_task(_print_all(stream, say))
                watcher = tasks.create_task(_watch_connection(stream, say, where))
                try:
                    lines = _typed_lines(f"{visible(name)}> ") if interactive else _piped_lines()
                    async for text in lines:
                        if text is None:
                            say(f"*** not sent: a line longer than {MAX_LINE} bytes")
                            continue
                        if not text:
                            continue
                        try:
                            await client.sendMessage(Message(sender=name, content=text, room=args.room))
                        except ChatError as exc:
                            say(f"*** not sent: {exc}")
                finally:
                    receiver.cancel()
                    watcher.cancel()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.name and not args.token:
        parser.error("give --name (or a --token, whose identity names you)")
    try:
        client_tls(args)  # a TLS file that cannot be used: one line, now
    except ChatError as refused:
        parser.exit(2, f"async_chat.chat: {refused.reason}\n")
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
