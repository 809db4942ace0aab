#!/bin/sh
# Every GPU measurement of issue 15 in one run, at most --budget seconds (480; the
# torch.compile loops, last, get what the others left and are stopped when it runs out;
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
# xelm counts as installed when this checkout's xelm_cli imports and its plugins are
# registered. Else it is installed in place, or, where $PY's environment refuses that (not
# writable, externally managed) or holds xelm from another checkout (left as it is), into a
# folder of its own put first on PYTHONPATH.
set -eu
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
installed() {
    "$PY" -P -c "import importlib.metadata as m, os, sys, xelm_cli
here = os.path.dirname(os.path.dirname(os.path.realpath(xelm_cli.__file__)))
sys.exit(here != os.path.realpath('.') or not m.entry_points(group='xelm'))" 2>/dev/null
}
instead=""
if installed; then
    :
elif "$PY" -P -c "import xelm_cli" 2>/dev/null; then
    instead="it holds xelm from another checkout"
elif ! "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .; then
    instead="installing xelm into it failed"
fi
if [ -n "$instead" ]; then
    site="$(mktemp -d "${TMPDIR:-/tmp}/xelm-site.XXXXXX")"
    echo "gpu.sh: $PY: $instead; installing this checkout into $site instead" >&2
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index --target "$site" .
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" benchmarks/gpu.py "$@"
