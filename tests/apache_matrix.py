"""One cell of the interop matrix: Apache's Python library and generated code against a running server.

Run as its own process, as any foreign client is:
    python apache_matrix.py GEN_DIR PORT ROOM TRANSPORT PROTOCOL [--non-strict] [--classic]
GEN_DIR holds `thrift --gen py` output: of chat.thrift, or with --classic of the article's two-field
contract (sendMessage only; ROOM is then unused). Prints one JSON object of what happened, which the
test compares with what must happen.
"""

from __future__ import annotations

# ruff: noqa: E402  (the generated package is importable only once GEN_DIR is on sys.path)
import json
import sys
from pathlib import Path
from typing import Any

gen_dir, port, room, transport, protocol = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
strict = "--non-strict" not in sys.argv
classic = "--classic" in sys.argv
sys.path[:0] = [gen_dir, str(Path(__file__).resolve().parent.parent / "examples")]

from apache_client import connect  # examples/apache_client.py: the connection code users copy
from chat.ttypes import Message
from thrift.Thrift import TApplicationException, TMessageType


def unknown_method(client: Any) -> dict[str, Any]:
    """Call a method the server does not have (hand-written: no generated client has one)."""
    out, inp = client._oprot, client._iprot
    out.writeMessageBegin("noSuchMethod", TMessageType.CALL, 7)
    out.writeStructBegin("noSuchMethod_args")
    out.writeFieldStop()
    out.writeStructEnd()
    out.writeMessageEnd()
    out.trans.flush()
    _name, kind, seqid = inp.readMessageBegin()
    error = TApplicationException()
    error.read(inp)
    inp.readMessageEnd()
    return {"kind": kind == TMessageType.EXCEPTION, "seqid": seqid, "type": error.type, "message": error.message}


def main() -> dict[str, Any]:
    options = {} if strict else {"strictRead": False, "strictWrite": False}
    if classic:  # the article's client: two fields, sendMessage only
        client = connect("127.0.0.1", port, transport, protocol, **options)
        client.sendMessage(Message(sender="Alice", content="Hello, World!"))
        return {"sendMessage": "ok", "unknown method": unknown_method(client)["type"]}
    reader = connect("127.0.0.1", port, transport, protocol, **options)
    writer = connect("127.0.0.1", port, transport, protocol, **options)
    result: dict[str, Any] = {}
    sub = reader.subscribe(room, 0)
    result["subscribe"] = [sub.room, sub.next_seq]
    result["publish"] = writer.publish(Message(sender="alice", content="one", room=room, client_msg_id="k1"))
    result["publish again"] = writer.publish(Message(sender="alice", content="one", room=room, client_msg_id="k1"))
    writer.sendMessage(Message(sender="bob", content="two", room=room))
    batch = reader.poll(sub.subscription_id, 10, 5000, sub.next_seq, 0)  # linger_ms 0: the classic poll
    result["poll"] = [[m.seq, m.sender, m.content, m.room] for m in batch.messages] + [batch.next_seq, batch.missed]
    again = reader.poll(sub.subscription_id, 10, 0, sub.next_seq, 20)  # as if the first reply had been lost
    result["poll again"] = [[m.seq, m.content] for m in again.messages] + [again.next_seq, again.missed]
    result["history"] = [[m.seq, m.content] for m in reader.history(room, 1, 10)]
    try:
        writer.publish(Message(sender="", content="nobody", room=room))
    except Exception as exc:  # must be the generated ChatError class, with its code
        result["publish refused"] = [type(exc).__module__ + "." + type(exc).__name__, exc.code, exc.reason]
    try:
        writer.sendMessage(Message(sender="", content="nobody", room=room))
    except TApplicationException as exc:
        result["sendMessage refused"] = [exc.type, exc.message]
    result["unknown method"] = unknown_method(writer)
    result["after unknown method"] = [m.seq for m in writer.history(room, 2, 10)]  # same connection, still served
    reader.unsubscribe(sub.subscription_id)
    return result


print(json.dumps(main()))
