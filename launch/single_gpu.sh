#!/usr/bin/env bash
# Runs one Feldman-Zhang estimate on ONE GPU of this host.
#
# Usage:
#   launch/single_gpu.sh CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   launch/single_gpu.sh configs/mnist_mlp.py runs/mnist \
#       --config.data.source=idx:../shared/datasets/mnist --config.num_models=2000
#
# Extra arguments go to `python -m feldman_zhang.main` unchanged. Running the
# same command again resumes a killed run (finished models are not retrained).
# Needs jax with CUDA (pip install -e '.[cuda12]'); the repository root is put
# on PYTHONPATH, so installing the package itself is optional.
#
# Environment (defaults in brackets):
#   PYTHON                           interpreter [python3]
#   CUDA_VISIBLE_DEVICES             the GPU to use [0]; see multi_gpu.sh for all
#   JAX_PLATFORMS                    [cuda]: fail instead of silently using CPU
#   XLA_PYTHON_CLIENT_PREALLOCATE    [true]: one process owns the GPU, so JAX
#   XLA_PYTHON_CLIENT_MEM_FRACTION   [0.90]  reserves most of its memory at start
#   DETERMINISTIC                    [1]: add --xla_gpu_deterministic_ops=true to
#                                    XLA_FLAGS, so reruns and resumes are bit for
#                                    bit identical (slightly slower); 0 to skip
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
  exit 2
fi
config=$1 workdir=$2
shift 2

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
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
