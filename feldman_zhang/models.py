"""Flax models, looked up by `config.model.name`.

Every model maps uint8 images (B, H, W, C) to float32 logits (B, classes) and
splits into `features(x, train)` (the representation) and `head` (the last
layer), so the last-layer experiment can train heads on frozen features.
Models are called as `model.apply(variables, x, train=...)`; BatchNorm
statistics live in the 'batch_stats' collection, which the trainer carries
per model, so `jax.vmap` over stacked variables trains many models at once.
`init` and `apply` split a model's variables into (params, state) and
join them again, for the trainer and the evaluation alike.
Parameters are float32; `dtype` sets the compute dtype (bf16 for mixed
precision). airbench.py holds the airbench network.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from feldman_zhang import airbench


def preprocess(x, dtype=jnp.float32):
  """uint8 (B, H, W, C) -> dtype in [0, 1], the reference setup's scaling."""
  return x.astype(dtype) / 255


class MLP(nn.Module):
  """ReLU MLP on flattened pixels; the reference MNIST model is (512, 256)."""
  hidden: Sequence[int]
  num_classes: int
  dtype: Any = jnp.float32
  kernel_init: str = 'lecun_normal'  # The reference (stax) uses glorot_normal.

  def setup(self):
    init = getattr(nn.initializers, self.kernel_init)()
    self.layers = [nn.Dense(h, dtype=self.dtype, kernel_init=init)
                   for h in self.hidden]
    self.head = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=init)

  def features(self, x, train: bool = False):
    """(B, H, W, C) uint8 -> (B, hidden[-1])."""
    del train
    h = preprocess(x, self.dtype).reshape(x.shape[0], -1)
    for layer in self.layers:
      h = nn.relu(layer(h))
    return h

  def __call__(self, x, train: bool = False):
    return self.head(self.features(x, train)).astype(jnp.float32)


def _conv_same_loop(lhs, rhs, window_strides, padding, lhs_dilation=None,
                    rhs_dilation=None, dimension_numbers=None,
                    feature_group_count=1, precision=None, **unused):
  """nn.Conv's lax.conv_general_dilated, as airbench.conv_same_loop: the
  same forward convolution, its gradients in the form XLA's CPU backend
  runs fast inside the trainer's scan. Only what conv_3x3 asks for."""
  del unused
  nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                        ('NHWC', 'HWIO', 'NHWC'))
  if (tuple(window_strides) != (1, 1) or padding != 'SAME' or
      any(d is not None and tuple(d) != (1, 1)
          for d in (lhs_dilation, rhs_dilation)) or
      feature_group_count != 1 or precision is not None or
      dimension_numbers != nhwc):
    raise ValueError('the loop-friendly convolution is a plain stride-1 '
                     "'SAME' NHWC convolution")
  return airbench.conv_same_loop(lhs, rhs)


def conv_3x3(features: int, loop_friendly: bool, **kwargs) -> nn.Conv:
  """A stride-1 'SAME' 3x3 nn.Conv (its parameters and initialization
  whatever loop_friendly says); loop_friendly: its gradients as in
  airbench.conv_same_loop (the CPU's choice, resolve.py): XLA's CPU
  convolution gradients run 10-40x slower inside the trainer's scan
  (BENCHMARKS.md). Same forward values; gradients up to float order."""
  if loop_friendly:
    kwargs['conv_general_dilated'] = _conv_same_loop
  return nn.Conv(features, (3, 3), padding='SAME', **kwargs)


class CNN(nn.Module):
  """Two conv-pool stages and a dense layer: ~99% on MNIST."""
  channels: Sequence[int] = (32, 64)
  dense: int = 128
  num_classes: int = 10
  dtype: Any = jnp.float32
  loop_friendly: bool = False  # see conv_3x3

  def setup(self):
    self.convs = [conv_3x3(c, self.loop_friendly, dtype=self.dtype)
                  for c in self.channels]
    self.fc = nn.Dense(self.dense, dtype=self.dtype)
    self.head = nn.Dense(self.num_classes, dtype=self.dtype)

  def features(self, x, train: bool = False):
    del train
    h = preprocess(x, self.dtype)
    for conv in self.convs:
      h = airbench.pool_2x2(nn.relu(conv(h)), self.loop_friendly)
    return nn.relu(self.fc(h.reshape(h.shape[0], -1)))

  def __call__(self, x, train: bool = False):
    return self.head(self.features(x, train)).astype(jnp.float32)


class Linear(nn.Module):
  """A last layer alone: on precomputed float features (B, d), or a linear
  classifier of uint8 images (B, H, W, C), scaled as the MLP's pixels."""
  num_classes: int

  def setup(self):
    self.head = nn.Dense(self.num_classes)

  def features(self, x, train: bool = False):
    del train
    if jnp.issubdtype(x.dtype, jnp.integer):
      x = preprocess(x)
    return x.reshape(x.shape[0], -1)

  def __call__(self, x, train: bool = False):
    return self.head(self.features(x, train))


class _ConvBN(nn.Module):
  features: int
  pool: bool = False
  loop_friendly: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = conv_3x3(self.features, self.loop_friendly, use_bias=False,
                 dtype=self.dtype)(x)
    if self.pool:
      x = airbench.pool_2x2(x, self.loop_friendly)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     dtype=self.dtype)(x)
    return nn.relu(x)


class ResNet9(nn.Module):
  """The ResNet-9 of the fast CIFAR-10 trainers (Page's DAWNBench entry,
  the Datamodels recipe): ~94% on CIFAR-10 in 24 epochs at widths
  (64, 128, 256, 512); narrower widths trade accuracy for throughput.
  Pooling comes before BatchNorm in the pooled blocks (conv, pool, BN,
  ReLU), as in Page's later variant: BN and ReLU then run on a quarter of
  the pixels. Flax's lecun_normal initialization throughout.
  """
  widths: Sequence[int] = (64, 128, 256, 512)
  num_classes: int = 10
  head_scale: float = 0.125  # Scaled logits train stably at high lr.
  dtype: Any = jnp.float32
  loop_friendly: bool = False  # see conv_3x3

  def setup(self):
    w0, w1, w2, w3 = self.widths
    block = functools.partial(_ConvBN, loop_friendly=self.loop_friendly,
                              dtype=self.dtype)
    self.prep = block(w0)
    self.layer1 = block(w1, pool=True)
    self.res1 = [block(w1), block(w1)]
    self.layer2 = block(w2, pool=True)
    self.layer3 = block(w3, pool=True)
    self.res3 = [block(w3), block(w3)]
    self.head = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype)

  def features(self, x, train: bool = False):
    h = self.prep(airbench.preprocess_cifar(x, self.dtype), train)
    h = self.layer1(h, train)
    h = h + self.res1[1](self.res1[0](h, train), train)
    h = self.layer2(h, train)
    h = self.layer3(h, train)
    h = h + self.res3[1](self.res3[0](h, train), train)
    return jnp.max(h, axis=(1, 2))  # global max pool

  def __call__(self, x, train: bool = False):
    return (self.head(self.features(x, train)) * self.head_scale).astype(
        jnp.float32)


NAMES = ('mlp', 'cnn', 'resnet9', 'airbench', 'linear')


def create(config, num_classes: int, dtype=jnp.float32) -> nn.Module:
  """The model named by config.name, with config's hyperparameters."""
  if config.name == 'mlp':
    return MLP(hidden=tuple(config.hidden), num_classes=num_classes,
               dtype=dtype, kernel_init=config.get('kernel_init', 'lecun_normal'))
  # The CPU's slow weight gradient in loops: see airbench.conv_same_loop.
  # A config not resolved for a backend (conv_weight_grad auto) gets XLA's.
  loop_friendly = config.get('conv_weight_grad') == 'matmul'
  if config.name == 'cnn':
    return CNN(channels=tuple(config.get('channels', (32, 64))),
               dense=config.get('dense', 128), num_classes=num_classes,
               dtype=dtype, loop_friendly=loop_friendly)
  if config.name == 'resnet9':
    return ResNet9(widths=tuple(config.get('widths', (64, 128, 256, 512))),
                   num_classes=num_classes, dtype=dtype,
                   loop_friendly=loop_friendly)
  if config.name == 'airbench':
    if config.get('conv_weight_grad') not in ('matmul', 'xla'):
      raise ValueError('model.conv_weight_grad must be matmul or xla: '
                       'resolve the config first (resolve.resolve)')
    return airbench.Airbench(widths=tuple(config.widths),
                             num_classes=num_classes,
                             bn_momentum=config.bn_momentum, dtype=dtype,
                             loop_friendly=loop_friendly)
  if config.name == 'linear':
    return Linear(num_classes)
  raise ValueError(f'unknown model {config.name!r}: expected one of '
                   f'{", ".join(NAMES)}')


def init(model, key, x):
  """(params, state): state holds the non-trained collections (BatchNorm)."""
  variables = model.init(key, x[:1], train=False)
  params = variables.pop('params')
  return params, dict(variables)


def apply(model, params, state, x, train: bool):
  """logits, new state; the state is updated only when training."""
  variables = {'params': params, **state}
  if train and state:
    logits, new_state = model.apply(variables, x, train=True,
                                    mutable=list(state))
    return logits, dict(new_state)
  return model.apply(variables, x, train=train), state
