"""A planted long-tail data set with known memorized examples and pairs.

Digits, plus `num_planted` rare training images: random binary patterns, each
with an arbitrary label, and one near-duplicate of each in the test set (every
pixel jittered by up to `noise` levels) with the same label. Only a model that trained on a
planted image can get its twin right, so the estimator should give planted
images high mem and rank the (planted, twin) pairs at the top of infl.
"""

import numpy as np

from conftest import make_tiny_config
from feldman_zhang import data


def config(path):
  """The tests' tiny config on the planted data at `path`, raised so that the
  plants come out on top: enough models that chance influence among the 650k
  digit pairs stays below the planted pairs', and enough capacity to fit
  every plant."""
  c = make_tiny_config()
  c.data.source = f'npz:{path}'
  c.num_models = 96
  c.models_per_device = 32
  c.model.hidden = (128,)
  c.train.epochs = 25
  return c


def make(path, num_planted=12, seed=0, noise=25):
  """Writes the npz to `path`; returns (train ids, test ids) of the plants."""
  rng = np.random.default_rng(seed)
  base = data.load('digits')
  shape = base.x_train.shape[1:]
  patterns = (rng.random((num_planted, *shape)) < 0.3).astype(np.uint8) * 255
  labels = rng.integers(0, base.num_classes, num_planted).astype(np.int32)
  jitter = rng.integers(-noise, noise + 1, patterns.shape)
  twins = np.clip(patterns.astype(int) + jitter, 0, 255).astype(np.uint8)
  np.savez(path,
           x_train=np.concatenate([base.x_train, patterns]),
           y_train=np.concatenate([base.y_train, labels]),
           x_test=np.concatenate([base.x_test, twins]),
           y_test=np.concatenate([base.y_test, labels]),
           num_classes=np.int64(base.num_classes))
  return (base.num_train + np.arange(num_planted),
          base.num_test + np.arange(num_planted))
