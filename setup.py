"""The compiled modules: built when they can be, skipped when they cannot, from the same code either way.

- async_chat/_binary_call.pyx (Cython): a binary call decoded in C, in one pass over its bytes.
- The modules every call and every fan-out runs through (COMPILED), compiled by mypyc from their own .py
  files, which stay the one source and the reference. Their strict type hints are what mypyc compiles
  to C: attribute reads of our classes become struct reads, calls between them C calls. In-process it
  took a void sendMessage's Python from 3.4-3.7 us to 2.4-2.7 and a fan-out's poll cycle from 12-14 us to
  5.5-6.5 (README, "How a message flows").

Everything else is in pyproject.toml. Without Cython, mypy or a C compiler, or with ASYNC_CHAT_PURE_PYTHON=1
in the environment, the package installs all the same and runs as pure Python, slower; the server says which
as it starts (`decoder=` and `core=`, async_chat/build.py). The tests run against both builds (Makefile). A
compiled module also checks at run time the types its hints declare: a value of another type is a TypeError
there (the suite, which passes on both, is what holds the hints to the truth).
"""

import os
import sys
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

COMPILED = [
    "async_chat/brokers/memory.py",
    "async_chat/codec.py",
    "async_chat/connection.py",
    "async_chat/delivery.py",
    "async_chat/handler.py",
    "async_chat/hub.py",
    "async_chat/processor.py",
    "async_chat/session.py",
    "async_chat/sizes.py",
    "async_chat/tasks.py",
]
"""What mypyc compiles: the modules on the per-call and fan-out paths (the rest gains little and is left as
written)."""

CORE = "async_chat._core"
"""mypyc's group: one shared library, async_chat/_core__mypyc, that every compiled module's stub loads."""


def _warn(message: str) -> None:
    print(f"async_chat: {message}", file=sys.stderr)


def cython_extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        _warn("no Cython: binary calls will be decoded in pure Python")
        return []
    return list(cythonize(
        [Extension("async_chat._binary_call", ["async_chat/_binary_call.pyx"])],
        compiler_directives={"language_level": "3"},
        quiet=True,
    ))


def mypyc_extensions() -> list[Extension]:
    try:
        from mypyc.build import mypycify
    except ImportError:
        _warn("no mypyc: the core will run as pure Python")
        return []
    # mypy reads no configuration here: the build may run where the package's dependencies are not
    # installed (pip's isolated build), so what it cannot import is Any. The strict check is `make typecheck`.
    options = ["--config-file", os.devnull, "--ignore-missing-imports", "--python-version",
               f"{sys.version_info[0]}.{sys.version_info[1]}"]
    try:
        return list(mypycify(options + COMPILED, group_name=CORE, opt_level="3"))
    except (Exception, SystemExit) as exc:  # mypyc says what it cannot compile by exiting
        _warn(f"mypyc could not compile the core ({exc}): it will run as pure Python")
        return []


class BuildExt(build_ext):
    """An extension that fails to build is skipped (`optional`), with the core's modules all or none: each
    compiled module's stub needs the shared library, and without it must not exist (its .py is used)."""

    def build_extension(self, ext: Any) -> None:
        stub = ext.name.startswith("async_chat.") and ext.name.replace(".", "/") + ".py" in COMPILED
        if stub and not self._core_built:
            return
        super().build_extension(ext)
        if ext.name == CORE + "__mypyc":
            self._core_built = True

    def run(self) -> None:
        self._core_built = False
        super().run()


def extensions() -> list[Extension]:
    if os.environ.get("ASYNC_CHAT_PURE_PYTHON", "") not in ("", "0"):  # as async_chat/build.py reads it
        return []
    found = cython_extensions() + mypyc_extensions()
    for extension in found:
        extension.optional = True  # a failed compile is a warning, and the install goes on without it
    return found


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
