#!/usr/bin/env bash
# Accelerator check: the ViT-B/16 + BERT-base (configs/b16.py) train step, the trainer end to
# end and the largest batch that fits, on a GPU (or TPU) host; the figures go into
# BENCHMARKS.md (block `device_check.sh`) with the date, the device and the versions.
#
#   bash experiments/device_check.sh                       # all parts: about 10 minutes on
#                                                          # one H200, most of it compiling
#   PARTS=bench bash experiments/device_check.sh           # one part per call (each < 6 min)
#   PARTS="train largest" bash experiments/device_check.sh
#
#   # Within 5 minutes (DEADLINE: seconds for the whole script; the bench is stopped at it,
#   # the trainer gets what is left, a part with too little time left is skipped and says so):
#   DEADLINE=285 PARTS="bench train" ROUNDS=2 STEPS=3 TRAIN_SECONDS=120 \
#     bash experiments/device_check.sh
#
# Every part's figures are in $OUT as soon as it ends, and $OUT/report.md (the block written
# into BENCHMARKS.md) is rewritten after each part, so a run cut short keeps what finished.
#
# Reports are read at TEXT_LEN tokens (64, where ViT-B/16 + BERT-base costs the published ~139
# GFLOP per training pair of the global objective; configs/b16.py reads BiomedCLIP's 256).
# Parts (PARTS, default "bench train largest"; later parts and reruns reuse the compilation
# caches in $CACHE, so a rerun after a failure skips most compiling):
#
#   bench    `tools/bench.py --groups accelerator --only $BENCH_ONLY`: by default the B/16 rows
#            (batch B16_BATCH): roi and global with this backend's kernels (cuDNN attention and
#            plain bf16 dots on NVIDIA GPUs, layers.choose_kernels) and roi with the CPU's
#            custom-VJP kernels for comparison; pairs/s per round, MFU from the lowered FLOP
#            count against the measured matmul peaks and the vendor's bf16 peak, device peak
#            and compiled-step memory. BENCH_ONLY="bf16, base" gives the base-config rows.
#   train    the real trainer (`python -m rmc_jax.main`, TRAIN_CONFIG at TRAIN_BATCH, bf16,
#            synthetic data rendered by WORKERS input processes) for TRAIN_SECONDS: examples/s
#            and MFU as the run logs them, i.e. whether the input pipeline keeps up.
#   largest  `tools/largest_batch.py`: the largest global batch of LARGEST_CONFIG whose step
#            fits one device with the tiled loss (loss.chunk_size=1024) and remat=full (compile
#            probes, then one real step at the answer).
#
# 0. Runs rmc_jax from this checkout (PYTHONPATH) and installs only the packages the host
#    lacks (typically grain and ml_collections); makes sure JAX sees the accelerator: if it
#    only sees the CPU and an NVIDIA GPU (or a TPU) is present, installs the jax build for it
#    at the installed jax version (JAX_EXTRA=cuda12 by default; cuda13 for CUDA 13 drivers;
#    tpu). Offline hosts: WHEELS=DIR installs from a folder of wheels and never from an index:
#    the missing packages go, with every wheel of DIR and without resolving dependencies,
#    into $OUT/site (on PYTHONPATH), e.g. for Python 3.12 a DIR made elsewhere by `pip
#    download --only-binary=:all: --no-deps --python-version 3.12 --platform
#    manylinux2014_x86_64 -d DIR grain ml_collections array_record portpicker`.
#
# Environment: PYTHON (python3), OUT (device_check_out), PARTS, BENCH_ONLY ("B/16"),
# B16_BATCH (256), TEXT_LEN (64), BATCH (256: base-config rows), ROUNDS (3), STEPS (5),
# MATMUL_SIZE, BENCH_PARALLEL (1: the rows compile at once; 0: one after another),
# TRAIN_CONFIG (configs/b16.py:roi), TRAIN_BATCH (256), TRAIN_SECONDS (240), TRAIN_STEPS
# (100000: the time limit ends the run), WORKERS (-1: data.workers sized from the host's
# cores, pipeline.auto_workers; the number used is read back from the log), LARGEST_CONFIG
# (configs/b16.py:roi), LARGEST_ARGS (more tools/largest_batch.py options, e.g.
# "--memory_gb 0.1 --start 4"), LARGEST_VERIFY (1: one real step at the answer),
# BENCHMARKS_MD (BENCHMARKS.md; empty: do not write it), DEADLINE (seconds for the whole
# script; unset: none), CACHE ($OUT: where the JAX compilation and XLA autotuning caches
# go), ALLOW_CPU=1 (run on the CPU too: for testing this script).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-device_check_out}"
PARTS="${PARTS:-bench train largest}"
BENCH_ONLY="${BENCH_ONLY:-B/16}"
B16_BATCH="${B16_BATCH:-256}"
TEXT_LEN="${TEXT_LEN:-64}"
BATCH="${BATCH:-256}"
ROUNDS="${ROUNDS:-3}"
STEPS="${STEPS:-5}"
TRAIN_CONFIG="${TRAIN_CONFIG:-configs/b16.py:roi}"
TRAIN_BATCH="${TRAIN_BATCH:-256}"
TRAIN_SECONDS="${TRAIN_SECONDS:-240}"
TRAIN_STEPS="${TRAIN_STEPS:-100000}"
WORKERS="${WORKERS:--1}"
LARGEST_CONFIG="${LARGEST_CONFIG:-configs/b16.py:roi}"
BENCHMARKS_MD="${BENCHMARKS_MD-BENCHMARKS.md}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# Several benchmark workers share one device: allocate on demand, not 75% each up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# Compiled programs persist across the parts and across reruns of this script.
CACHE="${CACHE:-$OUT}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$CACHE/jax_cache}"

has_part() { [[ " $PARTS " == *" $1 "* ]]; }
# bounded SECONDS COMMAND...: COMMAND under `timeout` (its whole process group) when SECONDS
# > 0, else as it is.
bounded() {
  local seconds="$1"; shift
  if (( seconds > 0 )); then timeout -s TERM -k 20 "$seconds" "$@"; else "$@"; fi
}
# $OUT/report.md (and BENCHMARKS.md): rewritten after each part with what has finished.
report() {
  "$PYTHON" tools/device_report.py "$OUT" --benchmarks "$BENCHMARKS_MD" \
    --command "PARTS=\"$PARTS\" bash experiments/device_check.sh" || true
}
backend() { "$PYTHON" -c 'import jax; print(jax.default_backend())' 2>/dev/null || echo none; }

pip_install() {
  if [ -n "${WHEELS:-}" ]; then
    "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" "$@"
  else
    "$PYTHON" -m pip install -q "$@"
  fi
}

# 0. JAX on the accelerator ------------------------------------------------------------------
# rmc_jax runs from this checkout; only the packages it needs that the host lacks are
# installed (an accelerator image usually has jax, flax, optax, orbax and transformers; grain
# and ml_collections are what it tends to miss).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
missing="$("$PYTHON" - <<'PY'
import importlib.util
needed = {"grain": "grain", "ml_collections": "ml_collections", "flax": "flax", "optax": "optax",
          "orbax": "orbax-checkpoint", "tokenizers": "tokenizers", "absl": "absl-py",
          "PIL": "pillow", "matplotlib": "matplotlib", "scipy": "scipy",
          "safetensors": "safetensors"}
print(" ".join(package for module, package in needed.items()
               if importlib.util.find_spec(module) is None))
PY
)"
if [ -n "$missing" ] && [ -n "${WHEELS:-}" ]; then
  echo "device_check: $missing missing; installing the wheels of $WHEELS into $OUT/site"
  "$PYTHON" -m pip install -q --no-index --no-deps --upgrade --target "$OUT/site" \
    "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:$OUT/site"
elif [ -n "$missing" ]; then
  echo "device_check: installing $missing"
  # shellcheck disable=SC2086  # a list of package names
  pip_install $missing || echo "device_check: could not install $missing" >&2
fi
if ! "$PYTHON" -c 'import rmc_jax.train' 2> "$OUT/import_error.txt"; then
  tail -n 5 "$OUT/import_error.txt" >&2
  echo "device_check: rmc_jax does not import here (pass WHEELS=DIR for what is missing)" >&2
  exit 3
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
# XLA's GPU autotuning results, shared by every process of the run (roi and global share most
# kernels); only where this XLA knows the flag (an unknown flag aborts every process).
if [ "$platform" = gpu ] && [[ "${XLA_FLAGS:-}" != *autotune_cache_dir* ]]; then
  flag="--xla_gpu_per_fusion_autotune_cache_dir=$CACHE/autotune_cache"
  if XLA_FLAGS="${XLA_FLAGS:-} $flag" "$PYTHON" -c \
      'import jax; jax.numpy.zeros(1).block_until_ready()' >/dev/null 2>&1; then
    export XLA_FLAGS="${XLA_FLAGS:-} $flag"
  fi
fi
"$PYTHON" - <<'PY' | tee "$OUT/devices.txt"
import jax
print(f"jax {jax.__version__}, backend {jax.default_backend()}: "
      + ", ".join(sorted({d.device_kind for d in jax.devices()})) + f" x {jax.device_count()}")
PY

# 1. Train-step benchmark on a fixed batch ---------------------------------------------------
if has_part bench && [ -n "${DEADLINE:-}" ] && (( DEADLINE - SECONDS < 60 )); then
  echo "device_check: bench not run, $(( DEADLINE - SECONDS )) s left of DEADLINE=$DEADLINE" >&2
elif has_part bench; then
  bench_args=(--groups accelerator --rounds "$ROUNDS" --steps "$STEPS"
              --accelerator_batch "$BATCH" --b16_batch "$B16_BATCH" --b16_text_len "$TEXT_LEN"
              --output "$OUT/bench.json")
  if [ -n "$BENCH_ONLY" ]; then bench_args+=(--only "$BENCH_ONLY"); fi
  if [ -n "${MATMUL_SIZE:-}" ]; then bench_args+=(--matmul_size "$MATMUL_SIZE"); fi
  if [ "${BENCH_PARALLEL:-1}" = 1 ]; then bench_args+=(--parallel_build); fi
  # Progress (contestants ready, compile seconds, each round's rates) also goes to bench.log,
  # so a bench cut short by DEADLINE leaves its figures so far.
  status=0
  bounded "$(( ${DEADLINE:-0} ? DEADLINE - SECONDS - 10 : 0 ))" \
    "$PYTHON" tools/bench.py "${bench_args[@]}" 2> >(tee "$OUT/bench.log" >&2) |
    tee "$OUT/bench.md" || status=$?
  if [ "$status" != 0 ]; then
    echo "device_check: the bench stopped (exit $status; 124: DEADLINE); see $OUT/bench.log" >&2
    rm -f "$OUT/bench.md"
  fi
  report
fi

# 2. The trainer end to end, input pipeline included ---------------------------------------
train_seconds="$TRAIN_SECONDS"
if [ -n "${DEADLINE:-}" ] && (( DEADLINE - SECONDS - 40 < train_seconds )); then
  # The trainer gets what is left, less time for its SIGTERM checkpoint and the report.
  train_seconds=$(( DEADLINE - SECONDS - 40 ))
fi
if has_part train && (( train_seconds < 30 )); then
  echo "trainer: not run, ${train_seconds} s left of DEADLINE=${DEADLINE:-}" |
    tee "$OUT/train_summary.txt"
  report
elif has_part train; then
  rm -rf "$OUT/train"
  status=0
  timeout -s TERM -k 30 "$train_seconds" "$PYTHON" -m rmc_jax.main \
    --config="$TRAIN_CONFIG,batch=$TRAIN_BATCH" --workdir="$OUT/train" \
    --config.data.max_text_len="$TEXT_LEN" \
    --config.total_steps="$TRAIN_STEPS" --config.log_every=10 --config.checkpoint_every=100000 \
    --config.evals.enabled=False --config.progress_bar=off --config.data.workers="$WORKERS" \
    --config.model.vision.dtype=bfloat16 --config.model.text.dtype=bfloat16 \
    > "$OUT/train.log" 2>&1 || status=$?
  # 124: stopped by the timeout (the trainer saves a checkpoint on SIGTERM and exits); 137:
  # killed 30 s after that SIGTERM (its exit outlasted the grace), which leaves its logged
  # windows as they are: measured, with a warning.
  if [ "$status" = 137 ] && [ -s "$OUT/train/metrics.jsonl" ]; then
    echo "device_check: the trainer did not exit within 30 s of its SIGTERM and was killed;" \
         "its logged windows are used" >&2
  elif [ "$status" != 0 ] && [ "$status" != 124 ] && [ "$status" != 143 ]; then
    tail -n 30 "$OUT/train.log" >&2
    echo "device_check: the training run failed (exit $status); log in $OUT/train.log" >&2
    exit "$status"
  fi
  used="$(grep -o 'input workers: [0-9]*' "$OUT/train.log" | head -n 1 | grep -o '[0-9]*$' ||
          echo "$WORKERS")"
  run="\`$TRAIN_CONFIG\` batch $TRAIN_BATCH, $TEXT_LEN report tokens, $used input workers"
  # No logged window yet (TRAIN_SECONDS spent compiling): say so, and go on.
  if ! "$PYTHON" tools/run_summary.py "$OUT/train/metrics.jsonl" > "$OUT/train_summary.raw"; then
    echo "trainer: no throughput logged within $train_seconds s" > "$OUT/train_summary.raw"
  fi
  sed "s|^trainer: |trainer, $run: |" "$OUT/train_summary.raw" | tee "$OUT/train_summary.txt"
  report
fi

# 3. The largest batch that fits one device -------------------------------------------------
if has_part largest && [ -n "${DEADLINE:-}" ] && (( DEADLINE - SECONDS < 120 )); then
  echo "largest batch: not searched, $(( DEADLINE - SECONDS )) s left of DEADLINE=$DEADLINE" |
    tee "$OUT/largest_batch.md"
  report
elif has_part largest; then
  # shellcheck disable=SC2086  # LARGEST_ARGS is a list of options
  verify=(); if [ "${LARGEST_VERIFY:-1}" = 1 ]; then verify=(--verify); fi
  "$PYTHON" tools/largest_batch.py --config "$LARGEST_CONFIG" --text_len "$TEXT_LEN" \
    ${verify[@]+"${verify[@]}"} \
    --output "$OUT/largest_batch.json" ${LARGEST_ARGS:-} | tee "$OUT/largest_batch.md"
  report
fi
