#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command runs on every host of the slice.
# jax.distributed.initialize() discovers the other hosts by itself on TPU VMs.
#
#   TPU=my-v4-32 ZONE=us-central2-b WORKDIR=gs://my-bucket/rmc/roi-v4-32 \
#   DATA_ROOT=/mnt/disks/mimic bash experiments/launch_tpu_pod.sh
set -euo pipefail
: "${TPU:?name of the TPU VM (pod slice)}" "${ZONE:?its zone}" "${WORKDIR:?shared workdir (e.g. gs://...)}"
VARIANT="${VARIANT:-roi}"
DATA="${DATA:-synthetic}"
DATA_ROOT="${DATA_ROOT:-}"
BATCH="${BATCH:-1024}"

gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  cd ~/rmc_jax && pip install -q -e . 'jax[tpu]' &&
  python -m rmc_jax.main --config=configs/base.py:${VARIANT},batch=${BATCH} \
    --config.data.train=${DATA} --config.data.root='${DATA_ROOT}' \
    --config.model.vision.dtype=bfloat16 --config.model.text.dtype=bfloat16 \
    --config.loss.backend=ring --workdir='${WORKDIR}'"
