"""Decoding calls from memory: what cybin may decode in one go, and where one call of several ends."""

from __future__ import annotations

import random

import pytest
from thriftpy2.protocol import TBinaryProtocol
from thriftpy2.thrift import TMessageType, TType
from thriftpy2.transport import TMemoryBuffer

from async_chat.codec import Call, Codec, Frame, call_length
from async_chat.contract import ChatService, Message
from async_chat.delivery import Delivery, Entry


def call(api: str, seqid: int = 1, **kwargs: object) -> bytes:
    buffer = TMemoryBuffer()
    prot = TBinaryProtocol(buffer)
    prot.write_message_begin(api, TMessageType.CALL, seqid)  # type: ignore[no-untyped-call]
    getattr(ChatService, api + "_args")(**kwargs).write(prot)
    data: bytes = buffer.getvalue()
    return data


@pytest.fixture(params=["compiled", "pure"])
def codec(request: pytest.FixtureRequest) -> Codec:
    """Both binary decoders: the compiled one (_binary_call.pyx) and the pure-Python path without it."""
    return Codec(ChatService, "binary", max_call_bytes=1 << 20, compiled=request.param == "compiled")


# Bytes 0x0d..0x0f are the type bytes of map, set and list; they also occur in lengths, seqids and text.
LOOKALIKES = [
    {"seqid": 0x0E0D0F0E, "room": "general"},
    {"seqid": 1, "room": "fourteen-bytes"},  # a length of 14 is 0x0e
    {"seqid": 1, "room": "r" * 13, "sender": "s" * 15, "content": "\r\x0e\x0f"},
]


@pytest.mark.parametrize("case", LOOKALIKES, ids=lambda c: repr(c)[:40])
def test_a_call_whose_bytes_only_look_like_a_container_is_decoded_whole(codec: Codec, case: dict[str, object]) -> None:
    message = Message(sender=case.get("sender", "ann"), content=case.get("content", "hi"), room=case["room"])
    data = call("sendMessage", int(case["seqid"]), message=message)  # type: ignore[call-overload]
    assert any(b in data for b in b"\r\x0e\x0f")
    for whole in (True, False):
        decoded = codec.decode(data, whole=whole)
        assert decoded is not None, "left to the slow streaming decoder"
        got, used = decoded
        assert (got.api, got.seqid, used) == ("sendMessage", case["seqid"], len(data))
        assert got.args.message == message


def test_calls_sent_back_to_back_are_decoded_one_at_a_time_each_with_its_length(codec: Codec) -> None:
    first = call("sendMessage", 7, message=Message(sender="ann", content="one", room="fourteen-bytes"))
    second = call("poll", 8, subscription_id="s" * 24, max_messages=10, wait_ms=0)
    third = call("sendMessage", 9, message=Message(sender="bob", content="three"))
    data = bytearray(first + second + third)
    seen = []
    while data:
        decoded = codec.decode(data)
        assert decoded is not None
        got, used = decoded
        seen.append((got.api, got.seqid, used))
        del data[:used]
    assert seen == [("sendMessage", 7, len(first)), ("poll", 8, len(second)), ("sendMessage", 9, len(third))]


def test_a_call_not_all_there_waits_for_the_streaming_decoder(codec: Codec) -> None:
    data = call("sendMessage", 14, message=Message(sender="ann", content="hello", room="fourteen-bytes"))
    for cut in range(len(data)):
        assert codec.decode(data[:cut]) is None
        assert call_length(data[:cut]) is None


def list_field(elem_type: int, count: int) -> bytes:
    """A `sendMessage` call with an unknown field 9 of type list<elem_type>, claiming `count` elements."""
    data = call("sendMessage", 1, message=Message(sender="ann", content="hi"))
    field = bytes([TType.LIST]) + (9).to_bytes(2, "big") + bytes([elem_type]) + count.to_bytes(4, "big")
    return data[:-1] + field + b"\x00"


def test_containers_are_never_given_to_cybin(codec: Codec) -> None:
    # A list of a zero-width type claiming 2**31-1 elements: cybin would loop that many times skipping it.
    # Given to cybin, it would come back decoded (after seconds), not refused.
    bomb = list_field(TType.STOP, 2**31 - 1)
    assert codec.decode(bomb, whole=True) is None
    assert codec.decode(bomb) is None
    assert call_length(bomb) is None


def test_the_walk_ends_on_any_bytes_and_never_claims_more_than_it_was_given() -> None:
    rng = random.Random(8)
    valid = call("sendMessage", 1, message=Message(sender="ann", content="hi", room="fourteen-bytes"))
    for _ in range(5000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data += bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
        end = call_length(data)
        assert end is None or 0 < end <= len(data)


def test_negative_lengths_are_refused(codec: Codec) -> None:
    data = bytearray(call("sendMessage", 1, message=Message(sender="ann", content="hi")))
    at = data.index(b"ann") - 4
    data[at : at + 4] = (-5).to_bytes(4, "big", signed=True)
    assert call_length(data) is None
    assert codec.decode(bytes(data), whole=True) is None


@pytest.mark.parametrize(("protocol", "strict"), [("binary", True), ("binary", False), ("compact", True)])
def test_a_batch_reply_is_byte_for_byte_what_thriftpy2_encodes(protocol: str, strict: bool) -> None:
    """A poll's reply is spliced from each message's bytes as first encoded (kept on its entry, shared by
    every subscriber); it must be exactly what encoding the Batch would give, whatever it holds: lists
    short and long (compact writes 15 and more another way), text of any kind, absent optional fields,
    seqids of every size, a gap, a renumbering."""
    codec = Codec(ChatService, protocol, strict)
    rng = random.Random(7)
    for count in (0, 1, 2, 14, 15, 16, 200):
        entries = [
            Entry(Message(sender=f"s{i}", content=rng.choice(["", "plain", "é—✓" * i, "x" * 300]), room="room",
                          seq=rng.randrange(1, 2**62), sent_at_ms=rng.choice([None, 1_700_000_000_000 + i]),
                          client_msg_id=rng.choice([None, f"id-{i}"])), 1)
            for i in range(count)
        ]
        for seqid in (0, 1, 127, 128, 2**31 - 1, *((-1, -(2**31)) if protocol == "binary" else ())):
            for next_seq, missed, renumbered in ((1, 0, False), (2**40, 7, True), (5, 2**33, False)):
                delivery = Delivery(entries, next_seq, missed, renumbered)
                expected = codec.reply("poll", seqid, ChatService.poll_result(success=delivery.batch()))
                assert codec.batch_reply("poll", seqid, delivery) == expected
                assert codec.batch_reply("poll", seqid, delivery) == expected  # from the bytes kept on each entry


def _compact_call(api: str, seqid: int, args: object) -> bytes:
    from thriftpy2.protocol.compact import TCompactProtocol

    buffer = TMemoryBuffer()
    prot = TCompactProtocol(buffer)
    prot.write_message_begin(api, TMessageType.CALL, seqid)  # type: ignore[no-untyped-call]
    prot.write_struct(args)  # type: ignore[no-untyped-call]
    return buffer.getvalue()  # type: ignore[no-any-return]


def _streamed(codec: Codec, data: bytes) -> object:
    """What the streaming decoder makes of `data` (a whole frame): the Call, or the exception it raises."""
    reading = codec.read_call(Frame(data))
    try:
        reading.send(None)
    except StopIteration as done:
        return done.value
    except Exception as exc:
        return type(exc)
    reading.close()
    return "waited"


def test_compact_calls_decode_in_one_go_exactly_as_the_streaming_decoder_reads_them() -> None:
    """The compact fast decoder takes a call only when it reads it exactly as the streaming decoder
    does: for valid calls of every method, and for thousands of corrupted ones (a byte changed, the end
    cut off, bytes appended), it gives the same call and length, or leaves it to the streaming decoder."""
    codec = Codec(ChatService, "compact")
    rng = random.Random(11)
    texts = ["", "a", "é—✓", "x" * 200, "\x00\x82"]
    calls = []
    for seqid in (0, 1, 127, 128, 2**31 - 1):
        message = Message(sender=rng.choice(texts[1:]), content=rng.choice(texts), room=rng.choice([None, "r"]),
                          seq=rng.choice([None, -5, 2**62]), client_msg_id=rng.choice([None, "id"]))
        calls += [
            ("sendMessage", seqid, ChatService.sendMessage_args(message=message)),
            ("publish", seqid, ChatService.publish_args(message=message)),
            ("poll", seqid, ChatService.poll_args(subscription_id="s" * 24, max_messages=-3, wait_ms=2**31 - 1,
                                                  from_seq=2**40, linger_ms=20)),
            ("subscribe", seqid, ChatService.subscribe_args(room=None, from_seq=0)),
            ("history", seqid, ChatService.history_args(room="r", from_seq=1, limit=10)),
            ("stats", seqid, ChatService.stats_args(max_rooms=5)),
        ]
    for api, seqid, args in calls:
        data = _compact_call(api, seqid, args)
        decoded = codec.decode(data, whole=True)
        assert decoded is not None, api
        assert (decoded[0].api, decoded[0].seqid, decoded[0].args, decoded[1]) == (api, seqid, args, len(data))
        assert codec.decode(data + data) is not None  # buffered, two calls back to back: the first
        assert codec.decode(data + data)[1] == len(data)  # type: ignore[index]
        for _ in range(300):
            corrupt = bytearray(data)
            how = rng.randrange(3)
            if how == 0:
                corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
            elif how == 1:
                del corrupt[rng.randrange(1, len(corrupt)):]
            else:
                corrupt += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
            fast = codec.decode(bytes(corrupt), whole=True)
            if fast is not None:
                slow = _streamed(codec, bytes(corrupt))
                assert isinstance(slow, Call), (bytes(corrupt).hex(), slow)
                assert (fast[0].api, fast[0].seqid, fast[0].args) == (slow.api, slow.seqid, slow.args)


def test_a_compact_void_reply_is_what_thriftpy2_encodes() -> None:
    codec = Codec(ChatService, "compact")
    for seqid in (0, 1, 127, 128, 300, 2**31 - 1):
        expected = codec.reply("sendMessage", seqid, ChatService.sendMessage_result())
        assert codec.void_reply("sendMessage", seqid) == expected
