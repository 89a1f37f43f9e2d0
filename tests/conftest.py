import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(ROOT, '..', 'shared', 'datasets', 'mnist')


def make_tiny_config():
  """digits, a small MLP, few models: a full run in seconds."""
  from feldman_zhang import config as config_lib
  c = config_lib.base()
  c.num_models = 12
  c.models_per_device = 5
  c.model.hidden = (32,)
  c.train.epochs = 8
  c.train.batch_size = 64
  c.train.lr = 0.05
  c.summary.top_pairs = 3
  # Concrete dtypes, as config.resolve makes them on the CPU: tests build
  # trainers from this config directly, and the trainer takes resolved
  # configs only. auto is tested where it is meant (test_precision, and
  # every run of a config file).
  c.train.update(compute_dtype='float32', momentum_dtype='float32',
                 param_storage='float32')
  return c


@pytest.fixture
def tiny_config():
  return make_tiny_config()
