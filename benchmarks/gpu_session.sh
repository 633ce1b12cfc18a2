#!/usr/bin/env bash
# Prepare the GPU session of benchmarks/bench_gpu.py, here, before asking for the machine.
#
# The GPU machine has torch, numpy, scipy, pillow, scikit-image and tifffile, but not the
# packages below, and no network. This script, run from anywhere in the repository:
#   - downloads their wheels (CPython 3.12, x86-64 Linux) into .whl/;
#   - packs MobileSAM's checkpoint into .weights/mobile_sam.r16.pt.xz (about 25 MB: the
#     40.7 MB file does not fit beside the working tree in the 64 MiB that travels, so its
#     float32 weights are rounded to 16 significant bits, see bench_gpu.ROUNDING; vit_b and
#     vit_h run with random weights there, which leaves their throughput unchanged);
#   - lists both folders in .git/info/exclude (carried paths must be ignored ones);
#   - checks that the working tree, .whl and .weights fit in 64 MiB.
# dask and pooch are not fetched: nothing that bench_gpu.py runs imports them.
#
# Usage: PYTHON=/path/to/venv/bin/python bash benchmarks/gpu_session.sh
# (PYTHON needs pip, torch and napari-segany; default: python3.)
#
# Then ONE call of the device tool `run`, with
#   carry:     [".whl", ".weights"]
#   timeout_s: 360   (the benchmark itself should take 2-4 minutes)
#   command:
#     set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit; PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu.py --checkpoint mobile_sam=.weights/mobile_sam.r16.pt.xz --out $OUT/gpu.json 2>&1 | tee $OUT/gpu.log
# and give the machine back (give_back) unless you rerun at once. The JSON and the log come
# back under the reply's files_at.
set -euo pipefail

cd "$(git rev-parse --show-toplevel)"
PYTHON="${PYTHON:-python3}"
PACKAGES=(zarr numcodecs donfig google-crc32c platformdirs)

exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
for pattern in /.whl/ /.weights/; do
    grep -qxF "$pattern" "$exclude" || echo "$pattern" >>"$exclude"
done

# The versions installed here, so that the GPU run uses what the tests use.
read -r -a pins < <("$PYTHON" -c '
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
' "${PACKAGES[@]}")
rm -rf .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "${pins[@]}"
ls -l .whl

packed=.weights/mobile_sam.r16.pt.xz
if [ ! -f "$packed" ]; then
    "$PYTHON" benchmarks/bench_gpu.py --pack-checkpoint "$packed"
fi

# What travels: tracked and untracked-not-ignored files, plus the carried folders.
"$PYTHON" - <<'EOF'
import os
import subprocess
import sys

listed = subprocess.run(
    ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    capture_output=True, check=True,
).stdout.split(b"\0")
files = [f.decode() for f in listed if f and os.path.isfile(f)]
for folder in (".whl", ".weights"):
    files += [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
total = sum(os.path.getsize(f) for f in files)
limit = 64 * 2**20
print(f"travels: {total / 2**20:.1f} MiB of {limit / 2**20:.0f} MiB")
sys.exit(0 if total <= limit else "too much travels: the device call would be refused")
EOF
