"""The atheris fuzz target (fuzz/fuzz_decoder.py) runs: a short run from seeds of every dialect.

A long run is `make fuzz`, by hand. This keeps the target in step with the server it feeds (it once
asked a connection for an attribute that had been renamed, and would have failed on its first input),
and gives the decoders, the compiled one included, a few thousand mutated calls on every CI run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks import peers

ROOT = Path(__file__).resolve().parent.parent


def test_the_fuzz_target_runs_clean_from_seeds_of_every_dialect(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for transport in ("buffered", "framed"):
        for protocol in ("binary", "compact"):
            request, _reply = peers.call_bytes(transport, protocol)
            (corpus / f"{transport}-{protocol}").write_bytes(request * 3)  # pipelined, as clients do
    done = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "fuzz_decoder.py"), "-runs=10000", "-seed=1", "-rss_limit_mb=1024",
         "-timeout=30", "-max_len=4096", str(corpus)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done 10000 runs" in done.stderr
    assert not list(tmp_path.glob("crash-*"))
    assert not list(tmp_path.glob("timeout-*"))
