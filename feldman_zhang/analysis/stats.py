"""Rank statistics: Pearson and Spearman correlations, tie-averaged ranks,
and the Mann-Whitney AUC.

Ranks run 1..n, ties given the mean of their ranks, in both forms here:

  ranks, spearman, pearson, auc   host numpy, one (n,) array, float64
                                   (scores.compare: n up to a data set)
  column_ranks, column_spearman   JAX, every column of an (M, b) array at
                                   once, float32 (lds: M models, inside a
                                   jitted tile of b test examples)

The two give the same ranks (half-integers, exact in either dtype); they stay
two functions because one runs on the host over a data set's examples and
the other on the device, vectorised over thousands of columns.

The AUC of a membership attack (roc.py) is the same statistic as `auc` for
unit weights, but taken by trapezoids under the ROC curve, because the
bootstrap there reweights the pairs, which ranks cannot.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


# -- one array, on the host ---------------------------------------------------


def pearson(a, b) -> float | None:
  """Pearson correlation of two (n,) arrays; None where a side is constant
  or shorter than 2."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(a) < 2:
    return None
  a, b = a - a.mean(), b - b.mean()
  scale = np.sqrt((a * a).sum() * (b * b).sum())
  return float((a * b).sum() / scale) if scale > 0 else None


def ranks(x) -> np.ndarray:
  """(n,) float64 ranks 1..n of x, ties given the mean of their ranks (NaNs
  rank last, tied with each other)."""
  _, inverse, counts = np.unique(np.asarray(x), return_inverse=True,
                                 return_counts=True)
  first = np.cumsum(counts) - counts + 1
  return (first + (counts - 1) / 2)[inverse.ravel()].astype(np.float64)


def spearman(a, b) -> float | None:
  """Spearman correlation: Pearson's of the tie-averaged ranks."""
  return pearson(ranks(a), ranks(b))


def auc(score, positive) -> float | None:
  """P(score of a positive > score of a negative), ties counting 1/2
  (Mann-Whitney U / (n_pos n_neg)); None where a side is empty.

  score: (n,) float; positive: (n,) bool.
  """
  positive = np.asarray(positive, bool)
  n_pos = int(positive.sum())
  n_neg = len(positive) - n_pos
  if not n_pos or not n_neg:
    return None
  u = ranks(score)[positive].sum() - n_pos * (n_pos + 1) / 2
  return float(u / (n_pos * n_neg))


# -- every column, on the device ----------------------------------------------


def column_ranks(x):
  """(M, b) -> (M, b) float32 ranks 1..M along axis 0, ties given their
  mean: (#smaller + #smaller-or-equal + 1) / 2, the value `ranks` gives."""
  ordered = jnp.sort(x, 0)
  def search(side):
    return jax.vmap(functools.partial(jnp.searchsorted, side=side),
                    in_axes=1, out_axes=1)(ordered, x)
  below, upto = search('left'), search('right')
  return (below + upto + 1).astype(jnp.float32) / 2


def column_spearman(x, y):
  """(M, b), (M, b) float32 -> (b,) float32 Spearman correlations of each
  column pair; NaN where a side is constant or holds a non-finite value."""
  m = x.shape[0]
  # Centred ranks are multiples of 1/2: their sums are exact.
  a = column_ranks(x) - (m + 1) / 2
  b = column_ranks(y) - (m + 1) / 2
  finite = jnp.all(jnp.isfinite(x), 0) & jnp.all(jnp.isfinite(y), 0)
  saa, sbb = jnp.sum(a * a, 0), jnp.sum(b * b, 0)
  ok = finite & (saa > 0) & (sbb > 0)
  return jnp.where(ok, jnp.sum(a * b, 0) / jnp.sqrt(jnp.where(ok, saa * sbb,
                                                              1)), jnp.nan)
