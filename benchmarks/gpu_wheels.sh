#!/usr/bin/env bash
# Download, here, the wheels a bare GPU machine lacks into .whl/ (git-ignored), for Python 3.12 on x86-64 Linux.
#
# The lent H200 machine has torch, transformers, accelerate, huggingface_hub, safetensors, scikit-learn, scipy,
# matplotlib, pandas, pyarrow, xxhash, tqdm, jinja2, pillow and psutil (/work/.library/device/KINDS.md), but not
# diffusers, datasets, evaluate or kornia: these and their missing needs travel as wheels, at the versions of
# constraints.txt (one version of each: two would stop the install). benchmarks/gpu_suite.sh installs them there.
#
#     benchmarks/gpu_wheels.sh        # then carry `.whl` in the device run (about 14 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(diffusers datasets dill multiprocess evaluate kornia kornia_rs importlib_metadata)
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}

pinned() {  # the constraints.txt pin of a package, NAME==VERSION
  local pin
  pin=$(grep -i -E "^$1==" constraints.txt) || { echo "gpu_wheels.sh: $1 is not pinned in constraints.txt" >&2; exit 1; }
  echo "$pin"
}

grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
for package in "${PACKAGES[@]}"; do
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$(pinned "$package")"
done
ls -1 .whl
du -sh .whl
