"""The compiled binary decoder (_binary_call.pyx) against thriftpy2's own decoding.

It must give what thriftpy2 gives for every call it takes, say None for everything else (which the
pure-Python path then reads, refuses or answers), never read past its bytes, and be there at all: a
build that silently left it out would cost every binary call its speed, so the suite says so.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thriftpy2.protocol.binary import TBinaryProtocol  # the pure-Python ones, not cybin: a second opinion
from thriftpy2.thrift import TMessageType, TType
from thriftpy2.transport.memory import TMemoryBuffer

from async_chat import build
from async_chat import codec as codec_module
from async_chat.contract import ChatService, Message
from benchmarks.processes import start_server

from .conftest import raw_connection

ARGS = {api: getattr(ChatService, api + "_args") for api in ChatService.thrift_services}
I32 = st.integers(-(2**31), 2**31 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(max_size=40)
MAYBE_TEXT = st.none() | TEXT


def compiled() -> Any:
    """The built module; a failure (not a skip) where it is missing, since the suite's machine can build it."""
    return importlib.import_module("async_chat._binary_call")


def encode(api: str, seqid: int, args: Any, strict: bool = True) -> bytes:
    buffer = TMemoryBuffer()
    prot = TBinaryProtocol(buffer, strict_write=strict)
    prot.write_message_begin(api, TMessageType.CALL, seqid)  # type: ignore[no-untyped-call]
    args.write(prot)
    data: bytes = buffer.getvalue()
    return data


def reference(data: bytes) -> tuple[str, int, Any, int]:
    """What thriftpy2's pure-Python binary protocol reads from `data`: the call, and the bytes it used."""
    buffer = TMemoryBuffer(data)
    prot = TBinaryProtocol(buffer, strict_read=False)
    api, _kind, seqid = prot.read_message_begin()  # type: ignore[no-untyped-call]
    if isinstance(api, bytes):
        api = api.decode("utf-8")
    args = ARGS[api]()
    args.read(prot)
    return api, seqid, args, buffer._pos


messages = st.builds(
    Message, sender=TEXT, content=TEXT, room=MAYBE_TEXT, client_msg_id=MAYBE_TEXT,
    seq=st.none() | I64, sent_at_ms=st.none() | I64,
)
calls = st.one_of(
    st.tuples(st.just("sendMessage"), st.builds(ARGS["sendMessage"], message=messages)),
    st.tuples(st.just("publish"), st.builds(ARGS["publish"], message=messages)),
    st.tuples(st.just("subscribe"), st.builds(ARGS["subscribe"], room=MAYBE_TEXT, from_seq=st.none() | I64)),
    st.tuples(st.just("poll"), st.builds(
        ARGS["poll"], subscription_id=MAYBE_TEXT, max_messages=st.none() | I32, wait_ms=st.none() | I32,
        from_seq=st.none() | I64, linger_ms=st.none() | I32,
    )),
    st.tuples(st.just("history"), st.builds(ARGS["history"], room=MAYBE_TEXT, from_seq=I64, limit=I32)),
    st.tuples(st.just("unsubscribe"), st.builds(ARGS["unsubscribe"], subscription_id=MAYBE_TEXT)),
    st.tuples(st.just("authenticate"), st.builds(ARGS["authenticate"], token=MAYBE_TEXT)),
    st.tuples(st.just("stats"), st.builds(ARGS["stats"], max_rooms=st.none() | I32)),
)


@settings(max_examples=400, deadline=None)
@given(call=calls, seqid=I32, strict=st.booleans(), after=st.binary(max_size=8))
def test_every_call_of_the_contract_decodes_as_thriftpy2_decodes_it(
    call: tuple[str, Any], seqid: int, strict: bool, after: bytes
) -> None:
    api, args = call
    data = encode(api, seqid, args, strict)
    assert compiled().decode_call(data + after, ARGS) == (api, seqid, args, len(data)) == reference(data + after)


def test_a_call_cut_anywhere_is_left_until_it_is_all_there() -> None:
    message = Message(sender="ann", content="héllo", room="general", client_msg_id="c1", seq=5, sent_at_ms=6)
    for strict in (True, False):
        data = encode("sendMessage", 77, ARGS["sendMessage"](message=message), strict)
        for cut in range(len(data)):
            assert compiled().decode_call(data[:cut], ARGS) is None, cut


def sender_field(data: bytes) -> int:
    """Where the sender field's header starts in an encoded sendMessage of sender 'ann'."""
    return data.index(b"ann") - 7


def replace(data: bytes, at: int, size: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + size:]


PLAIN = encode("sendMessage", 1, ARGS["sendMessage"](message=Message(sender="ann", content="hi")))
AT = sender_field(PLAIN)
NOT_TAKEN = {
    # a field the struct does not have: thriftpy2 skips it, and so does the pure path
    "unknown field": replace(PLAIN, AT, 0, b"\x0b\x00\x63\x00\x00\x00\x01x"),
    # the sender sent as an i32: thriftpy2 skips a field of the wrong type
    "wrong type": replace(PLAIN, AT, 10, b"\x08\x00\x01\x00\x00\x00\x07"),
    "a list": replace(PLAIN, AT, 0, b"\x0f\x00\x63\x00\x7f\xff\xff\xff"),
    "text not UTF-8": replace(PLAIN, AT + 7, 3, b"\xff\xfe\xfd"),
    "a name not UTF-8": replace(PLAIN, 8, 11, b"\xffendMessage"),
    "a negative length": replace(PLAIN, AT + 3, 4, (-3).to_bytes(4, "big", signed=True)),
    "a 2 GiB length": replace(PLAIN, AT + 3, 4, (2**31 - 1).to_bytes(4, "big")),
    "a negative name length": replace(PLAIN, 4, 4, (-11).to_bytes(4, "big", signed=True)),
    "another version": replace(PLAIN, 0, 2, b"\x80\x02"),
    "an unknown method": encode("sendMessage", 1, ARGS["sendMessage"]()).replace(b"sendMessage", b"sendMassage"),
}


@pytest.mark.parametrize("name", NOT_TAKEN)
def test_what_it_does_not_fully_understand_is_left_to_the_pure_path(name: str) -> None:
    data = NOT_TAKEN[name]
    assert compiled().decode_call(data, ARGS) is None


@settings(max_examples=1500, deadline=None)
@given(call=calls, flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))
def test_damaged_calls_are_decoded_as_thriftpy2_decodes_them_or_left_alone(
    call: tuple[str, Any], flips: list[tuple[int, int]]
) -> None:
    api, args = call
    data = bytearray(encode(api, 1, args))
    for at, value in flips:
        data[at % len(data)] = value
    got = compiled().decode_call(bytes(data), ARGS)
    if got is not None:
        assert got[3] <= len(data)
        assert got == reference(bytes(data))


def test_the_package_is_compiled_wherever_there_is_a_c_compiler_and_runs_as_the_environment_says() -> None:
    """Built: the decoder and the core (setup.py). Run: compiled, or all pure Python where
    ASYNC_CHAT_PURE_PYTHON is set, as `make test` runs the suite a second time (build.py)."""
    compiler = str(sysconfig.get_config_var("CC") or "cc").split()[0]
    assert shutil.which(compiler), f"no C compiler ({compiler}) here: the package is pure Python"
    assert compiled().decode_call(PLAIN, ARGS) is not None
    assert list(Path(build.__file__).parent.glob("hub.*.so")), "the core was not compiled (setup.py)"
    expected = "python" if build.PURE else "compiled"
    assert (codec_module.DECODER, build.core()) == (expected, expected)


def test_a_compiled_module_older_than_its_source_is_named_stale(tmp_path: Path) -> None:
    """What makes the suite refuse to start (conftest.py): a .py edited after its module was compiled. A
    compiled module without a .py (the decoder, mypyc's shared library) is never stale."""
    package = tmp_path / "async_chat"
    (package / "brokers").mkdir(parents=True)
    suffix = ".cpython-311-x86_64-linux-gnu.so"
    for name in ("hub", "codec", "brokers/memory"):
        (package / f"{name}.py").write_text("")
        (package / f"{name}{suffix}").write_bytes(b"")
    (package / f"_binary_call{suffix}").write_bytes(b"")
    assert build.stale(package) == []
    for name in ("hub", "brokers/memory"):
        built = (package / f"{name}{suffix}").stat().st_mtime
        os.utime(package / f"{name}.py", (built + 1, built + 1))
    assert build.stale(package) == ["async_chat/brokers/memory.py", "async_chat/hub.py"]


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "pure"])
async def test_a_server_answers_binary_calls_either_build(pure: bool) -> None:
    server = await start_server(env={"ASYNC_CHAT_PURE_PYTHON": "1" if pure else "0"})
    try:
        build_name = "python" if pure else "compiled"
        assert f"decoder={build_name} core={build_name}" in server.log[-1]
        async with raw_connection(server.port) as conn:  # thriftpy2's client: buffered, strict binary
            for n in range(3):
                assert await conn.client.sendMessage(Message(sender="ann", content=f"m{n}")) is None
            assert await conn.client.publish(Message(sender="ann", content="m3")) == 4
    finally:
        server.proc.kill()
        await server.proc.wait()


def test_field_types_of_the_contract_are_all_ones_it_reads() -> None:
    """A contract change that adds a list, a map or binary to a call would quietly send every such call to
    the slow path: this says so first."""
    for api, args in ARGS.items():
        for spec in args.thrift_spec.values():
            kinds = [spec[0]] + ([s[0] for s in spec[2].thrift_spec.values()] if spec[0] == TType.STRUCT else [])
            assert set(kinds) <= {TType.STRING, TType.I32, TType.I64, TType.STRUCT}, (api, spec)
