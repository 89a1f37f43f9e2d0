"""CIFAR-100 with ResNet-9: the data set of the paper's headline estimates.

The CIFAR-10 recipe (cifar10_resnet.py) with 100 classes; m = 0.7n,
t = 4000.
"""

from feldman_zhang import config as config_lib


def get_config():
  c = config_lib.sibling(__file__, 'cifar10_resnet')
  c.data.source = 'tfds:cifar100'
  return c
