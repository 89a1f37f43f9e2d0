"""How far two runs' thresholded sets agree, at each threshold theta: the
Jaccard similarity of the sets, and the mean |difference| of the values over
their union -- of the memorized examples (mem_consistency) and of the
high-influence pairs (pair_consistency). consistency.py, the command, says
which runs it sets against each other and writes the table.
"""

import numpy as np


def jaccard(a, b) -> float:
  """|a & b| / |a | b| of two (N,) bool set masks; 1 when both are empty."""
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  union = int(np.count_nonzero(a | b))
  return int(np.count_nonzero(a & b)) / union if union else 1.0


def mem_consistency(mem_a, mem_b, thetas) -> dict:
  """The sets {i : mem_i >= theta} of two runs, compared at each theta.

  mem_a, mem_b: (n,) float, the two runs' mem; thetas: (T,).
  Returns dict of (T,) arrays: theta, jaccard (1 where both sets are empty),
  mean_abs_diff (mean |mem_a - mem_b| over the union, NaN where it is
  empty), size_a, size_b, intersection, union, compared (= union: every
  example's mem is known).
  """
  mem_a, mem_b = np.asarray(mem_a), np.asarray(mem_b)
  if mem_a.shape != mem_b.shape:
    raise ValueError(f'mem of {mem_a.shape} and {mem_b.shape} examples')
  diff = np.abs(mem_a.astype(np.float64) - mem_b.astype(np.float64))
  rows = []
  for theta in thetas:
    # A Python float compares in mem's own dtype, as the summary and the
    # exports compare it (NumPy's weak scalars).
    theta = float(theta)
    a, b = mem_a >= theta, mem_b >= theta
    union = a | b
    rows.append((theta, jaccard(a, b),
                 diff[union].mean() if union.any() else np.nan,
                 a.sum(), b.sum(), (a & b).sum(), union.sum(), union.sum()))
  return _columns(rows)


def _columns(rows) -> dict:
  names = ('theta', 'jaccard', 'mean_abs_diff', 'size_a', 'size_b',
           'intersection', 'union', 'compared')
  cols = list(zip(*rows)) if rows else [()] * len(names)
  return {k: np.asarray(v, np.float64 if i < 3 else np.int64)
          for i, (k, v) in enumerate(zip(names, cols))}


def values_at(keys, values, query):
  """values at query keys (keys sorted, unique); NaN where absent."""
  at = np.clip(np.searchsorted(keys, query), 0, max(len(keys) - 1, 0))
  hit = (keys[at] == query) if len(keys) else np.zeros(len(query), bool)
  out = np.full(len(query), np.nan)
  out[hit] = values[at[hit]]
  return out


def pair_consistency(pairs_a, pairs_b, thetas, lookup_a=None,
                     lookup_b=None) -> dict:
  """The high-influence pair sets of two runs, compared at each theta.

  Args:
    pairs_a, pairs_b: each run's candidate pairs, dicts of (P,) arrays
      tr_idx, tt_idx (int) and infl: every pair passing the run's mem bar
      with infl >= min(thetas) (pairs.select_pairs gives them). A run's set
      at theta is its candidates with infl >= theta.
    thetas: (T,) influence thresholds.
    lookup_a, lookup_b: a function (tr_idx, tt_idx) -> (U,) float, the
      run's infl of any pairs, NaN where unknown (the dense matrix; the
      top-k form's known pairs), or None: the run knows its candidates'
      infl only. A union pair outside a run's set takes its candidate or
      looked-up value; where neither knows it, it is left out of the mean.
  Returns:
    dict of (T,) arrays: theta, jaccard (1 where both sets are empty),
    mean_abs_diff (mean |infl_a - infl_b| over the union pairs both runs
    know; NaN where none), size_a, size_b, intersection, union, compared
    (the pairs the mean is over).
  """
  n_test = 1 + max([int(np.max(p['tt_idx'])) for p in (pairs_a, pairs_b)
                    if len(p['tt_idx'])] or [0])
  sides = [_side(p, lookup, n_test)
           for p, lookup in ((pairs_a, lookup_a), (pairs_b, lookup_b))]
  rows = []
  for theta in thetas:
    theta = float(theta)  # compares in infl's dtype, as select_pairs does
    sets = [keys[vals >= theta] for keys, vals, _ in sides]
    union = np.union1d(*sets)
    overlap = len(np.intersect1d(*sets, assume_unique=True))
    known = [_values(side, union, n_test) for side in sides]
    diff = np.abs(known[0] - known[1])
    diff = diff[np.isfinite(diff)]
    rows.append((theta, overlap / len(union) if len(union) else 1.0,
                 diff.mean() if len(diff) else np.nan, len(sets[0]),
                 len(sets[1]), overlap, len(union), len(diff)))
  return _columns(rows)


def _side(p, lookup, n_test):
  """(sorted unique keys, their infl, lookup) of one run's candidates."""
  keys = (np.asarray(p['tr_idx'], np.int64) * n_test +
          np.asarray(p['tt_idx'], np.int64))
  keys, first = np.unique(keys, return_index=True)
  return keys, np.asarray(p['infl'])[first], lookup


def _values(side, query, n_test):
  keys, vals, lookup = side
  out = values_at(keys, vals, query)
  missing = np.isnan(out)
  if lookup is not None and missing.any():
    q = query[missing]
    out[missing] = np.asarray(lookup(q // n_test, q % n_test), np.float64)
  return out
