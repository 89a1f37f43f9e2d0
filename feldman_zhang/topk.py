"""The top-k form of influence: the k largest entries per test example and
the pairs over a bar, tile by tile, never the (n, n_test) matrix.

Each tile is the dense estimate's own kernel (estimate.influence_block), so
its values are the dense matrix's own entries.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from feldman_zhang import estimate
from feldman_zhang import pairs as pairs_lib

# The top-k form keeps at most this many pairs (the largest).
MAX_PAIRS = 1_000_000


@functools.partial(jax.jit, static_argnames=('k',))
def _merge_top(top_vals, top_idx, tile, start, k):
  """Keeps the k largest per test column of [running top; tile].

  top_vals, top_idx: (k, n_test); tile: (b, n_test) rows start..start+b-1.
  """
  rows = start + jnp.arange(tile.shape[0], dtype=jnp.int32)
  vals = jnp.concatenate([top_vals, tile])
  idx = jnp.concatenate([top_idx, jnp.broadcast_to(rows[:, None], tile.shape)])
  # top_k runs along the last axis: work on (n_test, k + b).
  best, where = jax.lax.top_k(vals.T, k)
  return best.T, jnp.take_along_axis(idx.T, where, axis=1).T


@functools.partial(jax.jit, static_argnames=('size',))
def _pairs_over(tile, threshold, size):
  """(rows, cols, values) of the tile's entries >= threshold, padded to size
  (a power of two, so few sizes compile)."""
  rows, cols = jnp.nonzero(tile >= threshold, size=size)
  return rows, cols, tile[rows, cols]


def top_influence(masks, test_correct, k: int, threshold: float = 1.0,
                  block: int = 4096, max_pairs: int = MAX_PAIRS,
                  pair_rows=None) -> dict:
  """Top-k influence per test example, tile by tile: never the full matrix.

  For ImageNet-scale runs, where infl (n, n_test) would not fit in memory
  (1.28M x 50k floats is 256 GB), each tile of `block` training rows is
  computed on the device, merged into the running top-k, and dropped.

  Args:
    masks: (t, n) bool; test_correct: (t, n_test) bool.
    k: training examples kept per test example.
    threshold: also keep every pair with infl >= threshold (at most
      max_pairs of them, largest first).
    block: training rows per tile.
    pair_rows: (n,) bool, the training examples whose pairs are kept (e.g.
      mem >= 0.25, the paper's bar), so that pairs of low-mem examples do not
      crowd them out of max_pairs; None keeps every row's.
  Returns:
    top_infl (k, n_test) float32 and top_train (k, n_test) int32, best first
    along axis 0; pair_train, pair_test (P,) int32 and pair_infl (P,) float32;
    pairs_dropped () int64, the pairs past max_pairs (0: the list is whole).
  """
  masks = jnp.asarray(masks, bool)
  test_correct = jnp.asarray(test_correct, bool)
  n, n_test = masks.shape[1], test_correct.shape[1]
  k = min(k, n)
  num_in = jnp.sum(masks, 0, dtype=jnp.int32)
  pair_rows = (jnp.ones(n, bool) if pair_rows is None else
               jnp.asarray(pair_rows, bool))
  top_vals = jnp.full((k, n_test), -jnp.inf, jnp.float32)
  top_idx = jnp.zeros((k, n_test), jnp.int32)
  pairs, num_pairs = [], 0
  block = min(block, n)
  for start in range(0, n, block):
    # Tiles keep one shape: the last one overlaps the one before, and its
    # repeated rows are masked out of the merge and the pairs.
    lo = min(start, n - block)
    tile, _ = estimate.influence_block(masks[:, lo:lo + block], test_correct,
                               num_in[lo:lo + block], False)
    fresh = jnp.arange(block) >= start - lo
    tile = jnp.where(fresh[:, None], tile, -jnp.inf)
    top_vals, top_idx = _merge_top(top_vals, top_idx, tile, lo, k)
    # Only the pairs over the threshold leave the device (usually none):
    # at ImageNet scale the tiles together are 256 GB.
    tile = jnp.where(pair_rows[lo:lo + block, None], tile, -jnp.inf)
    count = int(jnp.sum(tile >= threshold))
    if count:
      rows, cols, vals = _pairs_over(tile, threshold,
                                     1 << (count - 1).bit_length())
      pairs.append((np.asarray(rows)[:count] + lo, np.asarray(cols)[:count],
                    np.asarray(vals)[:count]))
      num_pairs += count
      if sum(len(p[0]) for p in pairs) > 2 * max_pairs:
        pairs = [pairs_lib.largest(pairs, max_pairs)]  # host memory stays bounded
  if num_pairs > max_pairs:
    logging.warning('%d pairs have infl >= %g; keeping the %d largest',
                    num_pairs, threshold, max_pairs)
  pair_train, pair_test, pair_infl = pairs_lib.largest(pairs, max_pairs)
  return dict(top_infl=np.asarray(top_vals), top_train=np.asarray(top_idx),
              pair_train=pair_train, pair_test=pair_test, pair_infl=pair_infl,
              pairs_dropped=np.int64(num_pairs - len(pair_infl)))


def topk_estimates(masks, test_correct, mem, k: int, pair_threshold: float,
                   pair_mem_threshold: float, **kwargs) -> dict:
  """The top-k form as estimates.npz holds it: top_influence's arrays under
  infl_*, and the bars its pairs were kept at (infl_pair_threshold,
  infl_pair_mem_threshold), so a reader knows where the list is whole.

  mem: (n,) the run's memorization estimates.
  """
  top = top_influence(masks, test_correct, k, pair_threshold,
                      pair_rows=mem >= pair_mem_threshold, **kwargs)
  top.update(pair_threshold=np.float64(pair_threshold),
             pair_mem_threshold=np.float64(pair_mem_threshold))
  return {f'infl_{key}': v for key, v in top.items()}
