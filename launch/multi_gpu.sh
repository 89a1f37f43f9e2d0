#!/usr/bin/env bash
# Runs one Feldman-Zhang estimate on ALL GPUs of this host, in ONE process.
#
# Usage:
#   launch/multi_gpu.sh CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   CUDA_VISIBLE_DEVICES=0,1,2,3 launch/multi_gpu.sh configs/mnist_mlp.py runs/mnist
#
# No per-GPU processes (and no --distributed) are needed: the one process
# splits the model axis over every local device with shard_map, training
# models_per_device models on each GPU per call (so models_per_device x #GPUs
# per call in all). Extra arguments go to `python -m feldman_zhang.main`;
# running the same command again resumes a killed run.
#
# Environment (defaults in brackets):
#   PYTHON                           interpreter [python3]
#   CUDA_VISIBLE_DEVICES             the GPUs to use [unset: all of them]
#   JAX_PLATFORMS                    [cuda]: fail instead of silently using CPU
#   XLA_PYTHON_CLIENT_PREALLOCATE    [true]: the process owns its GPUs, so JAX
#   XLA_PYTHON_CLIENT_MEM_FRACTION   [0.90]  reserves most of their memory
#   DETERMINISTIC                    [1]: add --xla_gpu_deterministic_ops=true to
#                                    XLA_FLAGS for bit-reproducible results; 0 to skip
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
  exit 2
fi
config=$1 workdir=$2
shift 2

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}"
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-true}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
if [[ "${DETERMINISTIC:-1}" == 1 ]]; then
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_deterministic_ops=true"
fi

python=${PYTHON:-python3}
# JAX's own error for a missing CUDA backend is a bare AssertionError.
if ! "$python" -c 'import jax; jax.devices()' 2>/dev/null; then
  echo "error: JAX finds no '$JAX_PLATFORMS' devices: install jax for CUDA" \
    "(pip install -e '.[cuda12]') or set JAX_PLATFORMS" >&2
  exit 1
fi
exec "$python" -m feldman_zhang.main --config="$config" \
  --workdir="$workdir" "$@"
