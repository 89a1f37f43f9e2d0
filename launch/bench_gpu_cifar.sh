#!/usr/bin/env bash
# CIFAR-10 with the airbench recipe on one GPU (issue 14), in one command:
#   launch/bench_gpu_cifar.sh [CIFAR10_NPZ] OUT_DIR [BUDGET_S] [NUM_MODELS]
# CIFAR10_NPZ (a first argument ending in .npz): CIFAR-10 as an npz, by
# default the decoded lossless copy .data/cifar10_lossless.npz of the
# repository (python ../shared/datasets/cifar10_lossless/to_npz.py
# .data/cifar10_lossless.npz; the GPU host does not see ../shared, and at
# 176 MiB the copy travels to a lent device machine in parts:
# launch/carry_parts.sh, and BENCHMARKS.md for the calls). Measures, on
# that copy:
# 0. XLA's FLOP count of one model's job, airbench against ResNet-9;
# 1. how K models share the device: lax.map against vmap, one call each of
#    K = 8 models (train wall time per model from the phases);
# 2. the job as shipped (configs/cifar10_airbench.py, map, K = 8) with
#    NUM_MODELS models (default 64): models per GPU-hour from its train
#    phase, and their mean test accuracy (TTA) against the 92.5% goal.
# Needs the ml_collections wheel on PYTHONPATH where the image lacks it:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
npz=$repo/.data/cifar10_lossless.npz
if [[ ${1:-} == *.npz ]]; then
  npz=$(from_caller "$1")
  shift
fi
need_args 1 $#
out=$(from_caller "$1") budget=${2:-540} models=${3:-64}
if [[ ! -f $npz ]]; then
  echo "error: $npz does not exist; make it with python" \
    "../shared/datasets/cifar10_lossless/to_npz.py $npz (on a device" \
    "machine: launch/carry_parts.sh join .data/parts" \
    "$(basename "$npz") $npz)" >&2
  exit 2
fi
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv \
  | tee -a "$out/steps.log"

step flops 60 "$python" -m feldman_zhang.bench \
  --flops=configs/cifar10_airbench.py,configs/cifar10_resnet.py \
  --out="$out/flops.json"
job=(-m feldman_zhang.main --config=configs/cifar10_airbench.py
     "--config.data.source=npz:$npz" --config.estimate.infl=False
     --compilation_cache="$out/xla_cache")
for v in map vmap; do
  step "pack_$v" 150 "$python" "${job[@]}" --config.vectorize=$v \
    --config.num_models=8 --config.models_per_device=8 \
    --workdir="$out/pack_$v"
done
step job 400 "$python" "${job[@]}" --config.num_models="$models" \
  --workdir="$out/job"
for run in pack_map pack_vmap job; do
  [[ -f "$out/$run/summary.json" ]] && "$python" - "$out/$run" <<'PY' \
    | tee -a "$out/steps.log"
import json, sys
s = json.load(open(sys.argv[1] + '/summary.json'))
train_s = s['timing']['phases']['train']
t = s['num_models']
print(f"{sys.argv[1].rsplit('/', 1)[-1]}: {t} models, train {train_s:.1f} s "
      f"({train_s / t:.2f} s/model, {3600 * t / train_s:.0f} models per "
      f"GPU-hour), mean test accuracy {s['model_test_acc_mean']:.4f} "
      f"(sd {s['model_test_acc_sd']:.4f}), phases "
      f"{ {k: round(v, 1) for k, v in s['timing']['phases'].items()} }")
PY
done
