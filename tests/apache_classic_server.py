"""The article's server: Apache's TSimpleServer over code generated from the classic two-field contract.

Run as its own process: `python apache_classic_server.py GEN_DIR TRANSPORT PROTOCOL [threaded]` (a
TThreadedServer with `threaded`, which answers a connection's pipelined calls in order too). It listens on a
free loopback port, prints `port N`, then one line `got SENDER: CONTENT` per message, and serves until
killed. Used to show that our ChatClient talks to Thrift servers people already run.
"""

from __future__ import annotations

# ruff: noqa: E402  (the generated package is importable only once GEN_DIR is on sys.path)
import sys
from typing import Any

gen_dir, transport, protocol = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, gen_dir)

from chat import ChatService
from thrift.protocol import TBinaryProtocol, TCompactProtocol
from thrift.server import TServer
from thrift.transport import TSocket, TTransport


class Handler:
    def sendMessage(self, message: Any) -> None:
        print(f"got {message.sender}: {message.content}", flush=True)


listener = TSocket.TServerSocket(host="127.0.0.1", port=0)
listener.listen()
listener.listen = lambda: None  # TSimpleServer.serve() listens again; keep the socket whose port we printed
print(f"port {listener.handle.getsockname()[1]}", flush=True)
transports = {"buffered": TTransport.TBufferedTransportFactory, "framed": TTransport.TFramedTransportFactory}
protocols = {"binary": TBinaryProtocol.TBinaryProtocolFactory, "compact": TCompactProtocol.TCompactProtocolFactory}
kind = TServer.TThreadedServer if sys.argv[4:] == ["threaded"] else TServer.TSimpleServer
server = kind(ChatService.Processor(Handler()), listener, transports[transport](), protocols[protocol](), daemon=True) \
    if kind is TServer.TThreadedServer else kind(
        ChatService.Processor(Handler()), listener, transports[transport](), protocols[protocol]()
    )
server.serve()
