#!/bin/sh
# Every GPU measurement of issue 15 in one run (about 6.5 minutes on one H100-class GPU, an
# estimate, plus the compilation of the two torch.compile loops, not yet timed on a GPU;
# --no-compile leaves them out): writes benchmarks/gpu.md and benchmarks/gpu.json.
# `benchmarks/gpu.sh --cpu-smoke` checks it on a CPU.
#
# It reads text from ../shared/data, or from --data DIR holding eval/udhr,
# eval/flores200-devtest and corpus/valid (4.4 MB: copy them into an ignored folder of the
# checkout to take them to a machine that has no ../shared). On a machine where xelm is not
# installed (a bare GPU machine with its own PyTorch), xelm is installed in place without its
# dependencies; those the machine lacks (jsonschema, zstandard, langcodes, ...) must be there.
#
# On the lent H200 (Python 3.12 with torch and transformers, no network): here
# `sh benchmarks/gpu-prepare.sh` (wheels into .whl/, text into gpu-data/, both ignored by git),
# then one device call carrying .whl and gpu-data that runs `sh benchmarks/gpu-device.sh`.
# benchmarks/gpu-wheels.txt: the packages xelm needs that the H200's image lacks (KINDS.md of
# the device tool lists what it has), pinned to what the tests here run with.
set -eu
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import importlib.metadata as m, sys; sys.exit(not m.entry_points(group='xelm'))"
then
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .
fi
exec "$PY" benchmarks/gpu.py "$@"
