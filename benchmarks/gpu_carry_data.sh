#!/usr/bin/env bash
# Prepare, here, the benchmark data a GPU machine needs, in .gpu_data/ (git-ignored): only the repository travels to
# the device, not ../shared/data. Carried whole: PneumoniaMNIST (4 MB) and Fashion-MNIST (30 MB, gzipped IDX);
# NDSB 2015 plankton (128 MB) does not fit the 64 MiB a device call carries, so a fixed subset of its train folder
# goes (the first PLANKTON_FRACTION of every class's sorted files, at least one each; default 5%, about 1,500
# images, 6 MB) for bench_data_scale at small sizes. benchmarks/gpu_suite.sh reads it through BENCHMARK_DATA_ROOT.
#
#     benchmarks/gpu_carry_data.sh [SOURCE]    # SOURCE defaults to ../shared/data; then carry `.gpu_data`
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCE=${1:-../shared/data}
PLANKTON_FRACTION=${PLANKTON_FRACTION:-0.05}
LIMIT_MIB=64

[ -f "$SOURCE/medmnist_pneumonia/pneumoniamnist.npz" ] || { echo "gpu_carry_data.sh: no $SOURCE/medmnist_pneumonia/pneumoniamnist.npz" >&2; exit 1; }
grep -qx '/.gpu_data/' .git/info/exclude 2>/dev/null || echo '/.gpu_data/' >> .git/info/exclude
rm -rf .gpu_data && mkdir -p .gpu_data/medmnist_pneumonia .gpu_data/fashion_mnist
cp "$SOURCE/medmnist_pneumonia/pneumoniamnist.npz" .gpu_data/medmnist_pneumonia/
cp "$SOURCE"/fashion_mnist/*-ubyte.gz .gpu_data/fashion_mnist/
if [ -d "$SOURCE/ndsb2015_plankton/train" ]; then
  for class_dir in "$SOURCE"/ndsb2015_plankton/train/*/; do
    class=$(basename "$class_dir")
    mkdir -p ".gpu_data/ndsb2015_plankton/train/$class"
    files=$(ls "$class_dir" | sort)
    keep=$(python3 -c "import math, sys; print(max(1, math.ceil(int(sys.argv[1]) * float(sys.argv[2]))))" "$(echo "$files" | wc -l)" "$PLANKTON_FRACTION")
    echo "$files" | head -n "$keep" | while read -r name; do cp "$class_dir$name" ".gpu_data/ndsb2015_plankton/train/$class/"; done
  done
fi
echo "plankton images carried: $(find .gpu_data/ndsb2015_plankton -type f 2>/dev/null | wc -l)"
du -sh .gpu_data/*
# What a device call carries: tracked and untracked-not-ignored files, plus the carried .whl and .gpu_data.
travelling=$( { git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -n1 | cut -f1; \
  du -sb .gpu_data | cut -f1; du -sb .whl 2>/dev/null | cut -f1 || echo 0; } | paste -sd+ | bc)
echo "a device call would carry $((travelling / 1048576)) MiB of its $LIMIT_MIB MiB (repository + .gpu_data + .whl)"
[ "$travelling" -lt $((LIMIT_MIB * 1048576)) ] || { echo "gpu_carry_data.sh: over the limit: lower PLANKTON_FRACTION" >&2; exit 1; }
