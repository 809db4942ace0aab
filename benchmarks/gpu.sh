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
# On the lent H200 (Python 3.12 with torch and transformers, no network), prepared here:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl -r benchmarks/gpu-wheels.txt
#   mkdir -p gpu-data/eval gpu-data/corpus; cp -r ../shared/data/eval/udhr \
#     ../shared/data/eval/flores200-devtest gpu-data/eval/; cp -r ../shared/data/corpus/valid gpu-data/corpus/
# (both folders in .git/info/exclude), then one device call carrying .whl and gpu-data:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;
#   PYTHONUNBUFFERED=1 sh benchmarks/gpu.sh --data gpu-data --out $OUT/gpu.md 2>&1 | tee $OUT/gpu.log
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
