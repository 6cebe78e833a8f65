#!/usr/bin/env bash
# The accuracy benchmarks side by side on the GPU, then every speed benchmark alone, in their GPU configuration, on one
# bare GPU machine; every result JSON (and each step's log) goes into OUTDIR, with gpu_suite_summary.json listing each
# step's status, seconds and targets. At the H200's measured speed the whole suite needs three 10-minute commands
# (estimated): GPU_SUITE_ONLY=accuracy (about 3-5 minutes) and the speed steps (about 12) in two.
#
#     benchmarks/gpu_suite.sh OUTDIR [--dry_run]
#
# Prepared here, once: benchmarks/gpu_wheels.sh (wheels the machine lacks -> .whl/) and benchmarks/gpu_carry_data.sh
# (the benchmark data -> .gpu_data/); the device call carries `.whl` and `.gpu_data`. There the suite installs the
# wheels into /tmp/site, points the benchmarks at .gpu_data (BENCHMARK_DATA_ROOT) and runs the steps in priority
# order. Each step has a time cap, cut further to what is left of GPU_SUITE_BUDGET_S (default 540 s, inside the
# device's 600 s per command); a step that fails or runs out of time is recorded and the suite goes on; a step that
# no longer fits is skipped. `--dry_run` runs every step at its --quick size on the CPU here, without a budget.
# GPU_SUITE_ONLY="name ..." runs only the named steps or groups ("accuracy", "speed", "accuracy_long"): one of those
# commands, or a rerun of the steps that failed.
set -uo pipefail

OUTDIR=${1:?usage: benchmarks/gpu_suite.sh OUTDIR [--dry_run]}
DRY_RUN=0
case "${2:-}" in
  "") ;;
  --dry_run) DRY_RUN=1 ;;
  *) echo "gpu_suite.sh: expected --dry_run or nothing after OUTDIR, got '$2'" >&2; exit 2 ;;
esac
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$REPO"
START=$(date +%s)
BUDGET_S=${GPU_SUITE_BUDGET_S:-540}
STATUS_FILE="$OUTDIR/steps.tsv"
: > "$STATUS_FILE"

# ------------------------------------------------------------------------------------------------------------------
# Python, packages, data
# ------------------------------------------------------------------------------------------------------------------

if [ "$DRY_RUN" = 1 ]; then
  PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo "$REPO/.venv/bin/python" || echo python3)}
  DEVICE=cpu
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  PYTHON=${PYTHON:-python3}
  DEVICE=cuda
  if ls .whl/*.whl > /dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "gpu_suite.sh: installing the carried wheels failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "gpu_suite.sh: no .whl/*.whl carried: run benchmarks/gpu_wheels.sh here and carry .whl" >&2
  fi
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"  # the package from this checkout, not an install
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1 MPLBACKEND=Agg
export HF_HOME=${HF_HOME:-$(mktemp -d)}
if [ -d .gpu_data ]; then
  export BENCHMARK_DATA_ROOT="$REPO/.gpu_data"
elif [ "$DRY_RUN" = 0 ]; then
  echo "gpu_suite.sh: no .gpu_data carried: the steps that read data will fail (run benchmarks/gpu_carry_data.sh)" >&2
fi
HAS_PLANKTON=$([ -d "${BENCHMARK_DATA_ROOT:-$REPO/../shared/data}/ndsb2015_plankton/train" ] && echo 1 || echo 0)

# ------------------------------------------------------------------------------------------------------------------
# Steps: NAME CAP_SECONDS SCRIPT [FULL-RUN FLAGS...]; STEP_FLAGS (an array) go to the dry run's step too. run_step runs
# one alone (the speed steps: their ratios are timed side by side inside one process, nothing else on the machine);
# run_side_by_side runs several at once, sharing the GPU and splitting the CPU cores (the accuracy steps: launch-bound
# small models leave most of the GPU idle, and their figures do not depend on time).
# ------------------------------------------------------------------------------------------------------------------

STEP_FLAGS=()
declare -A STEP_PID STEP_BEGIN

selected() {  # NAME GROUP: whether GPU_SUITE_ONLY (step names or the groups "speed" / "accuracy") asks for the step
  [ -z "${GPU_SUITE_ONLY:-}" ] || [[ " $GPU_SUITE_ONLY " == *" $1 "* ]] || [[ " $GPU_SUITE_ONLY " == *" $2 "* ]]
}

launch_step() {  # NAME CAP SCRIPT [FULL-RUN FLAGS...]: starts the step in the background; finish_step records it
  local name=$1 cap=$2 script=$3
  shift 3
  local elapsed=$(( $(date +%s) - START )) limit flags
  if [ "$DRY_RUN" = 1 ]; then
    limit=600
    flags=(--quick --device cpu --num_threads 1 "${STEP_FLAGS[@]}")
  else
    limit=$(( BUDGET_S - elapsed - 5 ))
    [ "$cap" -lt "$limit" ] && limit=$cap
    flags=(--device "$DEVICE" --output "$OUTDIR/$name.json" "${STEP_FLAGS[@]}" "$@")
  fi
  if [ "$limit" -lt 20 ]; then
    printf '%s\tskipped\t0\t%s\n' "$name" "under 20 s of the suite's budget left" >> "$STATUS_FILE"
    echo "== $name: skipped (budget spent)"
    return
  fi
  echo "== $name (at most ${limit}s): $script ${flags[*]}"
  STEP_BEGIN[$name]=$(date +%s)
  {  # the end time is the step's own (finish_step may wait on another step first)
    timeout --kill-after=5 "$limit" "$PYTHON" "benchmarks/$script" "${flags[@]}" > "$OUTDIR/$name.log" 2>&1
    local rc=$?
    date +%s > "$OUTDIR/$name.end"
    exit $rc
  } &
  STEP_PID[$name]=$!
}

finish_step() {  # NAME: waits for a launched step and records its status, seconds and result
  local name=$1
  [ -n "${STEP_PID[$name]:-}" ] || return 0
  wait "${STEP_PID[$name]}"
  local rc=$? seconds=$(( $(cat "$OUTDIR/$name.end") - ${STEP_BEGIN[$name]} )) status=ok
  unset "STEP_PID[$name]"
  rm -f "$OUTDIR/$name.end"
  [ $rc -ne 0 ] && status=failed
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status=timed_out
  # the record is the last line a benchmark prints; a full run also wrote it with --output
  [ -s "$OUTDIR/$name.json" ] || tail -n 1 "$OUTDIR/$name.log" > "$OUTDIR/$name.json.tmp"
  if [ -f "$OUTDIR/$name.json.tmp" ]; then
    if "$PYTHON" -c 'import json, sys; json.load(open(sys.argv[1]))' "$OUTDIR/$name.json.tmp" 2> /dev/null; then
      mv "$OUTDIR/$name.json.tmp" "$OUTDIR/$name.json"
    else
      rm -f "$OUTDIR/$name.json.tmp"
    fi
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$seconds" "rc $rc" >> "$STATUS_FILE"
  echo "   $name: $status in ${seconds}s"
  [ "$status" = ok ] || tail -n 5 "$OUTDIR/$name.log" | cut -c1-300
}

run_step() {  # NAME CAP SCRIPT [FULL-RUN FLAGS...], alone; a speed step
  selected "$1" speed || return 0
  launch_step "$@"
  finish_step "$1"
}

run_side_by_side() {  # GROUP, then "NAME CAP SCRIPT [FLAGS...]" "STEP_FLAGS" pairs: steps at once, the CPU cores shared
  local group=$1 names=() specs=() step_flags=() spec=() i j threads name
  shift
  for (( i = 1; i < $#; i += 2 )); do
    read -r -a spec <<< "${!i}"
    selected "${spec[0]}" "$group" || continue
    names+=("${spec[0]}")
    specs+=("${!i}")
    j=$(( i + 1 ))
    step_flags+=("${!j}")
  done
  [ ${#names[@]} -gt 0 ] || return 0
  threads=$(( $(nproc) / ${#names[@]} ))
  [ "$threads" -lt 1 ] && threads=1
  for i in "${!specs[@]}"; do
    read -r -a spec <<< "${specs[$i]}"
    read -r -a STEP_FLAGS <<< "${step_flags[$i]}"
    [ "$DRY_RUN" = 1 ] || spec+=(--num_threads "$threads")
    mkdir -p "$HF_HOME/${spec[0]}"
    HF_HOME="$HF_HOME/${spec[0]}" launch_step "${spec[@]}"  # caches of its own (datasets, hub)
  done
  STEP_FLAGS=()
  for name in "${names[@]}"; do
    finish_step "$name"
  done
}

# ------------------------------------------------------------------------------------------------------------------
# The machine, then the steps: the accuracy benchmarks side by side, then the speed steps alone in priority order
# ------------------------------------------------------------------------------------------------------------------

{
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
  "$PYTHON" - << 'EOF'
import importlib, json, torch
versions = {}
for name in ["torch", "diffusers", "transformers", "accelerate", "datasets", "huggingface_hub", "safetensors", "kornia", "sklearn", "numpy", "pyarrow", "diffusion_classifiers"]:
    try:
        versions[name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as error:  # noqa: BLE001 - reported, the steps that need it fail on their own
        versions[name] = f"import failed: {error}"
print(json.dumps({"cuda": torch.cuda.is_available(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "versions": versions}))
EOF
} > "$OUTDIR/machine.txt" 2>&1
cat "$OUTDIR/machine.txt"

# Caps from the first H200 run (2026-12-04, benchmarks/results/gpu_suite_summary_gpu.json): measured seconds where a
# step finished, else what it had used when its first cap (in brackets) stopped it. The accuracy steps have not run
# side by side yet: their caps leave room over the estimate from the alone speeds (about 3-5 minutes: one training
# step in 23-37 ms, the GPU idle between kernels); RC-DiT and Score-SDE run one process per dataset.
run_side_by_side accuracy \
  "unet_features_accuracy 360 unet_features_accuracy.py" "" \
  "rc_dit_accuracy_pneumoniamnist 360 rc_dit_accuracy.py --baselines simclr" "--datasets pneumoniamnist" \
  "rc_dit_accuracy_fashion_mnist 360 rc_dit_accuracy.py --baselines simclr" "--datasets fashion_mnist" \
  "score_sde_accuracy_pneumoniamnist 360 score_sde_accuracy.py" "--parts data" \
  "score_sde_accuracy_fashion_mnist 360 score_sde_accuracy.py" "--parts reference"
# [60] alone: U-Net training 37 s; RC-DiT 1,500 steps 41 s, SimCLR about 35 s, per dataset (DINO, the default's
# second baseline, trains 1.6x as long as SimCLR on CPU); Score-SDE not reached
run_step training_speed 130 training_speed.py  # 74 s
run_step unet_features_bench_extraction 50 unet_features_bench_extraction.py  # 36 s
run_step unet_features_bench_probe 180 unet_features_bench_probe.py --sklearn_jobs 1  # [70]: digits + PneumoniaMNIST mean; digits + 2x2 unfinished in 135 s (scikit-learn on one thread, 3 repeats, then in 2 processes)
run_step score_sde_bench_elbo 120 score_sde_bench_elbo.py  # [45]: two trainings of 20 s, then 1,000 test images
run_step unet_features_bench_precision 100 unet_features_bench_precision.py  # [60] s; 56 s alone with the wheels' install
run_step score_sde_bench_likelihood 60 score_sde_bench_likelihood.py --parts speed --num_images 4  # 16 images + PneumoniaMNIST took 273 s on an H200 (results/score_sde_bench_likelihood_gpu.json), 194 s of it SciPy
run_step rc_dit_bench_conditioning 30 rc_dit_bench_conditioning.py --dit_size S  # 20 s
run_step training_speed_compiled 300 training_speed.py --models unet --torch_compile --torch_compile_modes reduce-overhead --mfu_batch_sizes 256  # not run: CUDA graphs for the launch-bound small models (with and without bf16), a larger MFU batch; the default mode took 128 s for the U-Net and the MFU model without the ablations, a review estimated 250-300 s for this
if [ "$HAS_PLANKTON" = 1 ]; then
  run_step bench_data_scale 60 bench_data_scale.py --sizes 500 1500  # not reached
elif [ -z "${GPU_SUITE_ONLY:-}" ]; then
  printf '%s\tskipped\t0\t%s\n' bench_data_scale "no plankton data (benchmarks/gpu_carry_data.sh)" >> "$STATUS_FILE"
fi
# The RC-DiT at 3x the CPU budget against both contrastive baselines (issue 13's longer GPU budget): not run yet, an
# estimate from the 1,500-step speeds of the first H200 run (RC-DiT 41 s, SimCLR about 35 s, DINO 1.6x SimCLR on CPU):
# about 400 s alone per dataset, two side by side
run_side_by_side accuracy_long \
  "rc_dit_accuracy_pneumoniamnist_4500_steps 540 rc_dit_accuracy.py --max_train_steps 4500" "--datasets pneumoniamnist" \
  "rc_dit_accuracy_fashion_mnist_4500_steps 540 rc_dit_accuracy.py --max_train_steps 4500" "--datasets fashion_mnist"
# The plankton study at full size needs all of NDSB, which travels only packed (benchmarks/gpu_carry_plankton.py,
# carried as .gpu_plankton instead of .gpu_data): last, so that a whole suite reaches it only with time to spare.
# PLANKTON_FLAGS adds flags to its full run (e.g. "--max_train_steps 1000" where less time is left).
if [ -f .gpu_plankton/ndsb_train.npz ] && { [ -z "${GPU_SUITE_ONLY:-}" ] || [[ " $GPU_SUITE_ONLY " == *" plankton_accuracy "* ]]; }; then
  STEP_FLAGS=(--data .gpu_plankton/ndsb_train.npz --shift_data .gpu_plankton/flowcam)  # read packed, not unpacked
  # shellcheck disable=SC2086  # PLANKTON_FLAGS is a list of flags
  run_step plankton_accuracy 600 plankton_accuracy.py --preset gpu ${PLANKTON_FLAGS:-}
  STEP_FLAGS=()
elif [ -z "${GPU_SUITE_ONLY:-}" ]; then
  printf '%s\tskipped\t0\t%s\n' plankton_accuracy "NDSB not carried (benchmarks/gpu_carry_plankton.py pack)" >> "$STATUS_FILE"
fi

# ------------------------------------------------------------------------------------------------------------------
# The summary: each step's status and seconds, every result's targets, and whole the results held to no target
# ------------------------------------------------------------------------------------------------------------------

SUITE_COMMAND="GPU_SUITE_BUDGET_S=$BUDGET_S GPU_SUITE_ONLY=\"${GPU_SUITE_ONLY:-}\" PLANKTON_FLAGS=\"${PLANKTON_FLAGS:-}\" $0 $*" \
  "$PYTHON" - "$OUTDIR" "$DRY_RUN" "$(( $(date +%s) - START ))" << 'EOF'
import datetime, json, os, sys
outdir, dry_run, seconds = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
steps, targets, untargeted = [], {}, {}
for line in open(os.path.join(outdir, "steps.tsv")):
    name, status, step_seconds, note = line.rstrip("\n").split("\t")
    path = os.path.join(outdir, f"{name}.json")
    figures = json.load(open(path))["figures"] if os.path.isfile(path) else {}
    step_targets = figures.get("targets", {})
    targets.update({f"{name}.{k}": {key: v.get(key) for key in ("value", "target", "met", "higher_is_better")} for k, v in step_targets.items()})
    if figures and not step_targets:  # a result held to no bound is kept here whole
        untargeted[name] = figures
    steps.append({"name": name, "status": status, "seconds": int(step_seconds), "note": note, "result": bool(figures),
                  "targets_met": sum(t.get("met") is True for t in step_targets.values()), "targets": len(step_targets)})
machine = open(os.path.join(outdir, "machine.txt")).read().splitlines()
summary = {
    "benchmark": "gpu_suite", "command": os.environ["SUITE_COMMAND"], "dry_run": dry_run,
    "environment": {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": machine},  # the GPU, driver and package versions
    "figures": {"seconds": seconds, "steps": steps, "figures_without_targets": untargeted, "targets": targets},
}
with open(os.path.join(outdir, "gpu_suite_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(f"{'step':42s} {'status':10s} {'s':>5s}  targets met")
for step in steps:
    print(f"{step['name']:42s} {step['status']:10s} {step['seconds']:5d}  {step['targets_met']}/{step['targets']}")
print(f"suite: {seconds} s; results in {outdir}")
sys.exit(0 if all(s["status"] in ("ok", "skipped") for s in steps) else 1)
EOF
