#!/usr/bin/env bash
# Fuzz the decode path for SECONDS (default 600): `fuzz/run.sh 600`. Needs `pip install atheris`.
# Findings (crashes, hangs, memory) are written as crash-*/timeout-*/oom-* files in the current directory.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
python="${PYTHON:-.venv/bin/python}"
"$python" -c 'import atheris' 2>/dev/null || "$python" -m pip install --quiet atheris
exec "$python" fuzz/fuzz_decoder.py -max_total_time="$seconds" -rss_limit_mb=512 -timeout=10 -max_len=65536 \
  -print_final_stats=1 fuzz/corpus
