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
#   CUDA_VISIBLE_DEVICES             the GPU to use [0]; the rest as in multi_gpu.sh
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
# The same job as on all GPUs, on the one CUDA_VISIBLE_DEVICES names.
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
exec "$(dirname "${BASH_SOURCE[0]}")/multi_gpu.sh" "$@"
