#!/usr/bin/env bash
# Follow-up GPU measurements after bench_gpu.sh (issue 5), in one command:
#   launch/bench_gpu_followup.sh OUT_DIR [BUDGET_S]
# 1. bf16 against f32 momentum buffers, MNIST MLP step at K=2000 (random
#    data of MNIST's shape: only the step time matters);
# 2. the CIFAR-10 ResNet-9 config (lax.map over models) on random
#    CIFAR-shaped data, 2 epochs, for models per GPU-hour;
# 3. reproducibility on the GPU with XLA's deterministic ops: the digits job
#    twice at K=100 (must be bit-identical) and once at K=25 (float sums may
#    reorder: how many correctness entries differ).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
need_args 1 $#
out=$(from_caller "$1") budget=${2:-330}
mkdir -p "$out"
mlp=(--config=configs/mnist_mlp.py --config.data.source=random:28x28x1:10:60000:10000
     --config.train.schedule=constant --variants=gather --ks=2000 --steps=50)

for dtype in float32 bfloat16; do
  step "momentum_$dtype" 60 "$python" tools/step_layouts.py "${mlp[@]}" \
    --config.train.momentum_dtype=$dtype --out="$out/momentum_$dtype.json"
done
step bench_cifar10 150 "$python" -m feldman_zhang.bench \
  --config=configs/cifar10_resnet.py \
  --config.data.source=random:32x32x3:10:50000:10000 --config.train.epochs=2 \
  --config.train.warmup_epochs=0.5 --num_models=16 --arms=vmap \
  --out="$out/bench_cifar10.json"
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_deterministic_ops=true"
digits=(--config=configs/digits_mlp.py --config.num_models=200)
step digits_a 60 "$python" -m feldman_zhang.main "${digits[@]}" \
  --config.models_per_device=100 --workdir="$out/a"
step digits_b 60 "$python" -m feldman_zhang.main "${digits[@]}" \
  --config.models_per_device=100 --workdir="$out/b"
step digits_c 60 "$python" -m feldman_zhang.main "${digits[@]}" \
  --config.models_per_device=25 --workdir="$out/c"
step same_k 30 "$python" analysis/compare_runs.py --a="$out/a" --b="$out/b"
step other_k 30 "$python" analysis/compare_runs.py --a="$out/a" --b="$out/c"
cmp "$out/a/estimates.npz" "$out/b/estimates.npz" \
  && cmp "$out"/a/infl-*.npy "$out"/b/infl-*.npy \
  && echo "K=100 twice: estimates.npz and infl bit-identical" \
  | tee -a "$out/steps.log"
rm -rf "$out/a" "$out/b" "$out/c"
cat "$out/steps.log"
