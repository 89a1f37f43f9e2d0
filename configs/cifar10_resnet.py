"""CIFAR-10 with ResNet-9 (the fast-CIFAR recipe), on-device crop and flip.

The paper's m = 0.7n; t = 4000 (the paper's CIFAR estimates use thousands:
standard errors of mem fall as 1/sqrt(t)). Recipe after Page's DAWNBench
ResNet-9 and the Datamodels setup: batch 512, 24 epochs, Nesterov SGD,
linear warm-up then decay, label smoothing 0.1, weight decay 5e-4 (Page's
5e-4 x batch on a summed loss, as our loss is a mean);
~93-94% on full CIFAR-10 in that recipe (to be measured here on a GPU: see
BENCHMARKS.md). Needs TFDS data prepared under --config.data.data_dir.
"""

from feldman_zhang import config as config_lib


def get_config():
  c = config_lib.base()
  c.data.source = 'tfds:cifar10'
  c.num_models = 4000
  c.models_per_device = 8
  # On the CPU a model takes hours: one a call, so that progress shows per
  # model (lax.map trains them one by one either way).
  c.cpu_models_per_device = 1
  # lax.map over the 8 models: plain convolutions ran faster than the
  # grouped ones vmap makes (per model-step, H100, BENCHMARKS.md).
  c.vectorize = 'map'
  c.eval_batch_size = 1000
  c.model.name = 'resnet9'
  c.model.widths = (64, 128, 256, 512)
  c.train.update(epochs=24, batch_size=512, lr=0.4, momentum=0.9,
                 nesterov=True, weight_decay=5e-4, schedule='linear',
                 warmup_epochs=5.0, label_smoothing=0.1, augment='crop_flip',
                 crop_padding=4)
  return c
