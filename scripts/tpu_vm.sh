#!/usr/bin/env bash
# Create a Cloud TPU VM (a single host, or a pod slice), install this repository on every worker,
# and run one command on all of them at once. Every worker runs the same command; --distributed
# makes jax.distributed.initialize() find the slice's other hosts by itself.
#
#   scripts/tpu_vm.sh create                      # NAME, ZONE, TYPE, VERSION from the environment
#   scripts/tpu_vm.sh install
#   scripts/tpu_vm.sh run python -m research.main --distributed --config experiments/quickstart.py:size=base \
#       --workdir gs://BUCKET/runs/base
#   scripts/tpu_vm.sh delete
#
# TYPE v5litepod-8 is one host; v5litepod-32, v4-32, v5p-64 ... are pod slices (several hosts).
# A pod slice's workdir must be on a path every host sees (a gs:// bucket), not a local disk.
set -euo pipefail

NAME=${NAME:-research}
ZONE=${ZONE:-us-west4-a}
TYPE=${TYPE:-v5litepod-8}
VERSION=${VERSION:-v2-alpha-tpuv5-lite}
REPO=${REPO:-}  # this repository's git URL (needed by install)

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$1"
}

case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" --version "$VERSION"
    ;;
  install)
    : "${REPO:?set REPO to the git URL of this repository}"
    ssh_all "git clone -q $REPO research 2>/dev/null || git -C research pull -q; \
      cd research && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
    ;;
  run)
    shift
    printf -v cmd '%q ' "$@"
    # .venv/bin on PATH so "python" is the repository's; one log per worker, kept if ssh drops.
    ssh_all "cd research && PATH=\$PWD/.venv/bin:\$PATH nohup $cmd > run.log 2>&1; tail -n 5 run.log"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$NAME" --zone "$ZONE" --quiet
    ;;
  *)
    echo "usage: $0 create|install|run COMMAND...|delete" >&2
    exit 2
    ;;
esac
