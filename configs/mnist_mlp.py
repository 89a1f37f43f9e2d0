"""The reference MNIST setup of Feldman & Zhang's demo.

784-512-256-10 ReLU MLP, SGD with momentum 0.9, peak lr 0.1, batch 128,
10 epochs, 70% subsets; t = 2000 models as in the demo. What differs from
the demo (stax): the lr decays (cosine) instead of staying at 0.1, which
lifts the models' mean test accuracy from 97.8% to 98.1% (BENCHMARKS.md;
--config.train.schedule=constant restores it); Flax's lecun_normal kernel
init instead of stax's glorot_normal (--config.model.kernel_init=
glorot_normal restores it) and zero biases instead of N(0, 0.01); on GPUs
and TPUs bf16 compute and a bf16 momentum buffer (train.compute_dtype and
train.momentum_dtype = float32 restore f32). The offline copy of MNIST:
  --config.data.source=idx:../shared/datasets/mnist
"""

from feldman_zhang import config as config_lib


def get_config():
  c = config_lib.base()
  c.data.source = 'tfds:mnist'
  c.num_models = 2000
  c.models_per_device = 1000  # the K sweep: BENCHMARKS.md
  c.cpu_models_per_device = 8  # on the CPU, 16% faster a model than K = 1
  c.model.hidden = (512, 256)
  c.train.update(epochs=10, batch_size=128, lr=0.1, momentum=0.9,
                 schedule='cosine')
  # estimate.infl=auto: 60,000 x 10,000 float32 would be a 2.4 GB file, so
  # the top-10 and pair form; the reference job of BENCHMARKS.md adds
  # --config.estimate.infl=True (launch/bench_gpu.sh).
  return c
