"""Publish, read history, and follow a room with `async for` (the README's first example does less).

Run a server first (`make run`), then: python examples/quickstart.py [--port 9090]
"""

import argparse
import asyncio

from async_chat import ChatClient, Message, Missed


async def main(host: str, port: int) -> None:
    async with ChatClient(host, port) as client:
        # Follow the room from now on; subscribing on entering means nothing sent after it is missed.
        async with client.subscribe("lobby") as stream:
            await client.sendMessage(Message(sender="alice", content="hello"))  # classic call: room "general"
            seq = await client.publish(Message(sender="alice", content="hi, lobby", room="lobby"))
            print(f"stored as lobby #{seq}")

            async for item in stream:
                if isinstance(item, Missed):
                    print(f"lost {item.count} message(s)")
                    continue
                print(f"#{item.seq} {item.sender}: {item.content!r}")  # !r: no newline or escape acts
                break

        for message in await client.history("general", from_seq=1, limit=10):
            print(f"general #{message.seq} at {message.sent_at_ms} ms: {message.content!r}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
