#!/usr/bin/env bash
# Train on GPUs. One host: a single process drives all local GPUs (batch sharded over them).
# Several hosts: run this script on each with NODE_RANK=0..NUM_NODES-1 and the same
# COORDINATOR (host:port of node 0); under SLURM, jax.distributed finds them by itself.
#
#   WORKDIR=/scratch/rmc/roi DATA=mimic_cxr DATA_ROOT=/data/mimic-cxr-jpg bash experiments/launch_gpus.sh
set -euo pipefail
: "${WORKDIR:?where checkpoints and metrics go (shared between hosts)}"
VARIANT="${VARIANT:-roi}"
DATA="${DATA:-synthetic}"
DATA_ROOT="${DATA_ROOT:-}"
BATCH="${BATCH:-256}"
NUM_NODES="${NUM_NODES:-1}"

args=(--config="configs/base.py:${VARIANT},batch=${BATCH}"
      --config.data.train="${DATA}" --config.data.root="${DATA_ROOT}"
      --config.data.workers=8
      --config.model.vision.dtype=bfloat16 --config.model.text.dtype=bfloat16
      --workdir="${WORKDIR}")
if [ "$NUM_NODES" -gt 1 ] && [ -z "${SLURM_NTASKS:-}" ]; then
  : "${COORDINATOR:?host:port of node 0}" "${NODE_RANK:?this node's index}"
  args+=(--coordinator_address="$COORDINATOR" --num_processes="$NUM_NODES" --process_id="$NODE_RANK")
fi
pip install -q -e . "jax[${JAX_EXTRA:-cuda12}]"  # JAX_EXTRA=cuda13 for CUDA 13 drivers
python -m rmc_jax.main "${args[@]}"
