"""The contract: the IDL's names, a thriftpy2 client of the classic two-field contract, the packaged IDL.

Apache's generated clients and servers are in test_interop."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import thriftpy2

from async_chat import IDL_PATH, ChatClient, ChatServer, ErrorCode
from async_chat.contract import chat_thrift

from .conftest import CLASSIC_IDL, LOOPBACK

ROOT = Path(__file__).resolve().parent.parent


def test_idl_keeps_the_classic_contract_and_adds_only_optional_fields() -> None:
    spec = chat_thrift.Message.thrift_spec
    assert spec[1][1:] == ("sender", True)
    assert spec[2][1:] == ("content", True)
    assert {spec[i][1] for i in range(3, 7)} == {"room", "seq", "sent_at_ms", "client_msg_id"}
    assert all(spec[i][-1] is False for i in range(3, 7))  # optional
    assert chat_thrift.ChatService.thrift_services == [
        "sendMessage", "publish", "subscribe", "poll", "unsubscribe", "history", "authenticate", "stats",
    ]
    assert not chat_thrift.ChatService.sendMessage_result.thrift_spec  # no throws


def test_error_codes_mirror_the_idl() -> None:
    assert {c.name: c.value for c in ErrorCode} == chat_thrift.ErrorCode._NAMES_TO_VALUES


def test_packaged_idl_is_the_repository_contract() -> None:
    assert IDL_PATH.read_text() == (ROOT / "chat.thrift").read_text()


async def test_classic_thriftpy2_client_sends_and_subscribers_get_seqs(server: ChatServer, tmp_path: Path) -> None:
    (tmp_path / "classic.thrift").write_text(CLASSIC_IDL)
    classic = thriftpy2.load(str(tmp_path / "classic.thrift"), module_name="classic_thrift")

    def send_like_the_article() -> None:  # a plain blocking client: buffered transport, binary protocol
        from thriftpy2.rpc import make_client

        c = make_client(classic.ChatService, LOOPBACK, server.port, timeout=5000)
        try:
            for i in range(3):
                c.sendMessage(classic.Message(sender="Alice", content=f"Hello, World! {i}"))
        finally:
            c.close()

    async with ChatClient(LOOPBACK, server.port) as client, client.subscribe() as stream:
        await asyncio.to_thread(send_like_the_article)
        async with asyncio.timeout(10):
            got = [await anext(stream) for _ in range(3)]
    assert [(m.sender, m.content, m.room, m.seq) for m in got] == [
        ("Alice", f"Hello, World! {i}", "general", i + 1) for i in range(3)
    ]


@pytest.mark.timeout(600)  # mypyc compiles the core: a minute or two
@pytest.mark.parametrize("compiler", ["cc", "none", "declined"])
def test_a_wheel_built_from_the_sdist_carries_the_idl_and_works_outside_the_checkout(
    tmp_path: Path, compiler: str
) -> None:
    """As a user's pip would: the sdist first (it must hold every source, the compiled decoder's included),
    then the wheel from it; with a C compiler the wheel carries the compiled decoder and core, and with none
    (one that fails), or with ASYNC_CHAT_PURE_PYTHON=1 set for the build, it still builds, as pure Python,
    and says so. The sdist is made from the files git would commit, as on a fresh clone: a working tree's
    build leftovers (an egg-info's list of sources) could make up for a missing one."""
    source = tmp_path / "source"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, timeout=60, capture_output=True, text=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path / "sdist"), str(source)],
        check=True, timeout=300, capture_output=True,
    )
    [sdist] = (tmp_path / "sdist").glob("async_chat-*.tar.gz")
    # As a user's environment is: the suite's second run sets ASYNC_CHAT_PURE_PYTHON, which a build obeys too.
    environment = {**os.environ, "ASYNC_CHAT_PURE_PYTHON": "0"}
    building = {"cc": {}, "none": {"CC": "/bin/false"}, "declined": {"ASYNC_CHAT_PURE_PYTHON": "1"}}[compiler]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"), str(sdist)],
        check=True, timeout=300, env={**environment, **building},
    )
    [wheel] = (tmp_path / "dist").glob("async_chat-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("async_chat/chat.thrift") == (ROOT / "chat.thrift").read_bytes()
        assert "async_chat/py.typed" in archive.namelist()
        names = archive.namelist()
        built = {name.split(".")[0] for name in names if name.endswith(".so")}
        # the decoder (Cython), and mypyc's core: its shared library, and one module of it per compiled .py
        core = {"async_chat/_binary_call", "async_chat/_core__mypyc", "async_chat/hub", "async_chat/brokers/memory"}
        assert core <= built if compiler == "cc" else not built, sorted(built)
        archive.extractall(site)
    # The wheel's package, and the dependencies beside it, but not the checkout: -S skips the .pth files,
    # and with them the editable install's finder, which would find the checkout's compiled module.
    probe = (
        f"import sys; sys.path[:0] = [{str(site)!r}, {sysconfig.get_paths()['purelib']!r}];"
        " import async_chat, async_chat.codec; m = async_chat.Message(sender='a', content='b');"
        " print(async_chat.IDL_PATH); print(async_chat.codec.DECODER); print(async_chat.build.core())"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
        env=environment,
    )
    expected = "compiled" if compiler == "cc" else "python"
    assert done.stdout.split() == [str(site / "async_chat" / "chat.thrift"), expected, expected]
