#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md (issue 5) in one command.
#
# Usage:
#   launch/bench_gpu.sh MNIST_DIR OUT_DIR
#   launch/bench_gpu.sh .data/mnist $OUT      # on the device tool's machine
#
# MNIST_DIR holds the four MNIST IDX files (gzip or not). Writes one JSON per
# measurement and a log to OUT_DIR:
#   1. the MNIST reference job end to end (2,000 MLPs, evaluation on all
#      70,000 images, estimates), wall time;
#   2. the harness on the same config: vmap vs one model at a time vs the
#      per-step Python loop, achieved TFLOP/s and parameter bandwidth;
#   3. the estimate step alone at CIFAR-100 scale (t=4000, n=50000, n_test=10000);
#   4. the CIFAR-10 ResNet-9 config on random arrays of CIFAR's shape.
set -euo pipefail
if [[ $# -ne 2 ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
  exit 2
fi
mnist=$1 out=$2
mkdir -p "$out"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
cd "$repo"

SECONDS=0
"$python" -m feldman_zhang.main --config=configs/mnist_mlp.py \
  --config.data.source="idx:$mnist" --config.train.schedule=constant \
  --workdir="$out/mnist_job" 2>&1 | tail -n 30 | tee "$out/mnist_job.log"
echo "mnist reference job: ${SECONDS} s wall (whole seconds)" \
  | tee -a "$out/mnist_job.log"
rm -f "$out/mnist_job/estimates.npz"  # 2.4 GB: not worth carrying back

"$python" -m feldman_zhang.bench --config=configs/mnist_mlp.py \
  --config.data.source="idx:$mnist" --config.train.schedule=constant \
  --num_models=2000 --sample_models=20 --sample_steps=300 \
  --out="$out/bench_mnist.json"
"$python" -m feldman_zhang.bench --estimate_only=4000,50000,10000 \
  --out="$out/bench_estimate.json"
"$python" -m feldman_zhang.bench --config=configs/cifar10_resnet.py \
  --config.data.source=random:32x32x3:10:50000:10000 --config.train.epochs=2 \
  --num_models=16 --arms=vmap,single --sample_models=2 \
  --out="$out/bench_cifar10.json"
