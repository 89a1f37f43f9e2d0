"""Memorization and influence on the margin: the estimates of estimate.py
with the margin phi (evaluation.margin) in place of correctness.

The difference-of-means influence on the margin,
infl_margin[i, j] = mean_{k in A_i} phi_test[k, j] - mean_{k in
B_i} phi_test[k, j] (A_i the models that trained on i, B_i the others), the
continuous counterpart of estimate.py's infl. Here a mean over an empty
group is 0 (there is no neutral margin to stand in, as 1/2 does for
correctness), so an example every model trained on scores mean_{A_i}.

mem_margin is its diagonal counterpart on the training examples. Both are
float64 sums on the host, tile by tile over examples (exact for the stored
float16 margins, so independent of devices), and are what `python -m
analysis.lds` judges beside infl.
"""

import numpy as np

# Test examples per tile: the score columns (n, tile) in float64.
TILE = 512


def over_views(x, ndim: int, name: str) -> np.ndarray:
  """x with a trailing view axis averaged away, checked to be ndim-d."""
  x = np.asarray(x)
  if x.ndim == ndim + 1:
    x = x.mean(-1, dtype=np.float32)
  if x.ndim != ndim:
    raise ValueError(f'{name} is {x.shape}: not {ndim}-d (or {ndim + 1}-d '
                     'with views last)')
  return x


def _diff_of_means(sum_in, num_in, sum_out, num_out) -> np.ndarray:
  """mean_in - mean_out in float64, an empty group's mean 0, as float32."""
  mean_in = sum_in / np.maximum(num_in, 1)
  mean_out = sum_out / np.maximum(num_out, 1)
  diff = (np.where(num_in > 0, mean_in, 0.0) -
          np.where(num_out > 0, mean_out, 0.0))
  return diff.astype(np.float32)


def infl_margin(masks, phi_test, *, tile: int = TILE, out=None) -> np.ndarray:
  """Difference-of-means influence on a continuous output (module doc).

  The sums are float64 products on the host: the margins are stored as
  float16, whose sums over fewer than 8,192 models float64 holds exactly,
  so the result does not depend on the order of the sums, and so not on the
  devices or the BLAS threads (tests/test_scale.py: the same bits on 1, 2
  and 8 devices). For float32 inputs it is deterministic, not exact.

  Args:
    masks: (t, n) bool, masks[k, i] is whether model k trained on example i.
    phi_test: (t, n_test) float, model k's output on test example j; a
      trailing view axis (t, n_test, V) is averaged.
    tile: test examples per tile (and 8 x tile training examples).
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
  t, n = masks.shape
  n_test = phi_test.shape[1]
  out = np.empty((n, n_test), np.float32) if out is None else out
  num_in = masks.sum(0)[:, None]
  rows = max(1, 8 * tile)
  for j in range(0, n_test, max(1, tile)):
    phi = phi_test[:, j:j + tile].astype(np.float64)
    total = phi.sum(0)
    for i in range(0, n, rows):
      sum_in = masks[:, i:i + rows].T.astype(np.float64) @ phi
      out[i:i + rows, j:j + tile] = _diff_of_means(
          sum_in, num_in[i:i + rows], total - sum_in, t - num_in[i:i + rows])
  return out


def mem_margin(masks, phi_train) -> np.ndarray:
  """Per training example, mean_{k in A_i} phi_train[k, i] - mean_{k in B_i}
  phi_train[k, i], an empty group's mean 0 (module doc); float64 sums, as
  infl_margin's.

  masks: (t, n) bool; phi_train: (t, n) float, or (t, n, V) averaged over
  views. Returns (n,) float32.
  """
  masks = np.asarray(masks, bool)
  phi_train = over_views(phi_train, 2, 'phi_train')
  if phi_train.shape != masks.shape:
    raise ValueError(f'phi_train is {phi_train.shape}, masks {masks.shape}')
  phi = phi_train.astype(np.float64)
  num_in = masks.sum(0)
  sum_in = np.where(masks, phi, 0.0).sum(0)
  return _diff_of_means(sum_in, num_in, phi.sum(0) - sum_in,
                        masks.shape[0] - num_in)
