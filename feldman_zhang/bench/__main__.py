r"""The benchmark harness's command line (the library: harness.py).

  python -m feldman_zhang.bench --config=configs/mnist_mlp.py \
      --config.data.source=idx:../shared/datasets/mnist --num_models=2000
  python -m feldman_zhang.bench --estimate_only=4000,50000,10000
  python -m feldman_zhang.bench --flops=configs/cifar10_airbench.py,configs/cifar10_resnet.py
"""

import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from feldman_zhang.bench import harness

FLAGS = flags.FLAGS


def define_flags():
  """The harness's flags, defined by its command line only: the library
  (harness) imports beside feldman_zhang.main in one process."""
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.')
  flags.DEFINE_integer('num_models', 0, 'Models the figures are for; 0: one '
                       'call of models_per_device on every device.')
  flags.DEFINE_integer('sample_models', 2, 'Models timed in the single arm.')
  flags.DEFINE_integer('sample_steps', 50, 'Steps timed in the steploop arm.')
  flags.DEFINE_list('arms', ['vmap', 'single', 'steploop'], 'Arms to run.')
  flags.DEFINE_string('out', 'bench.json', 'Where the JSON goes.')
  flags.DEFINE_list('estimate_only', [], 'T,N,N_TEST: time only the estimate '
                    'step on random predictions of that size (no --config).')
  flags.DEFINE_list('flops', [], 'Config files: print XLA\'s FLOP count of one '
                    'model\'s whole job for each (training on its subset, '
                    'evaluation of every image with the config\'s TTA), no '
                    'timing.')
  flags.DEFINE_string('flops_data', 'random:32x32x3:10:50000:10000', '... on '
                      'data of this source (FLOPs depend on its shapes only).')


def main(argv):
  del argv
  if FLAGS.flops:
    rows = harness.flops_table(FLAGS.flops, FLAGS.flops_data)
    with open(FLAGS.out, 'w') as f:
      json.dump(rows, f, indent=2)
    return
  if FLAGS.estimate_only:
    t, n, n_test = (int(v) for v in FLAGS.estimate_only)
    result = harness.time_estimate(t, n, n_test)
    print(f'estimate step, t={t} n={n} n_test={n_test} on {result["device"]}: '
          f'{result["seconds"]:.2f} s (first call {result["first_call_s"]:.2f} '
          's, with compilation)')
    with open(FLAGS.out, 'w') as f:
      json.dump(result, f, indent=2)
    return
  if FLAGS.config is None:
    sys.exit('error: --config is required (or --estimate_only=T,N,N_TEST)')
  result = harness.run(FLAGS.config, FLAGS.num_models, FLAGS.arms,
                       FLAGS.sample_models, FLAGS.sample_steps)
  print(harness.table(result))
  with open(FLAGS.out, 'w') as f:
    json.dump(result, f, indent=2, default=str)


if __name__ == '__main__':
  define_flags()
  app.run(main)
