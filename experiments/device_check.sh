#!/usr/bin/env bash
# Accelerator check: train-step examples/s and MFU on a GPU (or TPU) host. On one H200 the full
# set of contestants takes about 10 minutes, most of it compiling (40-115 s per contestant):
# BENCH_ONLY="bf16, base" keeps the two base-config bf16 ones (about 5 minutes with the trainer).
#
#   bash experiments/device_check.sh                 # prints the tables, writes $OUT
#
# 1. Makes sure JAX sees the accelerator: if it only sees the CPU and an NVIDIA GPU (or a TPU)
#    is present, installs the jax build for it at the installed jax version
#    (JAX_EXTRA=cuda12 by default; cuda13 for CUDA 13 drivers; tpu). Offline hosts: WHEELS=DIR
#    installs from a folder of wheels (`pip download` them elsewhere) and never from an index.
# 2. `tools/bench.py --groups accelerator`: the rmc_jax train step on a fixed batch, bf16 and
#    f32, base config (batch BATCH) and ViT-S/16 at 224 px (batch BATCH/4); examples/s per
#    round and MFU against the bf16 and f32 matmul peaks measured in the same run.
# 3. The real trainer for TRAIN_SECONDS (`python -m rmc_jax.main`, bf16, synthetic data
#    rendered by WORKERS input processes): examples/s and MFU as the run logs them, which
#    shows whether the input pipeline keeps up.
#
# Environment: PYTHON (python3), OUT (device_check_out), BATCH (256), ROUNDS (5), STEPS (10),
# TRAIN_SECONDS (90), TRAIN_STEPS (100000: the time limit ends the run), WORKERS (8),
# TRAIN_CONFIG (configs/base.py:roi), BENCH_ONLY (labels to
# keep, e.g. "base roi"), ALLOW_CPU=1 (run on the CPU too: for testing this script).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-device_check_out}"
BATCH="${BATCH:-256}"
ROUNDS="${ROUNDS:-5}"
STEPS="${STEPS:-10}"
TRAIN_SECONDS="${TRAIN_SECONDS:-90}"
TRAIN_STEPS="${TRAIN_STEPS:-100000}"
WORKERS="${WORKERS:-8}"
TRAIN_CONFIG="${TRAIN_CONFIG:-configs/base.py:roi}"
mkdir -p "$OUT"
# Several benchmark workers share one device: allocate on demand, not 75% each up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

backend() { "$PYTHON" -c 'import jax; print(jax.default_backend())' 2>/dev/null || echo none; }

pip_install() {
  if [ -n "${WHEELS:-}" ]; then
    "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" "$@"
  else
    "$PYTHON" -m pip install -q "$@"
  fi
}

# 1. JAX on the accelerator ------------------------------------------------------------------
if ! "$PYTHON" -c 'import rmc_jax' 2>/dev/null; then
  pip_install -e .
fi
platform="$(backend)"
if [ "$platform" = cpu ] || [ "$platform" = none ]; then
  extra=""
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    extra="${JAX_EXTRA:-cuda12}"
  elif [ -e /dev/accel0 ] || [ -e /dev/vfio/0 ]; then
    extra="tpu"
  fi
  if [ -n "$extra" ]; then
    version="$("$PYTHON" -c 'import jax; print(jax.__version__)' 2>/dev/null || true)"
    echo "device_check: JAX sees no accelerator; installing jax[$extra]${version:+==$version}"
    pip_install "jax[$extra]${version:+==$version}"
    platform="$(backend)"
  fi
fi
if { [ "$platform" = cpu ] || [ "$platform" = none ]; } && [ "${ALLOW_CPU:-0}" != 1 ]; then
  echo "device_check: JAX runs on '$platform', not on a GPU or TPU (set ALLOW_CPU=1 to run" \
       "anyway, or JAX_EXTRA / WHEELS to install the right jax build)" >&2
  exit 2
fi
"$PYTHON" - <<'PY' | tee "$OUT/devices.txt"
import jax
print(f"jax {jax.__version__}, backend {jax.default_backend()}: "
      + ", ".join(sorted({d.device_kind for d in jax.devices()})) + f" x {jax.device_count()}")
PY

# 2. Train-step benchmark on a fixed batch ---------------------------------------------------
bench_args=(--groups accelerator --rounds "$ROUNDS" --steps "$STEPS"
            --accelerator_batch "$BATCH" --output "$OUT/bench.json")
if [ -n "${BENCH_ONLY:-}" ]; then bench_args+=(--only "$BENCH_ONLY"); fi
if [ -n "${MATMUL_SIZE:-}" ]; then bench_args+=(--matmul_size "$MATMUL_SIZE"); fi
"$PYTHON" tools/bench.py "${bench_args[@]}" | tee "$OUT/bench.md"

# 3. The trainer end to end, input pipeline included ---------------------------------------
rm -rf "$OUT/train"
status=0
timeout -s TERM "$TRAIN_SECONDS" "$PYTHON" -m rmc_jax.main \
  --config="$TRAIN_CONFIG,batch=$BATCH" --workdir="$OUT/train" \
  --config.total_steps="$TRAIN_STEPS" --config.log_every=10 --config.checkpoint_every=100000 \
  --config.evals.enabled=False --config.progress_bar=off --config.data.workers="$WORKERS" \
  --config.model.vision.dtype=bfloat16 --config.model.text.dtype=bfloat16 \
  > "$OUT/train.log" 2>&1 || status=$?
# 124: stopped by the timeout (the trainer saves a checkpoint on SIGTERM and exits).
if [ "$status" != 0 ] && [ "$status" != 124 ]; then
  tail -n 30 "$OUT/train.log" >&2
  echo "device_check: the training run failed (exit $status); log in $OUT/train.log" >&2
  exit "$status"
fi
"$PYTHON" tools/run_summary.py "$OUT/train/metrics.jsonl" | tee "$OUT/train_summary.txt"
