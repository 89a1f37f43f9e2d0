"""The reference MNIST setup of Feldman & Zhang's demo.

784-512-256-10 ReLU MLP, SGD with momentum 0.9, lr 0.1, batch 128, 10 epochs,
70% subsets; t = 2000 models as in the demo. The offline copy of MNIST:
  --config.data.source=idx:../shared/datasets/mnist
"""

from feldman_zhang import config as config_lib


def get_config():
  c = config_lib.base()
  c.data.source = 'tfds:mnist'
  c.num_models = 2000
  c.models_per_device = 250
  c.model.hidden = (512, 256)
  c.train.epochs = 10
  c.train.batch_size = 128
  c.train.lr = 0.1
  c.train.momentum = 0.9
  return c
