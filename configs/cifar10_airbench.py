"""CIFAR-10 with airbench94's network and recipe (the fast-CIFAR recipe).

Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU" (arXiv 2404.00498),
KellerJordan/cifar10-airbench legacy/airbench94.py, carried over in our
conventions (airbench.Airbench, optimizer.make_optimizer):
  - whitening fit on each model's own subset, its bias trained 3 epochs;
  - Nesterov SGD, momentum 0.85, batch 1024. airbench's lr 11.5 and weight
    decay 0.0153 are "per 1024 examples" on a summed loss, divided by
    1024 (1 + 1 / (1 - momentum)); on our mean loss that is lr = 11.5 /
    (1 + 1 / 0.15) = 1.5 and a coupled decay of 0.0153 / 11.5 per unit of
    lr; BatchNorm biases at 64x the lr, the same decay per step;
  - lr from 0.2x up to 1x at 23% of the steps, down to 0.07x; label
    smoothing 0.2; lookahead averaging; alternating flip and 2-pixel
    reflect translate; test-time mirror and 1-pixel translates (6 views),
    whose averaged prediction is what mem and infl count.
Steps: airbench's count, 9.9 epochs with each epoch's last, partial batch
dropped: on 70% subsets (m = 35,000) 34 steps an epoch, 337 in all (the
tenth pass stops after 31), the warm-up peak at 23% of them (77), the
whitening bias trained for 3 epochs (102 steps). Accuracy and cost are in
BENCHMARKS.md. Data: npz of the decoded lossless copy (README:
--config.data.source=npz:.data/cifar10_lossless.npz), or tfds:cifar10, the
default, with data prepared under data_dir.
"""

from feldman_zhang import config as config_lib


def get_config():
  c = config_lib.base()
  c.data.source = 'tfds:cifar10'
  c.num_models = 2000
  c.models_per_device = 8
  # On the CPU a model takes about an hour (2 cores): one a call, so that
  # progress shows per model (lax.map trains them one by one either way).
  c.cpu_models_per_device = 1
  # lax.map: convolutions stay plain rather than grouped (BENCHMARKS.md).
  c.vectorize = 'map'
  c.eval_batch_size = 500
  c.model.name = 'airbench'
  c.model.widths = (64, 256, 256)
  c.model.bn_momentum = 0.6
  c.model.tta = 'mirror_translate'
  c.train.update(epochs=9.9, drop_last=True, batch_size=1024, lr=1.5,
                 momentum=0.85, nesterov=True, weight_decay=0.0153 / 11.5,
                 schedule='linear', warmup_epochs=0.23 * 9.9, lr_start=0.2, lr_end=0.07,
                 label_smoothing=0.2, augment='flip_translate', crop_padding=2,
                 bias_lr_scale=64.0, whiten_bias_epochs=3, lookahead=True)
  return c
