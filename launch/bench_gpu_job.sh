#!/usr/bin/env bash
# The MNIST reference job on one GPU (issue 5), in one command:
#   launch/bench_gpu_job.sh MNIST_DIR OUT_DIR [BUDGET_S]
# 0. the estimate and store tests on the GPU (bf16 count matmuls, the
#    one-rounding mem and infl, exact on the 0.15 bar); needs pytest, e.g.
#    the wheels in .whl/ on PYTHONPATH;
# 1. step time of float32 against split parameter storage (bf16 momentum,
#    K = 1000, random data of MNIST's shape), with the byte model's GB/s;
# 2. the estimate step alone at CIFAR-100 scale (issue 5's <= 5 s target;
#    mem and infl are now one rounding of the exact count fraction);
# 3. the job end to end as shipped (split storage by train.param_storage=
#    auto; wall time on the step's line, phases in its summary), with the
#    compilation cache empty, then again with it warm;
# 4. the job end to end with float32 storage, for the same-machine
#    comparison of wall time and model accuracy;
# 5. the harness: vmap against one model at a time and the per-step loop.
# Needs the ml_collections wheel on PYTHONPATH where the image lacks it:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
need_args 2 $#
mnist=$(from_caller "$1") out=$(from_caller "$2") budget=${3:-500}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv \
  | tee -a "$out/steps.log"

step tests_on_gpu 60 "$python" -m pytest -q -p no:cacheprovider \
  tests/test_estimate.py tests/test_estimates_file.py \
  -m 'not slow and not integration'
for storage in float32 split; do
  step "step_$storage" 90 "$python" -m feldman_zhang.bench \
    --config=configs/mnist_mlp.py \
    --config.data.source=random:28x28x1:10:60000:10000 \
    --config.train.param_storage=$storage --step_variants=gather \
    --step_ks=1000 --step_steps=50 --out="$out/step_$storage.json"
done
step estimate 60 "$python" -m feldman_zhang.bench \
  --estimate_only=4000,50000,10000 --out="$out/bench_estimate.json"
job=(-m feldman_zhang.main --config=configs/mnist_mlp.py
     "--config.data.source=idx:$mnist" --config.estimate.infl=True)
step job_split_cold 120 "$python" "${job[@]}" \
  --compilation_cache="$out/xla_cache" --workdir="$out/split_cold"
step job_split_warm 120 "$python" "${job[@]}" \
  --compilation_cache="$out/xla_cache" --workdir="$out/split_warm"
cmp "$out/split_cold/estimates.npz" "$out/split_warm/estimates.npz" \
  && cmp "$out"/split_cold/infl-*.npy "$out"/split_warm/infl-*.npy \
  && echo "split cold and warm: estimates.npz and infl bit-identical" \
  | tee -a "$out/steps.log"
step job_float32 120 "$python" "${job[@]}" --compilation_cache= \
  --config.train.param_storage=float32 --workdir="$out/float32"
for run in split_cold split_warm float32; do
  [[ -f "$out/$run/summary.json" ]] && "$python" - "$out/$run" <<'PY' \
    | tee -a "$out/steps.log"
import json, sys
s = json.load(open(sys.argv[1] + '/summary.json'))
t = s['timing']
print(sys.argv[1].rsplit('/', 1)[-1], 'test acc', s.get('model_test_acc_mean'),
      'phases', {k: round(v, 2) for k, v in t['phases'].items()})
PY
done
# The workdirs hold 2.4 GB of influence each: keep the summaries only.
for run in split_cold split_warm float32; do
  [[ -d "$out/$run" ]] && cp "$out/$run/summary.json" "$out/$run.summary.json"
  rm -rf "$out/$run"
done
rm -rf "$out/xla_cache"
# Last, as the budget allows: the harness's arms again, now that the per-step
# loop compiles once and the FLOPs are XLA's count of the whole step.
step harness 150 "$python" -m feldman_zhang.bench --config=configs/mnist_mlp.py \
  "--config.data.source=idx:$mnist" --config.models_per_device=1000 \
  --num_models=2000 --sample_models=10 --sample_steps=300 \
  --out="$out/bench_harness.json"
cat "$out/steps.log"
