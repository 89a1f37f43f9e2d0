r"""The linear datamodeling score (Ilyas et al. 2022, "Datamodels"; Park et
al. 2023, "TRAK"; dattri's `lds`) of an attribution score.

An attribution score[i, j] of training example i on test example j predicts
the output of a model trained on a subset S as sum_{i in S} score[i, j].
Given M held-out models, their subsets eval_masks (M, n) and their actual
outputs eval_out (M, n_test) (e.g. the margin phi on the test set, mean
over views):

  predicted = eval_masks @ score                          (M, n_test)
  LDS_j     = Spearman correlation over the M models of predicted[:, j]
              and eval_out[:, j]: Pearson's of the ranks, ties given their
              mean rank
  LDS       = mean over j of LDS_j

LDS_j is NaN where either side is constant over the models (or holds a
non-finite value); those test examples are left out of the mean and counted
(`excluded`). The interval is the 2.5 and 97.5 percentiles of the mean over
bootstrap resamples of the remaining test examples.

lds.py is the command that judges a run's influence this way.
"""

import jax
import jax.numpy as jnp
import numpy as np

from feldman_zhang import margins
from feldman_zhang.analysis import stats

# Test examples per device tile: the score columns (n, tile) and the
# predictions (M, tile) in float32, and M log M rank work per column.
TILE = 512
# 0/1 masks times scores: full float32 products, not TF32/bf16 passes.
_HIGHEST = jax.lax.Precision.HIGHEST


def random_scores(n: int, n_test: int, seed: int = 0) -> np.ndarray:
  """(n, n_test) float32 standard normal: the chance baseline of the LDS."""
  return np.random.default_rng(seed).standard_normal((n, n_test), np.float32)


@jax.jit
def _lds_tile(eval_masks, score, actual):
  """eval_masks: (M, n) bool; score: (n, b) float32; actual: (M, b) float32
  -> (b,) float32 Spearman correlations, NaN where a side is constant."""
  predicted = jnp.dot(eval_masks.astype(jnp.float32), score,
                      precision=_HIGHEST)
  return stats.column_spearman(predicted, actual)


def lds(score, eval_masks, eval_out, *, num_bootstrap: int = 200,
        seed: int = 0, tile: int = TILE) -> dict:
  """The linear datamodeling score of `score` (module doc).

  Args:
    score: (n, n_test) float attribution scores, e.g. infl_margin.
    eval_masks: (M, n) bool, the held-out models' training subsets.
    eval_out: (M, n_test) float, their outputs; a trailing view axis is
      averaged.
    num_bootstrap, seed: resamples of the test examples for the interval.
    tile: test examples per device tile.
  Returns:
    dict: value, lo, hi float (NaN where no test example has an LDS);
    per_test (n_test,) float64 LDS_j; excluded (NaN LDS_j), num_test int.
  """
  eval_masks = np.asarray(eval_masks, bool)
  eval_out = margins.over_views(eval_out, 2, 'eval_out')
  score = np.asarray(score)  # a memory map stays one
  n_test = eval_out.shape[1]
  if (score.ndim != 2 or eval_masks.ndim != 2 or
      score.shape != (eval_masks.shape[1], n_test) or
      eval_out.shape[0] != eval_masks.shape[0]):
    raise ValueError(f'score {score.shape}, eval_masks {eval_masks.shape} '
                     f'and eval_out {eval_out.shape} are not (n, n_test), '
                     '(M, n) and (M, n_test)')
  masks_dev = jnp.asarray(eval_masks)
  per_test = np.empty(n_test)
  tile = max(1, min(tile, n_test))
  for start in range(0, n_test, tile):
    stop = min(start + tile, n_test)
    s = np.zeros((score.shape[0], tile), np.float32)  # pad: one compile
    a = np.zeros((eval_out.shape[0], tile), np.float32)
    s[:, :stop - start], a[:, :stop - start] = (score[:, start:stop],
                                                eval_out[:, start:stop])
    per_test[start:stop] = np.asarray(_lds_tile(masks_dev, s, a))[
        :stop - start]
  values = per_test[~np.isnan(per_test)]
  out = dict(per_test=per_test, excluded=int(n_test - len(values)),
             num_test=n_test)
  if not len(values):
    return dict(value=float('nan'), lo=float('nan'), hi=float('nan'), **out)
  rng = np.random.default_rng(seed)
  means = [values[rng.integers(0, len(values), len(values))].mean()
           for _ in range(num_bootstrap)]
  lo, hi = np.percentile(means, [2.5, 97.5]) if means else (np.nan, np.nan)
  return dict(value=float(values.mean()), lo=float(lo), hi=float(hi), **out)


def curve_counts(t: int) -> tuple:
  """The model counts of the LDS curve: t/8, t/4, t/2 and t (those > 0)."""
  return tuple(sorted({c for c in (t // 8, t // 4, t // 2, t) if c > 0}))


def lds_curve(score_fn, counts, eval_masks, eval_out, **kwargs) -> list:
  """The LDS of scores estimated from more and more models.

  Args:
    score_fn: count -> (n, n_test) scores from the run's first `count`
      models, e.g. lambda c: infl_margin(masks[:c], phi_test[:c]); or a
      list of precomputed score matrices, one per count.
    counts: the model counts (curve_counts).
    eval_masks, eval_out, kwargs: as for lds().
  Returns:
    one lds() dict per count, with `count` added.
  """
  if not callable(score_fn) and len(score_fn) != len(counts):
    raise ValueError(f'{len(score_fn)} score matrices for {len(counts)} '
                     'counts')
  return [dict(count=c, **lds(score_fn(c) if callable(score_fn)
                              else score_fn[i], eval_masks, eval_out,
                              **kwargs))
          for i, c in enumerate(counts)]
