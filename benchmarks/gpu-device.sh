#!/bin/sh
# There, on the lent GPU machine, in one device call carrying .whl and gpu-data (made here by
# benchmarks/gpu-prepare.sh): installs the wheels into /tmp/site (the image's own torch and
# transformers stay), then runs every measurement into $OUT/gpu.md, gpu.json and gpu.log.
# Arguments go to gpu.py, e.g. --no-compile, or --sections memory,ensemble to rerun some,
# or --sections demo for `xelm demo --preset gpu` from start to end (8 minutes of its own),
# or --sections cuda-tests for the tests that need CUDA (pytest is in the H200's image).
set -eu
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder that comes back}"
if [ ! -d .whl ] || [ ! -d gpu-data ]; then
    echo "gpu-device.sh: no .whl/ or gpu-data/: run benchmarks/gpu-prepare.sh, carry both" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1  # no network there
status=0  # gpu.md and gpu.json are rewritten after each section; the log after each line
sh benchmarks/gpu.sh --data gpu-data --out "$OUT/gpu.md" "$@" > "$OUT/gpu.log" 2>&1 || status=$?
tail -n 80 "$OUT/gpu.log"
exit "$status"
