"""The default job: scikit-learn's digits, 1000 MLPs on 70% subsets.

Needs no network and no files: finishes in about a minute on 2 CPU cores.
A 128-64 MLP fits every training digit in 20 epochs (so it can memorize) and
reaches ~96% test accuracy on 70% subsets.
"""

from feldman_zhang import config as config_lib


def get_config():
  c = config_lib.base()
  c.data.source = 'digits'
  c.num_models = 1000
  c.models_per_device = 100
  c.model.hidden = (128, 64)
  c.train.epochs = 20
  c.train.batch_size = 64
  c.train.lr = 0.05
  return c
