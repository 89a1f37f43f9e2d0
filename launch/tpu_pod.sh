#!/usr/bin/env bash
# Runs one Feldman-Zhang estimate on every worker (host) of a Cloud TPU VM pod
# slice: copies this checkout to each worker, installs it with the [tpu]
# extra into a venv there, and starts the CLI with --distributed on all
# workers at once (JAX auto-detects the pod: coordinator, process count, rank).
#
# Usage (on your machine, with gcloud set up):
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh \
#       configs/mnist_mlp.py /mnt/shared/runs/mnist --config.num_models=20000
#
# WORKDIR must be ONE directory that every worker sees, e.g. a gcsfuse mount
# of a bucket or a Filestore/NFS mount, at the same path on each: every worker
# writes its own models there and worker 0 reads them all to write
# WORKDIR/estimates.npz and summary.json. A worker-local path fails at the end
# (worker 0 finds models missing), and so does one under ~/feldman_zhang,
# which each run replaces. Running the same command again (e.g. after a
# preemption or a dropped ssh) resumes: stored models are not retrained.
# CONFIG is a file of this checkout; idx:/npz: data paths must exist on every
# worker.
#
# Environment: TPU_NAME, ZONE (required); PROJECT (gcloud's default if unset);
# PYTHON on the workers [python3]; it must be Python >= 3.11 (older TPU VM
# images ship 3.10: install python3.11 there first).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
if [[ $# -lt 2 ]]; then
  echo "usage: TPU_NAME=.. ZONE=.. $0 CONFIG WORKDIR [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
if [[ $2 != /* ]]; then
  echo "error: WORKDIR must be an absolute path on the workers' shared filesystem" >&2
  exit 2
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The workers run from their copy of this checkout: the config must be a file
# of it, named relative to its root.
config=$(realpath --relative-to="$repo" -- "$1")
if [[ $config == ../* || ! -f $repo/$config ]]; then
  echo "error: CONFIG $1 is not a file of this checkout ($repo)" >&2
  exit 2
fi
gcloud_args=(--zone="$ZONE" ${PROJECT:+--project="$PROJECT"} --worker=all)

# The same code on every worker: this checkout, without runs or build output.
tarball=$(mktemp -t feldman_zhang.XXXXXX.tgz)
trap 'rm -f "$tarball"' EXIT
tar czf "$tarball" -C "$repo" --exclude=.git --exclude=runs --exclude='.venv' \
  --exclude='*.egg-info' --exclude=__pycache__ .
gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME":feldman_zhang.tgz "${gcloud_args[@]}"

# Everything after CONFIG and WORKDIR, quoted for the remote shell.
args=$(printf ' %q' --config="$config" --workdir="$2" "${@:3}")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --command="
  set -euo pipefail
  rm -rf ~/feldman_zhang && mkdir ~/feldman_zhang && cd ~/feldman_zhang
  tar xzf ~/feldman_zhang.tgz
  py=${PYTHON:-python3}
  # A venv made by an earlier try with an older Python is made again.
  ~/fz-venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11)' \
    2>/dev/null || { rm -rf ~/fz-venv; \$py -m venv ~/fz-venv; }
  ~/fz-venv/bin/pip install -q -e '.[tpu]'
  ~/fz-venv/bin/python -m feldman_zhang.main --distributed $args"
