r"""Test accuracy of one model trained on the whole training set (m = n).

  python tools/full_data_accuracy.py CONFIG_FILE SOURCE [EPOCHS]
  python tools/full_data_accuracy.py configs/cifar10_airbench.py \
      npz:.data/cifar10_lossless.npz

The estimate job needs subsets that hold some but not all examples; a
recipe's published accuracy is for a model trained on all of them. This
runs the job's own chunk program (train.make_chunk_fn: the same trainer,
evaluation and TTA) on one model whose subset is every index, with the
job's model-0 key, and prints its accuracies as JSON. A measurement, not a
test: an hour and more for CIFAR-10 on a 2-core CPU.
"""

import json
import sys
import time

import numpy as np

from feldman_zhang import config as config_lib
from feldman_zhang import optimizer
from feldman_zhang import prepare as prepare_lib
from feldman_zhang import train


def main(config_file, source, epochs=None):
  c = config_lib.from_file(config_file)
  c.data.source = source
  if epochs is not None:
    c.train.epochs = float(epochs)
  job = prepare_lib.prepare(c)
  c, ds, _, model = job.config, job.ds, job.m, job.model
  n = ds.num_train
  fn = train.make_chunk_fn(model, c, n)
  keys = train.model_keys(c.seed, np.arange(1))
  idx = np.arange(n, dtype=np.int32)[None]
  begin = time.time()
  out = fn(keys, idx, ds.x_train, ds.y_train, ds.x_test, ds.y_test)
  out = {k: np.asarray(v)[0] for k, v in out.items()}
  print(json.dumps(dict(
      config=config_file, source=source, n=n, epochs=c.train.epochs,
      steps=optimizer.step_counts(n, c.train)[1],
      test_acc=float(out['test_correct'].mean()),
      train_acc=float(out['train_correct'].mean()),
      epoch_losses=[round(float(x), 4) for x in out['loss']],
      seconds=round(time.time() - begin, 1)), indent=1))


if __name__ == '__main__':
  main(*sys.argv[1:])
