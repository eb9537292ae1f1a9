#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: configs/b16.py (ViT-B/16 + BERT-base, BiomedCLIP's shapes)
# by default. The same command runs on every host of the slice; jax.distributed.initialize()
# discovers the other hosts by itself on TPU VMs. BATCH is the global batch.
#
#   TPU=my-v4-32 ZONE=us-central2-b WORKDIR=gs://my-bucket/rmc/roi-v4-32 \
#   DATA=mimic_cxr DATA_ROOT=/mnt/disks/mimic bash experiments/launch_tpu_pod.sh
#
# INIT=open_clip:/mnt/disks/BiomedCLIP starts both towers from BiomedCLIP (a copy on every
# host); CONFIG=configs/base.py VARIANT=... runs the small base model instead.
set -euo pipefail
: "${TPU:?name of the TPU VM (pod slice)}" "${ZONE:?its zone}"
: "${WORKDIR:?shared workdir (e.g. gs://...)}"
CONFIG="${CONFIG:-configs/b16.py}"
VARIANT="${VARIANT:-roi}"
DATA="${DATA:-synthetic}"
DATA_ROOT="${DATA_ROOT:-}"
BATCH="${BATCH:-2048}"
INIT="${INIT:-}"
init=""
if [ -n "$INIT" ]; then
  init="--config.init.image='${INIT}' --config.init.text='${INIT}'"
fi

gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  cd ~/rmc_jax && pip install -q -e . 'jax[tpu]' &&
  python -m rmc_jax.main --config=${CONFIG}:${VARIANT},batch=${BATCH} \
    --config.data.train=${DATA} --config.data.root='${DATA_ROOT}' ${init} \
    --config.model.vision.dtype=bfloat16 --config.model.text.dtype=bfloat16 \
    --config.loss.backend=ring --workdir='${WORKDIR}'"
