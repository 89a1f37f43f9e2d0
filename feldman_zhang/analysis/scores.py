"""A run's per-example scores against a released per-example array.

A released file keyed to the data set's original order (e.g. Jiang et al.'s
CIFAR-10 C-scores, `cifar10-cscores-orig-order.npz`, array `scores`) holds
one value per training example. `compare` sets one of a run's per-example
arrays against it: the Pearson and Spearman correlations, and the AUC of our
score at picking the released file's lowest fraction q (the examples it
calls hardest); the statistics themselves are stats.py's.

Orientation: the released file is read as a C-score, low for hard, atypical
examples. Held-out accuracy and the C-score are low for those examples too,
so the AUC ranks by -ours; mem is high for them, so it ranks by +mem. AUC 1
puts every one of the released lowest above every other example, 0.5 is
chance, and ties count one half (Mann-Whitney).

Examples about which the run knows nothing are left out of all three: no
held-out model (heldout_acc; the estimate writes 1/2 there), no model on
either side (mem), no ratio with a held-out model (cscore, NaN).
"""

import os
import typing

import numpy as np

from feldman_zhang import store
from feldman_zhang.analysis import stats

SCORES = ('heldout_acc', 'cscore', 'mem')
# +1: high means hard, as a low released C-score does; -1: low means hard.
_HARD_IS_HIGH = {'heldout_acc': -1, 'cscore': -1, 'mem': +1}


class Released(typing.NamedTuple):
  """A released per-example file: values (n,) float64 and, where the npz
  holds a 1-d `labels` array of the same length beside them, labels (n,)
  int64 (else None)."""
  path: str
  key: str | None
  values: np.ndarray
  labels: np.ndarray | None


# -- reading ------------------------------------------------------------------


def parse_spec(spec: str) -> tuple[str, str | None]:
  """FILE.npy, FILE.npz or FILE.npz:KEY -> (path, key or None)."""
  if os.path.exists(spec) or ':' not in spec:
    return spec, None
  path, _, key = spec.rpartition(':')
  return path, key or None


def read_released(spec: str, n: int) -> Released:
  """The released array named by spec (parse_spec), checked to be n finite
  numbers; StoreError in one line if it is not."""
  path, key = parse_spec(spec)
  if not os.path.isfile(path):
    raise store.StoreError(f'{path} does not exist')
  try:
    values, labels, key = _load(path, key)
  except store.StoreError:
    raise
  except Exception as e:  # zipfile, zlib and numpy raise many types.
    raise store.StoreError(f'{path} is not a readable .npy or .npz file '
                           f'({type(e).__name__}: {e})') from e
  where = f'{path}:{key}' if key else path
  if values.ndim != 1 or values.dtype.kind not in 'biuf':
    raise store.StoreError(f'{where} is {values.dtype}{values.shape}, not '
                           '1-d numbers')
  if len(values) != n:
    raise store.StoreError(f'{where} has {len(values)} values, the run {n} '
                           'training examples: not keyed to its data set')
  bad = np.flatnonzero(~np.isfinite(values.astype(np.float64)))
  if len(bad):
    raise store.StoreError(f'{where} has {len(bad)} non-finite values (the '
                           f'first at index {bad[0]})')
  if labels is not None and (labels.shape != (n,) or
                             labels.dtype.kind not in 'iu'):
    labels = None  # not labels of these examples: nothing to check
  return Released(path, key, values.astype(np.float64),
                  None if labels is None else labels.astype(np.int64))


def _load(path, key):
  """(values, labels or None, key) of a .npy or .npz file."""
  loaded = np.load(path, allow_pickle=False)
  if isinstance(loaded, np.ndarray):
    if key:
      raise store.StoreError(f'{path} is one .npy array: drop :{key}, which '
                             'names an array of an .npz file')
    return loaded, None, None
  with loaded as f:
    names = list(f.files)
    if key is None:
      if len(names) != 1:
        raise store.StoreError(f'{path} holds {len(names)} arrays '
                               f'({", ".join(names)}): name one as '
                               f'{path}:KEY')
      key = names[0]
    if key not in names:
      raise store.StoreError(f'{path} has no array {key!r}; it holds '
                             f'{", ".join(names) or "none"}')
    labels = f['labels'] if 'labels' in names and key != 'labels' else None
    return f[key], labels, key


# -- the released side ---------------------------------------------------------


def lowest(values, q: float) -> np.ndarray:
  """(n,) bool: the ceil(q n) lowest values, and any tied with the last of
  them (the set cannot split a tie), so possibly more."""
  if not 0 < q < 1:
    raise ValueError(f'the lowest fraction must lie in (0, 1), not {q}')
  k = int(np.ceil(q * len(values)))
  return values <= np.partition(values, k - 1)[k - 1]


# -- the run's side -----------------------------------------------------------


def run_score(estimates: dict, name: str) -> np.ndarray:
  """(n,) float64: the run's score `name` (SCORES), NaN where the run knows
  nothing about the example (module doc); StoreError if it has none."""
  if name not in SCORES:
    raise ValueError(f'unknown score {name!r}: one of {", ".join(SCORES)}')
  if name not in estimates:
    why = ('the run had no config.subset_ratios: rerun with them, e.g. '
           "--config.subset_ratios='(0.1,0.3,0.5,0.7,0.9)'"
           if name == 'cscore' else 'an estimate from an older version')
    raise store.StoreError(f'the estimates hold no {name}: {why}')
  score = np.array(estimates[name], np.float64)
  num_in = np.asarray(estimates['num_in'], np.int64)
  num_out = int(estimates['num_models']) - num_in
  if name == 'heldout_acc':
    score[num_out == 0] = np.nan
  elif name == 'mem':
    score[(num_out == 0) | (num_in == 0)] = np.nan
  return score


def compare(ours, released, name: str, q: float = 0.05) -> dict:
  """Our score `name` against the released values, as a JSON-able dict.

  ours: (n,) float, NaN where uninformative (run_score); released: (n,)
  float, read as a C-score (module doc). The lowest q are the released
  file's own, over all n examples; examples where ours is NaN are left out
  of the statistics.
  """
  ours, released = np.asarray(ours, np.float64), np.asarray(released,
                                                            np.float64)
  if ours.shape != released.shape:
    raise ValueError(f'ours is {ours.shape}, released {released.shape}')
  keep = np.isfinite(ours)
  hard = lowest(released, q)
  sign = _HARD_IS_HIGH[name]
  return dict(score=name, examples=len(ours), compared=int(keep.sum()),
              left_out=int((~keep).sum()),
              pearson=stats.pearson(ours[keep], released[keep]),
              spearman=stats.spearman(ours[keep], released[keep]),
              lowest=q, lowest_examples=int(hard.sum()),
              auc_ranks_by=('+' if sign > 0 else '-') + name,
              auc=stats.auc(sign * ours[keep], hard[keep]))
