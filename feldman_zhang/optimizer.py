"""The optimizer of config.train: SGD with momentum, its learning-rate
schedule, airbench's parameter groups, and the step counts they all count.

`step_counts(m, config.train)` is what the schedule, the trainer (train.py)
and the cost plan (cost.py) agree on; `make_optimizer` the optax
transformation the trainer applies.
"""

import math

import jax
import jax.numpy as jnp
import optax

from feldman_zhang import precision


# config.train.schedule's choices (_schedule).
SCHEDULES = ('constant', 'cosine', 'linear')


def steps_per_epoch(m: int, batch_size: int, drop_last: bool = False) -> int:
  """The last, partial batch is kept (zero-weight padding fills it), or
  dropped (airbench's loader: each epoch's leftover m % batch_size
  examples of its permutation sit that epoch out)."""
  return m // batch_size if drop_last else math.ceil(m / batch_size)


def total_steps(epochs, steps: int) -> int:
  """The steps of `epochs` passes of `steps` each; a fractional epochs
  stops the last pass early, as airbench's ceil(9.9 x steps). (Rounded
  first, so 0.1 x 30 is 3 steps, not 4.)"""
  return math.ceil(round(epochs * steps, 6))


def step_counts(m: int, config) -> tuple[int, int]:
  """(steps per epoch, total steps) of config.train on subsets of size m:
  what the optimizer's schedule, the trainer and the cost plan all count."""
  steps = steps_per_epoch(m, config.batch_size, config.drop_last)
  return steps, total_steps(config.epochs, steps)


def make_optimizer(config, steps: int) -> optax.GradientTransformation:
  """SGD with momentum (the reference setup), an optional schedule, and
  optionally airbench's parameter groups.

  config: config.train; steps: steps per epoch. With bias_lr_scale != 1 the
  BatchNorm biases train at lr x bias_lr_scale with weight decay /
  bias_lr_scale (the same decay per step: airbench raises their learning
  rate, not their decay), and a model's `whiten_bias` trains for the first
  whiten_bias_epochs only; without, one SGD for every parameter.
  """
  lr = _schedule(config, steps)
  if config.bias_lr_scale == 1 and not config.whiten_bias_epochs:
    return _sgd(config, lr, config.weight_decay)
  if not callable(lr):
    lr = optax.constant_schedule(lr)
  scale = config.bias_lr_scale
  frozen_from = int(config.whiten_bias_epochs * steps)
  groups = dict(
      other=_sgd(config, lr, config.weight_decay),
      norm_bias=_sgd(config, lambda s: lr(s) * scale,
                     config.weight_decay / scale),
      whiten_bias=_sgd(config, lambda s: jnp.where(s < frozen_from, lr(s), 0.),
                       config.weight_decay))
  return optax.multi_transform(groups, param_groups)


def param_groups(params):
  """'norm_bias' for BatchNorm parameters, 'whiten_bias' for a model's
  whitening bias, 'other' for the rest: a pytree of labels like params."""
  def label(path, _):
    names = [getattr(k, 'key', str(k)) for k in path]
    if names[-1] == 'whiten_bias':
      return 'whiten_bias'
    return ('norm_bias' if any(n.startswith('BatchNorm') for n in names)
            else 'other')
  return jax.tree_util.tree_map_with_path(label, params)


def _schedule(config, steps: int):
  """The learning rate: a float, or an optax schedule of the step."""
  total = total_steps(config.epochs, steps)
  warmup = int(config.warmup_epochs * steps)
  if config.schedule == 'constant':
    return config.lr
  if config.schedule == 'cosine':
    # Without warm-up, the same values without optax's log line about an
    # empty warm-up schedule.
    return (optax.warmup_cosine_decay_schedule(0.0, config.lr, warmup, total)
            if warmup else optax.cosine_decay_schedule(config.lr, total))
  if config.schedule == 'linear':
    # From lr_start x lr up to lr over the warm-up, then down to lr_end x lr:
    # the fast CIFAR recipes (Page's ResNet-9: 0 and 0; airbench: 0.2 and
    # 0.07, peak at 23% of the steps).
    return optax.join_schedules(
        [optax.linear_schedule(config.lr_start * config.lr, config.lr, warmup),
         optax.linear_schedule(config.lr, config.lr_end * config.lr,
                               total - warmup)], [warmup])
  raise ValueError(f'unknown schedule {config.schedule!r}: expected '
                   'constant, cosine or linear')


def _sgd(config, lr, weight_decay: float) -> optax.GradientTransformation:
  """Coupled weight decay (added to the gradient, as PyTorch's SGD), then
  SGD with momentum in config.momentum_dtype."""
  parts = []
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  parts.append(optax.sgd(lr, momentum=config.momentum or None,
                         nesterov=bool(config.nesterov),
                         accumulator_dtype=precision.compute_dtype(
                             config.momentum_dtype)))
  return optax.chain(*parts)

