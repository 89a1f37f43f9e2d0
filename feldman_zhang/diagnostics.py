"""A run's diagnostics: which models converged, which examples a run is
judged by, and how the mem estimates move as models are added.
"""

import numpy as np

from feldman_zhang import estimate


def converged(loss):
  """(t,) bool: models whose every recorded epoch loss (t, epochs) is
  finite; the others are left out of every estimate. A loss that was inf
  once and finite later is a model that blew up and came back as something
  else: it is not the recipe's model."""
  return np.isfinite(loss).all(axis=1)


def memorizable(heldout_acc, low: float = 0.1, high: float = 0.9):
  """(n,) bool: the examples whose mem a run is judged by.

  Examples right (or wrong) in nearly every model of both groups have mem
  near 0 whatever t is, and a standard error that shrinks like 1/t from the
  empty-group smoothing alone: on easy data they would make the median
  standard error look small while the examples that matter stay noisy.
  These are the examples with held-out accuracy in [low, high]; where none
  are, every example.
  """
  keep = (heldout_acc >= low) & (heldout_acc <= high)
  return keep if keep.any() else np.ones_like(keep)


def median_stderr(est) -> float:
  """The median mem standard error over the memorizable examples."""
  return float(np.median(est['mem_stderr'][memorizable(est['heldout_acc'])]))


def convergence(masks, train_correct, fractions=(0.25, 0.5),
                full=None) -> list:
  """How mem moves as t grows: estimates from the first fraction of the
  models against those from all of them (`full`, if already estimated).

  Returns [dict(models, mean_abs_diff, max_abs_diff, correlation,
  median_stderr)] for each fraction, then for all models (correlation None
  where one side is constant and the two differ).
  """
  t = len(masks)
  if full is None:
    full = estimate.estimate(masks, train_correct, None, with_infl=False)
  out = []
  for k in estimate._convergence_counts(t, fractions):
    part = full if k == t else estimate.estimate(masks[:k], train_correct[:k],
                                                 None, with_infl=False)
    diff = np.abs(part['mem'] - full['mem'])
    if part['mem'].std() > 0 and full['mem'].std() > 0:
      corr = float(np.corrcoef(part['mem'], full['mem'])[0, 1])
    else:  # a constant side: equal arrays agree, others have no correlation
      corr = 1.0 if not diff.any() else None
    out.append(dict(models=k, mean_abs_diff=float(diff.mean()),
                    max_abs_diff=float(diff.max()), correlation=corr,
                    median_stderr=float(np.median(part['mem_stderr']))))
  return out
