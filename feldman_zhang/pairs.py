"""Train -> test pairs of an influence estimate.

The one order every list of pairs is ranked in (`order`), the pairs the
top-k form knows (`topk_candidates`), and the selections made from them:
the k largest (the summary), the p largest of tiles (the top-k form's cap)
and the paper's thresholded pairs (`select_pairs`, the exports).
"""

import numpy as np

from feldman_zhang import store


def order(infl, train, test):
  """Indices sorting pairs by infl descending, ties by train then test
  index: the rule every list of pairs here follows, so two lists of the
  same pairs agree entry for entry."""
  return np.lexsort((test, train, -infl))


def top_pairs(infl, k):
  """The k largest entries of infl (n, n_test): [(train i, test j)], ties by
  position. They lie in the k rows of largest maximum, so only those rows
  are sorted: one pass over the matrix, instead of a partition of all of
  it (two orders of magnitude at MNIST's 60,000 x 10,000)."""
  n_test = infl.shape[1]
  k = min(k, infl.size)
  rows = np.argsort(-infl.max(1), kind='stable')[:k]
  values = infl[rows].reshape(-1)
  flat = (rows[:, None] * n_test + np.arange(n_test)).reshape(-1)
  best = order(values, flat // n_test, flat % n_test)[:k]
  return [(int(f // n_test), int(f % n_test)) for f in flat[best]]


def topk_candidates(top_infl, top_train, pairs=None):
  """Every pair the top-k form knows: (train, test) int64 and infl (P,),
  from the top-k lists (top_infl, top_train: (k, n_test)) and the pair list
  (pairs: (train, test, infl) arrays, or None)."""
  test = np.broadcast_to(np.arange(top_infl.shape[1]), top_infl.shape)
  train, test, vals = (a.reshape(-1) for a in (top_train, test, top_infl))
  if pairs is not None:
    # The same tiles made both: a pair in both has one value, kept once.
    train, test, vals = (np.concatenate([a, b]) for a, b in
                         zip((train, test, vals), pairs))
    _, first = np.unique(train.astype(np.int64) * top_infl.shape[1] + test,
                         return_index=True)
    train, test, vals = train[first], test[first], vals[first]
  return train.astype(np.int64), test.astype(np.int64), vals


def top_pairs_of_topk(top_infl, top_train, p, pairs=None):
  """The p largest pairs [(train i, test j, infl)] of the top-k form (see
  topk_candidates); they are the p largest of all of infl whenever k >= p.
  Ties by position, as top_pairs."""
  train, test, vals = topk_candidates(top_infl, top_train, pairs)
  best = order(vals, train, test)[:p]
  best = best[np.isfinite(vals[best])]
  return [(int(train[o]), int(test[o]), float(vals[o])) for o in best]


def largest(pairs, p):
  """The p largest of [(train, test, infl)] parts, ties by position."""
  pairs = pairs or [(np.zeros(0, int), np.zeros(0, int), np.zeros(0))]
  train = np.concatenate([q[0] for q in pairs]).astype(np.int32)
  test = np.concatenate([q[1] for q in pairs]).astype(np.int32)
  infl = np.concatenate([q[2] for q in pairs]).astype(np.float32)
  best = order(infl, train, test)[:p]
  return train[best], test[best], infl[best]


def select_pairs(estimates, infl_threshold=0.15, mem_threshold=0.25,
                 max_pairs=0) -> dict:
  """The pairs with infl >= infl_threshold and mem of the train example >=
  mem_threshold, by infl descending (ties: by train, then test index).

  Args:
    estimates: a run's estimates.npz, with dense `infl` (n, n_test) or the
      top-k form (infl_top_infl, infl_top_train (k, n_test); infl_pair_*).
    max_pairs: keep at most this many; 0 keeps all.
  Returns:
    dict of (P,) arrays: tr_idx, tt_idx int64; infl, infl_stderr, mem,
    mem_stderr float32 (infl_stderr NaN where not estimated).
  """
  mem = estimates['mem']
  # Few examples pass the mem bar: only their rows of infl are looked at.
  rows = np.flatnonzero(mem >= mem_threshold)
  if 'infl' in estimates:
    tr, tt, infl, infl_se = _dense_candidates(estimates, rows, infl_threshold)
  elif 'infl_top_infl' in estimates:
    tr, tt, infl = _topk_candidates(estimates, infl_threshold)
    keep = mem[tr] >= mem_threshold
    tr, tt, infl = tr[keep], tt[keep], infl[keep]
    infl_se = np.full(len(tr), np.nan, np.float32)
  else:
    raise store.StoreError('the estimates hold no influence (estimate.infl '
                           'and estimate.infl_topk were off)')
  best = order(infl, tr, tt)
  if max_pairs:
    best = best[:max_pairs]
  tr, tt = tr[best], tt[best]
  return dict(tr_idx=tr.astype(np.int64), tt_idx=tt.astype(np.int64),
              infl=infl[best].astype(np.float32),
              infl_stderr=infl_se[best].astype(np.float32),
              mem=mem[tr].astype(np.float32),
              mem_stderr=estimates['mem_stderr'][tr].astype(np.float32))


def _dense_candidates(estimates, rows, infl_threshold):
  """(train, test, infl, infl_stderr) of entries >= threshold in `rows`."""
  infl = estimates['infl']
  i, j = np.nonzero(infl[rows] >= infl_threshold)
  i = rows[i]
  if 'infl_stderr' in estimates:
    se = estimates['infl_stderr'][i, j]
  else:
    se = np.full(len(i), np.nan, np.float32)
  return i, j, infl[i, j], se


def _topk_candidates(estimates, infl_threshold):
  """(train, test, infl) >= threshold from the top-k lists and the pair list.

  A pair in both is kept once (topk_candidates).
  """
  tr, tt, infl = topk_candidates(
      estimates['infl_top_infl'], estimates['infl_top_train'],
      tuple(estimates[f'infl_pair_{k}'] for k in ('train', 'test', 'infl')))
  keep = infl >= infl_threshold
  return tr[keep], tt[keep], infl[keep]
