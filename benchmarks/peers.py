"""The servers `sendMessage` is measured on, ours and its peers, each in a process of its own.

    python -m benchmarks.peers KIND --port PORT --transport T --protocol P

Every peer serves the classic contract (`void sendMessage(1: Message message)`) with a handler that does
nothing, on the same wire as ours, and says `listening on 127.0.0.1:PORT` on stderr once it accepts:
- apache-simple: Apache Thrift's TSimpleServer over code from `thrift --gen py`, plain TBinaryProtocol
  (or TCompactProtocol): the server of the article async_chat started from. It serves one connection
  at a time.
- apache-threaded: Apache's TThreadedServer, TBinaryProtocolAccelerated (or TCompactProtocolAccelerated).
- thriftpy2-threaded: thriftpy2's own threaded server with its Cython codec (`thriftpy2.rpc.make_server`).
- aio-asyncio, aio-uvloop: thriftpy2's stock `make_aio_server` on asyncio's loop and on uvloop: what
  async_chat would be with no server of its own.
- raw: a uvloop `asyncio.Protocol` that answers each request's bytes with a pre-built reply, decoding
  nothing: the limit of a Python asyncio server on this machine.
- ours: `python -m async_chat.server` (the memory broker, no rate limit), whose handler publishes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from async_chat.contract import ChatService, Message

from .loadgen import BUILD, SERVER_CPU, pinned
from .processes import LOOPBACK, UNLIMITED, ServerProcess, start_process

KINDS = ("ours", "raw", "aio-uvloop", "aio-asyncio", "thriftpy2-threaded", "apache-threaded", "apache-simple")
REFERENCE = "aio-uvloop"
LIMIT = "raw"

CLASSIC_IDL = """\
struct Message {
    1: required string sender,
    2: required string content,
}
service ChatService {
    void sendMessage(1: Message message),
}
"""

SENDER, CONTENT = "bench", "hello, async_chat"


def call_bytes(transport: str, protocol: str, seqid: int = 1, message: Any = None) -> tuple[bytes, bytes]:
    """The request a classic client sends for one `sendMessage` (of `message`, else a classic one), and
    the reply every server must give."""
    from thriftpy2.protocol import TBinaryProtocol, TCompactProtocol
    from thriftpy2.thrift import TMessageType
    from thriftpy2.transport import TMemoryBuffer

    def encode(kind: int, body: Any) -> bytes:
        buffer = TMemoryBuffer()
        prot = (TBinaryProtocol if protocol == "binary" else TCompactProtocol)(buffer)
        prot.write_message_begin("sendMessage", kind, seqid)  # type: ignore[no-untyped-call]
        body.write(prot)
        data: bytes = buffer.getvalue()
        return len(data).to_bytes(4, "big") + data if transport == "framed" else data

    message = message or Message(sender=SENDER, content=CONTENT)
    request = encode(TMessageType.CALL, ChatService.sendMessage_args(message=message))
    return request, encode(TMessageType.REPLY, ChatService.sendMessage_result())


async def start(kind: str, transport: str, protocol: str) -> ServerProcess:
    """Start one server of `kind`, pinned to the server core, on a free loopback port."""
    if kind == "ours":
        argv = [sys.executable, "-m", "async_chat.server", "--host", LOOPBACK, "--port", "0", *UNLIMITED,
                "--transport", transport, "--protocol", protocol]
    else:
        argv = [sys.executable, "-m", "benchmarks.peers", kind, "--transport", transport, "--protocol", protocol]
        if kind.startswith("apache"):
            argv += ["--generated", str(apache_code())]
    return await start_process(pinned(SERVER_CPU, argv))


def apache_code() -> Path:
    """Python code for the classic contract from Apache's compiler, generated once per IDL text."""
    where = BUILD / f"gen-py-{hashlib.sha256(CLASSIC_IDL.encode()).hexdigest()[:12]}"
    if (where / "chat").exists():
        return where
    compiler = shutil.which("thrift")
    if compiler is None:
        raise RuntimeError("Apache's thrift compiler is missing: `make bench` installs it (Debian thrift-compiler)")
    with tempfile.TemporaryDirectory() as scratch:
        idl = Path(scratch) / "chat.thrift"
        idl.write_text("namespace py chat\n" + CLASSIC_IDL)
        out = Path(scratch) / "out"
        out.mkdir()
        subprocess.run([compiler, "--gen", "py", "-out", str(out), str(idl)], check=True)
        where.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(out, where, dirs_exist_ok=True)
    return where


# -- the peers themselves (run in their own process) ----------------------------------------------------


class Idle:
    """The peers' handler: the classic contract's one method, doing nothing."""

    def sendMessage(self, message: Any) -> None:  # the IDL's name
        pass


class IdleAsync:
    async def sendMessage(self, message: Any) -> None:  # the IDL's name
        pass


def _announce(port: int) -> None:
    print(f"listening on {LOOPBACK}:{port}", file=sys.stderr, flush=True)


def _free_listener() -> Any:
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    sock.listen(1024)
    return sock


def serve_apache(kind: str, transport: str, protocol: str, generated: Path) -> None:
    sys.path.insert(0, str(generated))
    from chat import ChatService as ApacheService  # type: ignore[import-not-found]
    from thrift.protocol import TBinaryProtocol, TCompactProtocol  # type: ignore[import-untyped]
    from thrift.server import TServer  # type: ignore[import-untyped]
    from thrift.transport import TSocket, TTransport  # type: ignore[import-untyped]

    accelerated = kind == "apache-threaded"
    if protocol == "binary":
        protocols: Any = (TBinaryProtocol.TBinaryProtocolAcceleratedFactory() if accelerated
                          else TBinaryProtocol.TBinaryProtocolFactory())
    else:
        protocols = (TCompactProtocol.TCompactProtocolAcceleratedFactory() if accelerated
                     else TCompactProtocol.TCompactProtocolFactory())
    transports: Any = (TTransport.TFramedTransportFactory() if transport == "framed"
                       else TTransport.TBufferedTransportFactory())
    listener = TSocket.TServerSocket(host=LOOPBACK, port=0)
    listener.handle = _free_listener()
    listener.listen = lambda: None  # already listening, on the port we announce
    port = listener.handle.getsockname()[1]
    processor = ApacheService.Processor(Idle())
    server_type = TServer.TThreadedServer if accelerated else TServer.TSimpleServer
    server = server_type(processor, listener, transports, protocols, daemon=True) if accelerated else \
        server_type(processor, listener, transports, protocols)
    _announce(port)
    server.serve()


def serve_thriftpy2_threaded(transport: str, protocol: str) -> None:
    from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
    from thriftpy2.rpc import make_server
    from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory

    sock = _free_listener()
    port = sock.getsockname()[1]
    sock.close()  # thriftpy2 binds its own socket: hand it the port we just had
    server = make_server(
        ChatService, Idle(), host=LOOPBACK, port=port, client_timeout=None,  # type: ignore[arg-type]
        proto_factory=TBinaryProtocolFactory() if protocol == "binary" else TCompactProtocolFactory(),
        trans_factory=TFramedTransportFactory() if transport == "framed" else TBufferedTransportFactory(),
    )
    server.trans.listen()
    server.trans.listen = lambda: None  # type: ignore[method-assign]  # already listening
    server.daemon = True
    _announce(port)
    server.serve()


def serve_aio(kind: str, transport: str, protocol: str) -> None:
    from thriftpy2.contrib.aio.protocol import TAsyncBinaryProtocolFactory, TAsyncCompactProtocolFactory
    from thriftpy2.contrib.aio.transport import TAsyncBufferedTransportFactory, TAsyncFramedTransportFactory
    from thriftpy2.rpc import make_aio_server  # type: ignore[attr-defined]

    class Handler:
        async def sendMessage(self, message: Any) -> None:
            pass

    async def main() -> None:
        sock = _free_listener()
        port = sock.getsockname()[1]
        server = make_aio_server(
            ChatService, IdleAsync(), host=LOOPBACK, port=port, client_timeout=None, loop=asyncio.get_running_loop(),
            proto_factory=TAsyncBinaryProtocolFactory() if protocol == "binary" else TAsyncCompactProtocolFactory(),
            trans_factory=(TAsyncFramedTransportFactory() if transport == "framed"
                           else TAsyncBufferedTransportFactory()),
        )
        server.trans.raw_sock = sock
        listener = await server.trans.accept(server.handle)
        _announce(port)
        await listener.serve_forever()

    if kind == "aio-uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def serve_raw(transport: str, protocol: str) -> None:
    import uvloop

    request, reply = call_bytes(transport, protocol)
    size = len(request)

    class Echo(asyncio.Protocol):
        """Counts request bytes and writes one pre-built reply per request: no decoding at all."""

        def __init__(self) -> None:
            self.pending = 0
            self.transport: Any = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.pending += len(data)
            calls, self.pending = divmod(self.pending, size)
            if calls:
                self.transport.write(reply * calls)

    async def main() -> None:
        sock = _free_listener()
        server = await asyncio.get_running_loop().create_server(Echo, sock=sock)
        _announce(sock.getsockname()[1])
        await server.serve_forever()

    uvloop.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=[k for k in KINDS if k != "ours"])
    parser.add_argument("--transport", choices=("buffered", "framed"), default="buffered")
    parser.add_argument("--protocol", choices=("binary", "compact"), default="binary")
    parser.add_argument("--generated", type=Path, help="where Apache's generated code is (apache-* only)")
    args = parser.parse_args()
    if args.kind.startswith("apache"):
        serve_apache(args.kind, args.transport, args.protocol, args.generated)
    elif args.kind == "thriftpy2-threaded":
        serve_thriftpy2_threaded(args.transport, args.protocol)
    elif args.kind.startswith("aio"):
        serve_aio(args.kind, args.transport, args.protocol)
    else:
        serve_raw(args.transport, args.protocol)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
