"""The airbench network (`Airbench`, built by models.create) and its parts:
the per-model patch whitening (`fit_whitening`), dirac-initialized 3x3
convolutions with a loop-friendly weight gradient (`conv_same_loop`), the
conv groups, and the fixed CIFAR-10 standardization that models.ResNet9
shares.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp



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


@jax.custom_vjp
def max_pool_2x2(x):
  """nn.max_pool(x, (2, 2), (2, 2)) of x (B, H, W, C): the same values and
  the same gradient bit for bit, faster on the CPU.

  XLA's gradient of a max-pool is select_and_scatter, slow on the CPU:
  this takes about 6% off an airbench step there (BENCHMARKS.md). Here the
  forward is a reshape and a max, and the gradient a mask: each window's
  cotangent goes to its first maximal element in row-major order, where
  select_and_scatter's `>=` puts it (ties included), and the windows do not
  overlap, so no sums.
  A trailing odd row or column is dropped, as 'VALID' pooling does.
  """
  return _pool_windows(x).max(axis=3)


def _pool_windows(x):
  """(B, H, W, C) -> (B, H//2, W//2, 4, C): each 2x2 window, row-major."""
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4, c)


def _max_pool_fwd(x):
  windows = _pool_windows(x)
  y = windows.max(axis=3)
  return y, (windows, y, x.shape)


def _max_pool_bwd(res, dy):
  windows, y, shape = res
  b, h, w, c = shape
  hit = windows == y[:, :, :, None]
  # Only the first hit of each window: no earlier element was a hit.
  first = hit & (jnp.cumsum(hit, axis=3) == 1)
  dx = jnp.where(first, dy[:, :, :, None], jnp.zeros((), dy.dtype))
  dx = dx.reshape(b, h // 2, w // 2, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  dx = dx.reshape(b, h // 2 * 2, w // 2 * 2, c)
  return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def pool_2x2(x, loop_friendly: bool):
  """The 2x2, stride-2 max-pool of x (B, H, W, C): max_pool_2x2 on the CPU
  (loop_friendly), nn.max_pool where the accelerator's own gradient is
  kept."""
  if loop_friendly:
    return max_pool_2x2(x)
  return nn.max_pool(x, (2, 2), (2, 2))


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

    x = pool_2x2(conv(x), self.loop_friendly)
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
