#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md (issue 5) in one command.
#
# Usage:
#   launch/bench_gpu.sh MNIST_DIR OUT_DIR [BUDGET_S]
#   launch/bench_gpu.sh .data/mnist $OUT      # on the device tool's machine
#
# MNIST_DIR holds the four MNIST IDX files (gzip or not). Writes one JSON per
# measurement and a log per step to OUT_DIR, most important first:
#   1. training-step layouts (gather / shared batch / lax.map) of the MNIST
#      MLP at several models per device K; the best K is used below;
#   2. the MNIST reference job end to end (2,000 MLPs, evaluation on all
#      70,000 images, estimates), wall time;
#   3. the estimate step alone at CIFAR-100 scale (t=4000, n=50000, n_test=10000);
#   4. the harness on the MNIST config: vmap vs one model at a time vs the
#      per-step Python loop, achieved TFLOP/s and parameter bandwidth;
#   5. conv layouts (grouped-conv vmap vs lax.map) for the MNIST CNN and the
#      CIFAR-10 ResNet-9, and the ResNet-9 config on random CIFAR-shaped data.
# Each step has its own time limit, so one slow step costs only itself, and
# steps that would start past BUDGET_S (default 540) seconds are skipped.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
need_args 2 $#
mnist=$(from_caller "$1") out=$(from_caller "$2") budget=${3:-540}
mkdir -p "$out"
mnist_cfg=(--config=configs/mnist_mlp.py --config.data.source="idx:$mnist"
           --config.train.schedule=constant
           --config.estimate.infl=True)  # the reference job: dense infl


nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem \
  --format=csv | tee "$out/device.txt"
"$python" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax",
  flax.__version__, "optax", optax.__version__, jax.devices())' \
  | tee -a "$out/device.txt"

step layouts_mlp 90 "$python" -m feldman_zhang.bench "${mnist_cfg[@]}" \
  --step_variants=gather,shared,map --step_ks=250 --step_steps=50 \
  --out="$out/layouts_mlp.json"
step k_sweep 100 "$python" -m feldman_zhang.bench "${mnist_cfg[@]}" \
  --step_variants=gather --step_ks=125,500,1000,2000 --step_steps=50 \
  --out="$out/k_sweep.json"
k=$("$python" - "$out" <<'PY'
import json, sys
rows = []
for f in ('layouts_mlp.json', 'k_sweep.json'):
  try:
    rows += [r for r in json.load(open(f'{sys.argv[1]}/{f}'))
             if r['variant'] == 'gather' and 2000 % r['k'] == 0]
  except (OSError, ValueError):
    pass
print(min(rows, key=lambda r: r['step_s_per_model'])['k'] if rows else 250)
PY
)
echo "models per device for the job: $k" | tee -a "$out/steps.log"

step mnist_job 240 "$python" -m feldman_zhang.main "${mnist_cfg[@]}" \
  --config.models_per_device="$k" --workdir="$out/mnist_job"
rm -f "$out"/mnist_job/infl-*.npy  # 2.4 GB: not worth carrying back
rm -rf "$out/mnist_job/chunks"
step estimate 90 "$python" -m feldman_zhang.bench \
  --estimate_only=4000,50000,10000 --out="$out/bench_estimate.json"
step bench_mnist 200 "$python" -m feldman_zhang.bench "${mnist_cfg[@]}" \
  --config.models_per_device="$k" --num_models=2000 --sample_models=10 \
  --sample_steps=300 --out="$out/bench_mnist.json"
step layouts_cnn 90 "$python" -m feldman_zhang.bench \
  --config=configs/mnist_cnn.py --config.data.source="idx:$mnist" \
  --step_variants=gather,map --step_ks=100 --step_steps=50 \
  --out="$out/layouts_cnn.json"
step layouts_resnet 120 "$python" -m feldman_zhang.bench \
  --config=configs/cifar10_resnet.py \
  --config.data.source=random:32x32x3:10:50000:10000 \
  --step_variants=gather,map --step_ks=8 --step_steps=20 \
  --out="$out/layouts_resnet.json"
step bench_cifar10 200 "$python" -m feldman_zhang.bench \
  --config=configs/cifar10_resnet.py \
  --config.data.source=random:32x32x3:10:50000:10000 --config.train.epochs=2 \
  --config.train.warmup_epochs=0.5 --num_models=16 --arms=vmap --out="$out/bench_cifar10.json"
cat "$out/steps.log"
