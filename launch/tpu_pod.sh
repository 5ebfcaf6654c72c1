#!/usr/bin/env bash
# Runs training on every worker of a Cloud TPU pod slice (one process per host; JAX reads
# the topology from the TPU environment, so distributed.auto=True is all it needs).
#
#   launch/tpu_pod.sh TPU_NAME ZONE [valle-jax train flags...]
#   launch/tpu_pod.sh my-v4-64 us-central2-b --config=configs/paper.py \
#       --config.data.dataset=gs://bucket/valle_librilight/1.0.0 --workdir=gs://bucket/runs/p1
#
# The repo must be checked out at the same path (REPO_DIR, default ~/valle-jax) on every
# worker, and the dataset and workdir on storage every worker reads (GCS).
set -euo pipefail
tpu=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE [train flags...]}
zone=${2:?usage: launch/tpu_pod.sh TPU_NAME ZONE [train flags...]}
shift 2
repo=${REPO_DIR:-\~/valle-jax}
flags=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd $repo && (bash scripts/install.sh >/tmp/valle_install.log 2>&1 || { tail -20 /tmp/valle_install.log; exit 1; }) &&
  pip install -q 'jax[tpu]' &&
  valle-jax train --config.distributed.auto=True$flags"
