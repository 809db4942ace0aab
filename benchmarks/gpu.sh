#!/bin/sh
# Every GPU measurement of issue 15 in one run (about 6 minutes on one H100-class GPU);
# writes benchmarks/gpu.md and gpu.json. `benchmarks/gpu.sh --cpu-smoke` checks it on a CPU.
set -eu
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" benchmarks/gpu.py "$@"
