r"""ROC statistics of a membership attack over (target, example) pairs, and
their intervals (analysis/membership.py scores the pairs).

A pair is called a member when its score >= a threshold: one ROC point per
distinct score, from (0, 0); NaN scores are left out. From the ROC:

  auc           trapezoids (ties count 1/2)
  acc           the reference's balanced accuracy max(1 - (fpr + 1 - tpr) / 2)
  tpr_at_fpr    the largest TPR whose FPR is strictly below the level (the
                reference's tpr[np.where(fpr < level)[0][-1]])

Intervals: 2.5 and 97.5 percentiles over bootstrap resamples of the groups
the pairs belong to (the targets: a target's pairs share its model, so they
are resampled together), the same draws for every attack.
"""

import math

import numpy as np

from feldman_zhang.analysis import plots

LEVELS = (0.01, 0.001, 0.0001)


def _sorted_pairs(score, member):
  """Pairs with a score, by decreasing score: (keep, order, member sorted,
  index of each distinct score's last pair)."""
  keep = ~np.isnan(score)
  order = np.argsort(-score[keep], kind='stable')
  s = score[keep][order]
  ends = (np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1] if len(s)
          else np.zeros(0, np.int64))
  return keep, order, member[keep][order], ends


def _curve(member_sorted, ends, weight):
  """(fpr, tpr) float64 from (0, 0) over the thresholds; NaN if a class has
  no weight."""
  # Two passes over the pairs, not four: each bootstrap draw repeats this
  # over millions of pairs (MNIST: 64 targets x 60,000 examples).
  pos = np.cumsum(weight * member_sorted)[ends]
  neg = np.cumsum(weight)[ends] - pos
  total_pos, total_neg = (pos[-1], neg[-1]) if len(ends) else (0, 0)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.r_[0, neg] / total_neg, np.r_[0, pos] / total_pos


def roc(score, member, weight=None):
  """(fpr, tpr) float64 of the rule score >= threshold, one point per
  distinct score, from (0, 0); NaN scores left out.

  score: (P,) float; member: (P,) bool; weight: (P,) non-negative, each
  pair counted that many times (default 1).
  """
  score, member = np.asarray(score, np.float64), np.asarray(member, bool)
  keep, order, member_sorted, ends = _sorted_pairs(score, member)
  weight = np.ones(len(score)) if weight is None else np.asarray(weight)
  return _curve(member_sorted, ends, weight[keep][order])


def summary(fpr, tpr, levels=LEVELS) -> dict:
  """AUC, balanced accuracy and {str(level): TPR at FPR < level} of an ROC
  from roc(); NaN for an ROC without both classes."""
  if np.isnan(fpr[-1]) or np.isnan(tpr[-1]):
    nan = float('nan')
    return dict(auc=nan, acc=nan, tpr_at_fpr={str(q): nan for q in levels})
  # Trapezoids, not stats.auc's rank sum: the same statistic for unit
  # weights (ties 1/2), but the bootstrap's draws reweight the pairs.
  auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
  acc = float(np.max(1 - (fpr + (1 - tpr)) / 2))
  # tpr never falls as fpr grows: the largest below the level is the last
  # point below it (fpr[0] = 0 is).
  last = np.searchsorted(fpr, levels, side='left') - 1
  return dict(auc=auc, acc=acc, tpr_at_fpr={str(q): float(tpr[i])
                                            for q, i in zip(levels, last)})


def bootstrap_draws(num_groups: int, num_bootstrap: int = 200,
                    seed: int = 0) -> list:
  """num_bootstrap (num_groups,) int64 counts: how often each group is drawn
  in a resample with replacement (seeded)."""
  rng = np.random.default_rng(seed)
  return [np.bincount(rng.integers(0, num_groups, num_groups),
                      minlength=num_groups) for _ in range(num_bootstrap)]


def interval(value, draws) -> dict:
  """{value, lo, hi}: lo and hi the 2.5 and 97.5 percentiles of the finite
  draws (NaN if none)."""
  lo, hi = (np.nanpercentile(draws, [2.5, 97.5]) if np.isfinite(draws).any()
            else (np.nan, np.nan))
  return dict(value=value, lo=float(lo), hi=float(hi))


def statistics(score, member, group, draws, levels=LEVELS) -> dict:
  """summary() of the pairs with bootstrap intervals.

  score: (P,) float, NaN for a pair without one; member: (P,) bool; group:
  (P,) int, each pair's group (its target) indexing the draws'
  counts; draws: bootstrap_draws().
  Returns {'auc', 'acc': {'value', 'lo', 'hi'}, 'tpr_at_fpr': {str(level):
  {...}}, 'roc': {'fpr', 'tpr'} float64 arrays, 'excluded': pairs without
  a score}.
  """
  score = np.asarray(score, np.float64)
  keep, order, member_sorted, ends = _sorted_pairs(score, np.asarray(member))
  fpr, tpr = _curve(member_sorted, ends, np.ones(len(order)))
  point = summary(fpr, tpr, levels)
  owner = np.asarray(group)[keep][order]
  boot = [summary(*_curve(member_sorted, ends, w[owner]), levels)
          for w in draws]
  return dict(
      auc=interval(point['auc'], [b['auc'] for b in boot]),
      acc=interval(point['acc'], [b['acc'] for b in boot]),
      tpr_at_fpr={q: interval(v, [b['tpr_at_fpr'][q] for b in boot])
                  for q, v in point['tpr_at_fpr'].items()},
      roc=dict(fpr=fpr, tpr=tpr), excluded=int((~keep).sum()))


def threshold_at_fpr(score_out, level: float) -> float:
  """v such that `score > v` has the largest FPR below level over the
  non-members' scores score_out (NaN left out): the (K+1)-th largest, K =
  ceil(level N) - 1 (ties at v may leave fewer above it); NaN if none."""
  if not 0 < level <= 1:
    raise ValueError(f'the FPR level must lie in (0, 1], not {level}')
  s = np.asarray(score_out, np.float64)
  s = s[~np.isnan(s)]
  if not len(s):
    return float('nan')
  k = math.ceil(level * len(s)) - 1
  return float(-np.partition(-s, k)[k])


# -- the figure ---------------------------------------------------------------

# The log axes' floor: a pool of 64 targets on MNIST has ~2e6 non-member
# pairs, so its smallest nonzero FPR is ~5e-7; the LiRA paper's figures
# start at 1e-5.
FPR_FLOOR = 1e-5


def thin(fpr, tpr, points: int = 2000):
  """The ROC at most ~2 * points of its points, the same curve on log and
  linear axes to the eye: for each of `points` FPRs spaced evenly in log
  from FPR_FLOOR / 10 to 1 and as many linearly, the last point at or
  below it (the highest TPR there). Millions of pairs give millions of
  points, too many to draw."""
  fpr, tpr = np.asarray(fpr), np.asarray(tpr)
  if len(fpr) <= 2 * points or np.isnan(fpr[-1]):
    return fpr, tpr
  grid = np.r_[np.logspace(math.log10(FPR_FLOOR) - 1, 0, points),
               np.linspace(0, 1, points)]
  idx = np.unique(np.r_[0, np.searchsorted(fpr, grid, side='right') - 1,
                        len(fpr) - 1])
  return fpr[idx], tpr[idx]


def roc_figure(results: dict, title: str, level: str = '0.001'):
  """The LiRA paper's ROC figure: TPR against FPR, both on log axes from
  FPR_FLOOR to 1, chance dashed; the legend gives each attack's AUC and
  its TPR at FPR `level`.

  results: {attack: statistics()}.
  """
  fig = plots.new_figure(5.5, 5)
  ax = fig.subplots()
  for name, r in results.items():
    fpr, tpr = thin(r['roc']['fpr'], r['roc']['tpr'])
    # A TPR of 0 has no place on a log axis; an FPR of 0 shows at the
    # left edge (the TPR reached before any non-member is called).
    shown = tpr > 0
    ax.plot(np.maximum(fpr[shown], FPR_FLOOR / 10), tpr[shown], lw=1.2,
            label=f'{name}  AUC {r["auc"]["value"]:.3f}, TPR@'
            f'{float(level):.1%} {r["tpr_at_fpr"][level]["value"]:.2%}')
  ax.plot([FPR_FLOOR, 1], [FPR_FLOOR, 1], ls='--', color='gray', lw=0.8)
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlim(FPR_FLOOR, 1)
  ax.set_ylim(FPR_FLOOR, 1)
  ax.set_xlabel('false positive rate')
  ax.set_ylabel('true positive rate')
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, loc='lower right')
  fig.tight_layout()
  return fig
