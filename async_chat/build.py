"""Which build runs: the compiled one (mypyc's core, Cython's decoder) or pure Python.

setup.py compiles the modules on the per-call and fan-out path when it can (the core); each compiled module
sits beside its .py, and Python imports the compiled one. ASYNC_CHAT_PURE_PYTHON=1 makes the package run its
.py files instead, the decoder's fallback too (codec.py): for a debugger or a profiler, which see Python
frames only, and for the tests, which run the whole suite both ways (Makefile). The package's __init__
imports this module first, so that the choice is made before any other of its modules loads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType

PURE = os.environ.get("ASYNC_CHAT_PURE_PYTHON", "") not in ("", "0")
"""Run as pure Python even where compiled modules are installed."""


class _Sources(MetaPathFinder):
    """Finds a package module's .py ahead of Python's own finder, which would take its compiled twin."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not fullname.startswith(__package__ + ".") or not path:
            return None
        source = Path(path[0]) / (fullname.rpartition(".")[2] + ".py")
        return spec_from_file_location(fullname, source) if source.is_file() else None


if PURE and not any(isinstance(finder, _Sources) for finder in sys.meta_path):
    sys.meta_path.insert(0, _Sources())


def core() -> str:
    """"compiled" when the core runs as mypyc compiled it, "python" when it runs from its .py files: as the
    server's start-up line and the benchmark results name it."""
    from . import hub  # one of the core's modules stands for all: they are built all or none (setup.py)

    return "python" if (hub.__file__ or "").endswith(".py") else "compiled"


def stale(package: Path = Path(__file__).parent) -> list[str]:
    """The compiled modules of `package` whose .py changed after they were built: those would run, not the
    .py (an editable install compiles in place; installing again rebuilds them)."""
    return sorted(
        str(source.relative_to(package.parent))
        for built in package.rglob("*.so")
        if (source := built.with_name(built.name.partition(".")[0] + ".py")).is_file()
        and source.stat().st_mtime > built.stat().st_mtime
    )
