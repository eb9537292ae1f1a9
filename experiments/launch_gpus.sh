#!/usr/bin/env bash
# Train on GPUs: configs/b16.py (ViT-B/16 + BERT-base, BiomedCLIP's shapes) by default. One
# host: a single process drives all local GPUs (the batch is sharded over them). Several
# hosts: one process per host with the same WORKDIR. Under SLURM, jax.distributed finds the
# other processes by itself, e.g. on 4 nodes of 8 GPUs:
#
#   sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 --wrap \
#     'WORKDIR=/scratch/rmc/roi NUM_NODES=4 DATA=mimic_cxr DATA_ROOT=/data/mimic-cxr-jpg \
#      srun bash experiments/launch_gpus.sh'
#
# Without SLURM, run it on each host with NODE_RANK=0..NUM_NODES-1 and the same COORDINATOR
# (host:port of node 0). INIT=open_clip:/models/BiomedCLIP starts both towers from BiomedCLIP
# (the config has its shapes: nothing else changes). BATCH is the global batch (default 256
# per GPU); CONFIG=configs/base.py VARIANT=... runs the small base model instead.
set -euo pipefail
: "${WORKDIR:?where checkpoints and metrics go (shared between hosts)}"
CONFIG="${CONFIG:-configs/b16.py}"
VARIANT="${VARIANT:-roi}"
DATA="${DATA:-synthetic}"
DATA_ROOT="${DATA_ROOT:-}"
NUM_NODES="${NUM_NODES:-1}"
GPUS_PER_NODE="${GPUS_PER_NODE:-$( (nvidia-smi -L 2>/dev/null || true) | wc -l)}"
BATCH="${BATCH:-$(( 256 * (GPUS_PER_NODE > 0 ? GPUS_PER_NODE : 1) * NUM_NODES ))}"
WORKERS="${WORKERS:--1}"  # -1: from the cores of each host (data.workers)
INIT="${INIT:-}"

args=(--config="${CONFIG}:${VARIANT},batch=${BATCH}"
      --config.data.train="${DATA}" --config.data.root="${DATA_ROOT}"
      --config.data.workers="${WORKERS}"
      --config.model.vision.dtype=bfloat16 --config.model.text.dtype=bfloat16
      --workdir="${WORKDIR}")
if [ -n "$INIT" ]; then
  args+=(--config.init.image="$INIT" --config.init.text="$INIT")
fi
if [ "$NUM_NODES" -gt 1 ] && [ -z "${SLURM_NTASKS:-}" ]; then
  : "${COORDINATOR:?host:port of node 0}" "${NODE_RANK:?index of this node}"
  args+=(--coordinator_address="$COORDINATOR" --num_processes="$NUM_NODES"
         --process_id="$NODE_RANK")
fi
pip install -q -e . "jax[${JAX_EXTRA:-cuda12}]"  # JAX_EXTRA=cuda13 for CUDA 13 drivers
python -m rmc_jax.main "${args[@]}"
