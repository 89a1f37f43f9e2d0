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
precision).
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


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


class CNN(nn.Module):
  """Two conv-pool stages and a dense layer: ~99% on MNIST."""
  channels: Sequence[int] = (32, 64)
  dense: int = 128
  num_classes: int = 10
  dtype: Any = jnp.float32

  def setup(self):
    self.convs = [nn.Conv(c, (3, 3), dtype=self.dtype) for c in self.channels]
    self.fc = nn.Dense(self.dense, dtype=self.dtype)
    self.head = nn.Dense(self.num_classes, dtype=self.dtype)

  def features(self, x, train: bool = False):
    del train
    h = preprocess(x, self.dtype)
    for conv in self.convs:
      h = nn.max_pool(nn.relu(conv(h)), (2, 2), (2, 2))
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
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.features, (3, 3), use_bias=False, dtype=self.dtype)(x)
    if self.pool:
      x = nn.max_pool(x, (2, 2), (2, 2))
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

  def setup(self):
    w0, w1, w2, w3 = self.widths
    d = self.dtype
    self.prep = _ConvBN(w0, dtype=d)
    self.layer1 = _ConvBN(w1, pool=True, dtype=d)
    self.res1 = [_ConvBN(w1, dtype=d), _ConvBN(w1, dtype=d)]
    self.layer2 = _ConvBN(w2, pool=True, dtype=d)
    self.layer3 = _ConvBN(w3, pool=True, dtype=d)
    self.res3 = [_ConvBN(w3, dtype=d), _ConvBN(w3, dtype=d)]
    self.head = nn.Dense(self.num_classes, use_bias=False, dtype=d)

  def features(self, x, train: bool = False):
    h = self.prep(preprocess_cifar(x, self.dtype), train)
    h = self.layer1(h, train)
    h = h + self.res1[1](self.res1[0](h, train), train)
    h = self.layer2(h, train)
    h = self.layer3(h, train)
    h = h + self.res3[1](self.res3[0](h, train), train)
    return jnp.max(h, axis=(1, 2))  # global max pool

  def __call__(self, x, train: bool = False):
    return (self.head(self.features(x, train)) * self.head_scale).astype(
        jnp.float32)


# CIFAR-10 channel means and standard deviations of [0, 1] pixels.
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)


def preprocess_cifar(x, dtype=jnp.float32):
  """Per-channel standardization (grayscale images use the mean channel)."""
  mean, std = jnp.array(_CIFAR_MEAN), jnp.array(_CIFAR_STD)
  if x.shape[-1] != 3:
    mean, std = mean.mean(), std.mean()
  return ((x.astype(jnp.float32) / 255 - mean) / std).astype(dtype)


def _torch_uniform(key, shape, dtype=jnp.float32):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for conv and
  linear weights, which airbench's schedule was tuned with."""
  fan_in = math.prod(shape[:-1])
  bound = 1 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _dirac_init(key, shape, dtype=jnp.float32):
  """PyTorch's default, then the first C_in filters set to the identity:
  every block starts as a pass-through of its input (airbench's dirac
  init; 14 instead of 17 epochs to 94% in its ablations)."""
  kh, kw, c_in, c_out = shape
  w = _torch_uniform(key, shape, dtype)
  eye = jnp.zeros((kh, kw, c_in, c_in), dtype).at[kh // 2, kw // 2].set(
      jnp.eye(c_in, dtype=dtype))
  return w.at[..., :min(c_in, c_out)].set(eye[..., :min(c_in, c_out)])


def _conv_same(x, w):
  return jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@jax.custom_vjp
def conv_same_loop(x, w):
  """A stride-1 'SAME' convolution, x (B, H, W, C) * w (kh, kw, C, O),
  whose weight gradient is kh x kw matmuls of shifted inputs.

  XLA's CPU backend runs the gradient convolutions 10-40x slower inside a
  while loop (the trainer's lax.scan over steps) than outside one: their
  kernels there keep a layout its fast (Eigen) convolution does not take
  (BENCHMARKS.md). As matmuls, and as a convolution with a materialized
  kernel, they run at full speed. Same values as XLA's gradient up to
  float summation order. Only for odd kernel sizes.
  """
  return _conv_same(x, w)


def _conv_same_fwd(x, w):
  return _conv_same(x, w), (x, w)


def _conv_same_bwd(res, dy):
  x, w = res
  kh, kw = w.shape[:2]
  # The input gradient as a plain convolution with the flipped, transposed
  # kernel, materialized (optimization_barrier): folded into the
  # convolution's dimension labels instead, it also leaves the fast path.
  w_t = jax.lax.optimization_barrier(jnp.flip(w, (0, 1)).swapaxes(2, 3))
  dx = _conv_same(dy, w_t)
  h, ww = x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2),
                   (0, 0)))
  dw = jnp.stack([jnp.stack([
      jnp.einsum('bhwc,bhwo->co', xp[:, i:i + h, j:j + ww], dy,
                 preferred_element_type=jnp.float32) for j in range(kw)])
                  for i in range(kh)])
  return dx, dw.astype(w.dtype)


conv_same_loop.defvjp(_conv_same_fwd, _conv_same_bwd)


class _Conv3x3(nn.Module):
  """A bias-free 3x3 'SAME' convolution with dirac init (see _dirac_init);
  loop_friendly: conv_same_loop's gradient (the CPU's choice)."""
  features: int
  loop_friendly: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = self.param('kernel', _dirac_init, (3, 3, x.shape[-1], self.features))
    conv = conv_same_loop if self.loop_friendly else _conv_same
    return conv(x.astype(self.dtype), w.astype(self.dtype))


class _ConvGroup(nn.Module):
  """conv, max-pool, BN, GELU, conv, BN, GELU: airbench's block, no
  residual. BatchNorm has no scale (only a bias, trained at a raised
  learning rate) and airbench's momentum and epsilon."""
  features: int
  bn_momentum: float = 0.6
  loop_friendly: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    def conv(h):
      return _Conv3x3(self.features, self.loop_friendly, self.dtype)(h)

    def norm(h):
      return nn.BatchNorm(use_running_average=not train, use_scale=False,
                          momentum=self.bn_momentum, epsilon=1e-12,
                          dtype=self.dtype)(h)

    x = nn.max_pool(conv(x), (2, 2), (2, 2))
    x = nn.gelu(norm(x), approximate=False)
    return nn.gelu(norm(conv(x)), approximate=False)


WHITEN_PATCH = 2  # airbench's 2x2 patches: 12 dims for RGB, 24 filters.


class Airbench(nn.Module):
  """airbench94's network (Jordan, arXiv 2404.00498; KellerJordan/
  cifar10-airbench, legacy/airbench94.py), written for Flax.

  A frozen 2x2 patch-whitening convolution (its kernel lives in the
  'whiten' collection, set per model from that model's own subset by
  `fit_whitening`; only its bias trains, for the first
  train.whiten_bias_epochs), GELU, three `_ConvGroup`s, a global max-pool
  and a bias-free linear head scaled by 1/9. Images are standardized with
  fixed CIFAR-10 constants (never statistics of the data).
  """
  widths: Sequence[int] = (64, 256, 256)
  num_classes: int = 10
  bn_momentum: float = 0.6
  head_scale: float = 1 / 9
  loop_friendly: bool = False  # see conv_same_loop
  dtype: Any = jnp.float32
  # The recipe is tuned for CIFAR's images; the whitening for 3 channels.
  input_shape = (32, 32, 3)

  def setup(self):
    c = 3  # RGB: the config check refuses other channel counts
    self.whiten = self.variable(
        'whiten', 'kernel', jnp.zeros,
        (WHITEN_PATCH, WHITEN_PATCH, c, 2 * c * WHITEN_PATCH**2))
    self.whiten_bias = self.param('whiten_bias', nn.initializers.zeros,
                                  (2 * c * WHITEN_PATCH**2,))
    self.groups = [_ConvGroup(w, self.bn_momentum, self.loop_friendly,
                             self.dtype)
                   for w in self.widths]
    self.head = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype,
                         kernel_init=_torch_uniform)

  def features(self, x, train: bool = False):
    """(B, 32, 32, 3) uint8 -> (B, widths[-1])."""
    h = jax.lax.conv_general_dilated(
        preprocess_cifar(x, self.dtype), self.whiten.value.astype(self.dtype),
        (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    h = nn.gelu(h + self.whiten_bias.astype(self.dtype), approximate=False)
    for group in self.groups:
      h = group(h, train)
    return jnp.max(h, axis=(1, 2))

  def __call__(self, x, train: bool = False):
    return (self.head(self.features(x, train)) * self.head_scale).astype(
        jnp.float32)


def fit_whitening(x, idx, eps: float = 5e-4, chunk: int = 1000):
  """The whitening kernel of the images x[idx] alone.

  x: (N, H, W, 3) uint8, the whole training set; idx: (m,) int32, one
  model's subset. Returns (2, 2, 3, 24) float32: the eigenvectors of the
  subset's 2x2-patch second-moment matrix (of standardized pixels, as
  airbench), scaled by 1/sqrt(eigenvalue + eps), and their negations.
  Only x[idx] enters: a model never sees a held-out example, also not
  through its whitening (that would leak B_i into the model and bias mem
  toward zero).
  """
  x, idx = jnp.asarray(x), jnp.asarray(idx)
  m = idx.shape[0]
  chunk = min(chunk, m)
  pad = -m % chunk
  # Padding repeats the first index with weight 0: static shapes.
  idx_p = jnp.concatenate([idx, jnp.full((pad,), idx[0], idx.dtype)])
  w_p = jnp.concatenate([jnp.ones(m), jnp.zeros(pad)])
  p = WHITEN_PATCH

  def moments(acc, batch):
    bidx, wb = batch
    h = preprocess_cifar(x[bidx])
    b, hh, ww, c = h.shape
    patches = jnp.concatenate(
        [h[:, i:hh - p + 1 + i, j:ww - p + 1 + j] for i in range(p)
         for j in range(p)], axis=-1)  # (b, H-1, W-1, p*p*c), (i, j, c) order
    flat = (patches * jnp.sqrt(wb)[:, None, None, None]).reshape(-1, p * p * c)
    return acc + jnp.matmul(flat.T, flat,
                            precision=jax.lax.Precision.HIGHEST), None

  d = p * p * x.shape[-1]
  acc, _ = jax.lax.scan(moments, jnp.zeros((d, d), jnp.float32),
                        (idx_p.reshape(-1, chunk), w_p.reshape(-1, chunk)))
  cov = acc / (m * (x.shape[1] - p + 1) * (x.shape[2] - p + 1))
  eigvals, eigvecs = jnp.linalg.eigh(cov)
  eigvals, eigvecs = eigvals[::-1], eigvecs[:, ::-1]  # largest first
  filters = eigvecs / jnp.sqrt(eigvals + eps)  # (d, d): one filter a column
  kernel = filters.reshape(p, p, x.shape[-1], d)  # rows were (i, j, c)
  return jnp.concatenate([kernel, -kernel], axis=-1)


NAMES = ('mlp', 'cnn', 'resnet9', 'airbench', 'linear')


def create(config, num_classes: int, dtype=jnp.float32) -> nn.Module:
  """The model named by config.name, with config's hyperparameters."""
  if config.name == 'mlp':
    return MLP(hidden=tuple(config.hidden), num_classes=num_classes,
               dtype=dtype, kernel_init=config.get('kernel_init', 'lecun_normal'))
  if config.name == 'cnn':
    return CNN(channels=tuple(config.get('channels', (32, 64))),
               dense=config.get('dense', 128), num_classes=num_classes,
               dtype=dtype)
  if config.name == 'resnet9':
    return ResNet9(widths=tuple(config.get('widths', (64, 128, 256, 512))),
                   num_classes=num_classes, dtype=dtype)
  if config.name == 'airbench':
    # The CPU's slow weight gradient in loops: see conv_same_loop.
    if config.get('conv_weight_grad') not in ('matmul', 'xla'):
      raise ValueError('model.conv_weight_grad must be matmul or xla: '
                       'resolve the config first (config.resolve)')
    return Airbench(widths=tuple(config.widths), num_classes=num_classes,
                    bn_momentum=config.bn_momentum, dtype=dtype,
                    loop_friendly=config.conv_weight_grad == 'matmul')
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
