#!/bin/sh
# Here, before a device call: what the lent GPU machine (Python 3.12, torch and transformers,
# no network) needs to run benchmarks/gpu.sh: the wheels of benchmarks/gpu-wheels.txt in .whl/
# and the text it reads (4.4 MB of ../shared/data) in gpu-data/, with gpu-data/demo/ (20 MB:
# what `xelm demo --preset gpu` reads, benchmarks/gpu_demo_data.py), both ignored by git
# (listed in .git/info/exclude), so the call carries them: carry [".whl", "gpu-data"], then
# there `sh benchmarks/gpu-device.sh` (or `... --sections demo` for the whole preset).
set -eu
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
rm -rf .whl  # a changed pin must not leave its old wheel beside the new one
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl -r benchmarks/gpu-wheels.txt
mkdir -p gpu-data/eval gpu-data/corpus
cp -r "$DATA/eval/udhr" "$DATA/eval/flores200-devtest" gpu-data/eval/
cp -r "$DATA/corpus/valid" gpu-data/corpus/
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
"$PY" benchmarks/gpu_demo_data.py --data "$DATA" -o gpu-data/demo
exclude="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")"
for ignored in /.whl/ /gpu-data/; do
    grep -qxF "$ignored" "$exclude" 2>/dev/null || echo "$ignored" >> "$exclude"
done
echo "ready: $(ls .whl | wc -l) wheels in .whl/, $(du -sh gpu-data | cut -f1) in gpu-data/"
