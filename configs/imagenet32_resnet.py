"""Down-sampled ImageNet (32x32, 1.28M images, 1000 classes) with ResNet-9.

m = 0.7n; t = 2000 (each model is ~25x a CIFAR model's cost; the paper's
ImageNet estimates use t = 2000 too). Dense influence would be n x n_test =
1.28M x 50k floats (256 GB): it is computed tile by tile on the device and
only the 10 most influential training images of each validation image, and
every pair with infl >= 0.15 whose training image has mem >= 0.25 (the
paper's pairs), are kept (estimate.infl_topk, estimate.pair_*).
"""

from feldman_zhang import config as config_lib


def get_config():
  c = config_lib.sibling(__file__, 'cifar10_resnet')
  c.data.source = 'tfds:imagenet_resized/32x32'
  c.num_models = 2000
  c.models_per_device = 4
  c.model.widths = (96, 192, 384, 768)
  c.train.update(epochs=16, warmup_epochs=2.0, batch_size=1024, lr=0.8)
  c.estimate.infl = False  # 1.28M x 50k floats = 256 GB.
  c.estimate.infl_topk = 10
  return c
