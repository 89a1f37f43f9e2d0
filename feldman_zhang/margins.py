"""Memorization and influence on the margin: the estimates of estimate.py
with the margin phi (train.margin) in place of correctness.

The difference-of-means influence on the margin,
infl_margin[i, j] = mean_{k in A_i} phi_test[k, j] - mean_{k in
B_i} phi_test[k, j] (A_i the models that trained on i, B_i the others), the
continuous counterpart of estimate.py's infl. Here a mean over an empty
group is 0 (there is no neutral margin to stand in, as 1/2 does for
correctness), so an example every model trained on scores mean_{A_i}.

mem_margin is its diagonal counterpart on the training examples. Both are
float32 sums on the device, tile by tile over examples (no exactness claim:
the margins are continuous), and are what `python -m analysis.lds` judges
beside infl.
"""

import jax
import jax.numpy as jnp
import numpy as np

# Test examples per device tile: the score columns (n, tile) in float32.
TILE = 512
# 0/1 masks times scores: full float32 products, not TF32/bf16 passes.
_HIGHEST = jax.lax.Precision.HIGHEST


def over_views(x, ndim: int, name: str) -> np.ndarray:
  """x with a trailing view axis averaged away, checked to be ndim-d."""
  x = np.asarray(x)
  if x.ndim == ndim + 1:
    x = x.mean(-1, dtype=np.float32)
  if x.ndim != ndim:
    raise ValueError(f'{name} is {x.shape}: not {ndim}-d (or {ndim + 1}-d '
                     'with views last)')
  return x


def _diff_of_means(sum_in, num_in, sum_out, num_out, shift):
  """mean_in - mean_out of sums of (values - shift), an empty group's mean
  0. The shift keeps both means small where they cancel; it is added back
  only where one group is empty."""
  has_in, has_out = num_in > 0, num_out > 0
  mean_in = sum_in / jnp.maximum(num_in, 1)
  mean_out = sum_out / jnp.maximum(num_out, 1)
  return jnp.where(has_in & has_out, mean_in - mean_out,
                   jnp.where(has_in, mean_in + shift, 0) -
                   jnp.where(has_out, mean_out + shift, 0))


@jax.jit
def _margin_tile(masks, phi):
  """masks: (t, n) bool; phi: (t, b) float32 -> (n, b) float32."""
  shift = jnp.mean(phi, 0)
  centred = phi - shift
  member = masks.astype(jnp.float32)
  sum_in = jnp.dot(member.T, centred, precision=_HIGHEST)
  sum_out = jnp.dot(1 - member.T, centred, precision=_HIGHEST)
  num_in = jnp.sum(masks, 0)[:, None]
  return _diff_of_means(sum_in, num_in, sum_out, masks.shape[0] - num_in,
                        shift[None, :])


def infl_margin(masks, phi_test, *, tile: int = TILE, out=None) -> np.ndarray:
  """Difference-of-means influence on a continuous output (module doc).

  Args:
    masks: (t, n) bool, masks[k, i] is whether model k trained on example i.
    phi_test: (t, n_test) float, model k's output on test example j; a
      trailing view axis (t, n_test, V) is averaged.
    tile: test examples per device tile.
    out: an (n, n_test) float32 array to fill (e.g. a memory map) instead
      of a new one.
  Returns:
    (n, n_test) float32.
  """
  masks = np.asarray(masks, bool)
  phi_test = over_views(phi_test, 2, 'phi_test')
  if phi_test.shape[0] != masks.shape[0]:
    raise ValueError(f'phi_test has {phi_test.shape[0]} models, masks '
                     f'{masks.shape[0]}')
  n, n_test = masks.shape[1], phi_test.shape[1]
  out = np.empty((n, n_test), np.float32) if out is None else out
  masks_dev = jnp.asarray(masks)
  tile = max(1, min(tile, n_test))
  for start in range(0, n_test, tile):
    block = np.zeros((masks.shape[0], tile), np.float32)  # pad: one compile
    stop = min(start + tile, n_test)
    block[:, :stop - start] = phi_test[:, start:stop]
    out[:, start:stop] = np.asarray(_margin_tile(masks_dev, block))[
        :, :stop - start]
  return out


@jax.jit
def _mem_margin(masks, phi):
  shift = jnp.mean(phi, 0)
  centred = phi - shift
  num_in = jnp.sum(masks, 0)
  return _diff_of_means(jnp.sum(jnp.where(masks, centred, 0), 0), num_in,
                        jnp.sum(jnp.where(masks, 0, centred), 0),
                        masks.shape[0] - num_in, shift)


def mem_margin(masks, phi_train) -> np.ndarray:
  """Per training example, mean_{k in A_i} phi_train[k, i] - mean_{k in B_i}
  phi_train[k, i], an empty group's mean 0 (module doc).

  masks: (t, n) bool; phi_train: (t, n) float, or (t, n, V) averaged over
  views. Returns (n,) float32.
  """
  masks = np.asarray(masks, bool)
  phi_train = over_views(phi_train, 2, 'phi_train')
  if phi_train.shape != masks.shape:
    raise ValueError(f'phi_train is {phi_train.shape}, masks {masks.shape}')
  return np.asarray(_mem_margin(masks, phi_train.astype(np.float32)))
