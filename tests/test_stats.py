"""The rank statistics (analysis/stats.py) against plain references, one
pair or one element at a time: ties, NaNs and constant sides; and the
device's per-column ranks and Spearman against the host's."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from feldman_zhang.analysis import stats


def ranks_ref(x):
  """1 + how many are smaller + half of the others equal to it."""
  return np.array([1 + sum(b < a for b in x) + (sum(b == a for b in x) - 1) / 2
                   for a in x])


def pearson_ref(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  da, db = a - a.mean(), b - b.mean()
  return (da * db).sum() / np.sqrt((da * da).sum() * (db * db).sum())


def spearman_ref(a, b):
  """NaN where a side is constant."""
  ra, rb = ranks_ref(a), ranks_ref(b)
  if np.all(ra == ra[0]) or np.all(rb == rb[0]):
    return math.nan
  return pearson_ref(ra, rb)


def auc_ref(score, positive):
  """Every (positive, negative) pair: 1 if the positive scores higher, 1/2
  on a tie."""
  pos = [s for s, p in zip(score, positive) if p]
  neg = [s for s, p in zip(score, positive) if not p]
  wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
  return wins / (len(pos) * len(neg))


# -- one array, on the host ---------------------------------------------------


def test_ranks_average_ties():
  np.testing.assert_array_equal(stats.ranks([3, 1, 4, 1, 5]),
                                [3, 1.5, 4, 1.5, 5])
  np.testing.assert_array_equal(stats.ranks([2.0, 2.0, 2.0]), [2, 2, 2])
  assert stats.ranks([7]).dtype == np.float64
  rng = np.random.default_rng(0)
  for _ in range(5):
    x = rng.integers(0, 5, 40)
    np.testing.assert_array_equal(stats.ranks(x), ranks_ref(x))


def test_nans_rank_last_and_tie_with_each_other():
  x = np.array([2.0, np.nan, 1.0, np.nan, 2.0])
  np.testing.assert_array_equal(stats.ranks(x), [2.5, 4.5, 1, 4.5, 2.5])
  # The finite values rank as they would alone.
  rng = np.random.default_rng(4)
  for _ in range(5):
    x = rng.integers(0, 4, 30).astype(np.float64)
    x[rng.random(30) < 0.3] = np.nan
    finite = np.isfinite(x)
    got = stats.ranks(x)
    np.testing.assert_array_equal(got[finite], ranks_ref(x[finite]))
    nans = (~finite).sum()
    np.testing.assert_array_equal(got[~finite], finite.sum() + (nans + 1) / 2)


def test_pearson_and_spearman_against_references():
  # By hand: ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4) give 4.5 / sqrt(22.5).
  assert stats.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(
      4.5 / np.sqrt(22.5), abs=1e-12)
  rng = np.random.default_rng(1)
  for _ in range(5):
    a = rng.integers(0, 6, 50).astype(float)  # ties on both sides
    b = a + rng.integers(-3, 4, 50)
    assert stats.pearson(a, b) == pytest.approx(pearson_ref(a, b), abs=1e-12)
    assert stats.spearman(a, b) == pytest.approx(
        pearson_ref(ranks_ref(a), ranks_ref(b)), abs=1e-12)
  x = rng.random(30)
  assert stats.spearman(x, np.exp(5 * x)) == pytest.approx(1.0)
  assert stats.spearman(x, -x ** 3) == pytest.approx(-1.0)
  assert stats.pearson(np.ones(5), x[:5]) is None  # constant side
  assert stats.spearman([3, 3, 3], [1, 2, 3]) is None  # tied throughout
  assert stats.pearson([1.0], [2.0]) is None


def test_auc_counts_ties_as_half():
  assert stats.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
  # Pairs (1 v 1) 1/2, (1 v 0), (2 v 1), (2 v 0) 1 each: 3.5 / 4.
  assert stats.auc([1, 1, 2, 0], [1, 0, 1, 0]) == 0.875
  assert stats.auc([5, 5, 5], [1, 0, 0]) == 0.5
  assert stats.auc([1, 2], [1, 1]) is None  # no negatives
  assert stats.auc([1, 2], [0, 0]) is None  # no positives
  rng = np.random.default_rng(2)
  for _ in range(5):
    s = rng.integers(0, 4, 60)
    pos = rng.random(60) < 0.2
    assert stats.auc(s, pos) == pytest.approx(auc_ref(s, pos), abs=1e-12)


# -- every column, on the device ----------------------------------------------


def test_column_ranks_are_the_host_ranks_of_each_column():
  rng = np.random.default_rng(5)
  x = rng.integers(0, 4, (25, 6)).astype(np.float32)  # ties in every column
  x[:, 0] = 2  # one constant column
  got = np.asarray(stats.column_ranks(jnp.asarray(x)))
  assert got.dtype == np.float32
  for j in range(x.shape[1]):
    # Half-integers below 2^23: exact in float32, so equal, not close.
    np.testing.assert_array_equal(got[:, j], stats.ranks(x[:, j]))
    np.testing.assert_array_equal(got[:, j], ranks_ref(x[:, j]))


def test_column_spearman_against_the_reference():
  rng = np.random.default_rng(6)
  m, b = 20, 7
  x = rng.integers(0, 5, (m, b)).astype(np.float32)
  y = (x + rng.integers(-2, 3, (m, b))).astype(np.float32)
  y[:, 1] = 1.0  # constant: NaN
  x[4, 2] = np.nan  # a non-finite value on either side: NaN
  y[0, 3] = np.inf
  got = np.asarray(stats.column_spearman(jnp.asarray(x), jnp.asarray(y)))
  assert got.shape == (b,) and got.dtype == np.float32
  assert np.isnan(got[1]) and np.isnan(got[2]) and np.isnan(got[3])
  for j in (0, 4, 5, 6):
    assert got[j] == pytest.approx(spearman_ref(x[:, j], y[:, j]), abs=1e-6)
    assert got[j] == pytest.approx(stats.spearman(x[:, j], y[:, j]),
                                   abs=1e-6)
