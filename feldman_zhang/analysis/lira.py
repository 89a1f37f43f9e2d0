r"""LiRA (Carlini et al. 2022, "Membership Inference Attacks From First
Principles") against a pool of models on random subsets: the attacks'
scores; their shadow groups' statistics are lira_shadows.py's, and
membership.py is the command.

Every model is a target in turn; its shadow pool is every OTHER model. For a
target k, example i and view v, the shadow scores of i split into IN (the
shadows that trained on i) and OUT (the others). Following the reference's
research/mi_lira_2021/plot.py (tensorflow/privacy) exactly, a group's
location is the MEDIAN of its scores (np.median, the mean of the two middle
ones for an even count) and its scale the population std (np.std, ddof 0),
plus 1e-30. With N(x; mu, sd) the Gaussian log-density and x = phi[k, i, v],
each attack's score is a mean over views, higher = more likely a member:

  online            N(x; med_in, sd_in)  - N(x; med_out, sd_out)
  online_fixed      as online, sd_in and sd_out the std of all IN (OUT)
                    shadow scores pooled over examples and views
  offline           -N(x; med_out, sd_out)
  offline_fixed     as offline with the pooled OUT std
  offline_onesided  log Phi((x - med_out) / sd_out)
  global            x

The reference negates its predictions before the ROC (roc_curve(x, -score)),
so "higher = member" is its own orientation. Its `offline` is the two-sided
negative log-likelihood under the OUT Gaussian (a score far below the OUT
scores also reads as a member); the paper's Algorithm 1 is the one-sided
test, here `offline_onesided`. Differences from the reference: it keeps
only the first min_i |IN_i| (|OUT_i|) shadows of every example, to make a
rectangle; we use them all. Its fixed-variance online attack takes both
scales from the IN scores (`std_out = np.std(dat_in)`); we take the OUT one
from the OUT scores, as its offline attack does.

A group left empty by the pool (an example every shadow trained on, or
none) has no location: the scores that need it are NaN, left out of the
ROC, and counted (`excluded`). Groups of one shadow have sd 0, i.e. 1e-30.
The statistics of the (target, example) pairs, label masks[k, i], and their
intervals (bootstrap over the targets) are roc.py's.
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy import special as jax_special
import numpy as np

from feldman_zhang.analysis import lira_shadows
from feldman_zhang.analysis import roc

ATTACKS = ('online', 'online_fixed', 'offline', 'offline_fixed',
           'offline_onesided', 'global')
LEVELS = roc.LEVELS
# Added to every scale, as the reference does: a one-shadow group has sd 0.
_EPS = 1e-30
# Training examples per tile: the device sorts t * tile * V scores, about
# ten arrays of that size (keys, orders, ranks of both groups), and the host
# holds as many in float64 for the scales.
TILE = 512


def _check(masks, phi):
  """(masks (t, n) bool, phi (t, n, V)) with a 2-d phi read as V = 1."""
  masks, phi = np.asarray(masks), np.asarray(phi)
  if phi.ndim == 2:
    phi = phi[:, :, None]
  if masks.ndim != 2 or masks.dtype != bool:
    raise ValueError(f'masks must be (t, n) bool, not {masks.dtype}'
                     f'{masks.shape}')
  if phi.ndim != 3 or phi.shape[:2] != masks.shape:
    raise ValueError(f'phi is {phi.shape}, masks {masks.shape}: not (t, n, V)'
                     ' for the same models and examples')
  return masks, phi


def choose_targets(t: int, count: int = 64, seed: int = 0) -> np.ndarray:
  """(min(count, t),) int64: a seeded sample of target models, sorted."""
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(t, min(count, t), replace=False))


def _logpdf(x, loc, scale):
  """scipy.stats.norm.logpdf(x, loc, scale + 1e-30) in float64."""
  scale = scale + _EPS
  z = (x - loc) / scale
  return -0.5 * z * z - np.log(scale) - 0.5 * math.log(2 * math.pi)


# One compiled program, not one per primitive of an eager call.
_log_ndtr = jax.jit(jax_special.log_ndtr)


def _log_cdf(z):
  """log Phi(z) of float64 z: jax's log_ndtr (float32 inside, relative
  error ~1e-7) down to z = -10, the asymptotic series of the Mills ratio
  in float64 below, where float32 would overflow (a one-shadow group's sd
  of 1e-30 gives z ~ 1e30)."""
  far = z < -10
  near = np.asarray(_log_ndtr(np.where(far, -10, z).astype(np.float32)),
                    np.float64)
  zf = np.where(far, z, -10)
  r = 1 / (zf * zf)
  far_value = (-0.5 * zf * zf - np.log(-zf) - 0.5 * math.log(2 * math.pi) +
               np.log1p(r * (-1 + r * (3 + r * (-15 + r * 105)))))
  return np.where(far, far_value, near)


def _score(name, s, pooled):
  """(T, b) float64 scores of one attack from the float64 stats s: x, med_in,
  med_out, sd_in, sd_out (T, b, V); pooled (2, T, 1, 1) or None."""
  x = s['x']
  if name == 'online':
    v = (_logpdf(x, s['med_in'], s['sd_in']) -
         _logpdf(x, s['med_out'], s['sd_out']))
  elif name == 'online_fixed':
    v = (_logpdf(x, s['med_in'], pooled[0]) -
         _logpdf(x, s['med_out'], pooled[1]))
  elif name == 'offline':
    v = -_logpdf(x, s['med_out'], s['sd_out'])
  elif name == 'offline_fixed':
    v = -_logpdf(x, s['med_out'], pooled[1])
  elif name == 'offline_onesided':
    v = _log_cdf((x - s['med_out']) / (s['sd_out'] + _EPS))
  else:  # global
    v = x
  return v.mean(-1)


def _score_tiles(masks, phi, targets, attacks, tile):
  """(start, stop, {attack: (T, stop - start) float64}) per tile."""
  pooled = None
  if any(a.endswith('_fixed') for a in attacks):
    pooled = lira_shadows.pooled_std(masks, phi, tile)[:, targets, None, None]
  targets_dev = jnp.asarray(targets, jnp.int32)
  for start, stop, m, p in lira_shadows.tiles(masks, phi, tile):
    mid = lira_shadows.tile_middles(m, p, targets_dev)
    if not bool(mid.pop('finite')):
      raise ValueError(f'phi holds non-finite scores in examples {start} to '
                       f'{stop - 1}')
    b = stop - start
    mid = {k: np.asarray(v, np.float64)[:, :b] for k, v in mid.items()}
    phi64 = p[:, :b].astype(np.float64)
    member = np.broadcast_to(m[:, :b, None], phi64.shape)
    s = dict(x=phi64[targets], med_in=(mid['in_lo'] + mid['in_hi']) / 2,
             med_out=(mid['out_lo'] + mid['out_hi']) / 2,
             sd_in=lira_shadows.loo_std(phi64, member, targets),
             sd_out=lira_shadows.loo_std(phi64, ~member, targets))
    with np.errstate(invalid='ignore', over='ignore', divide='ignore'):
      scores = {a: _score(a, s, pooled) for a in attacks}
    yield start, stop, scores


def lira_scores(masks, phi_train, targets, attacks=ATTACKS,
                tile: int = TILE) -> dict:
  """Each attack's score of every (target, example) pair (module doc).

  Args:
    masks: (t, n) bool, masks[k, i] is whether model k trained on example i.
    phi_train: (t, n, V) float, the margins of every model on every training
      example in each view; (t, n) reads as V = 1.
    targets: (T,) int, the target models.
    attacks: names from ATTACKS.
    tile: examples per device tile.
  Returns:
    {attack: (T, n) float64}, higher = member, NaN where undefined.
  """
  masks, phi_train = _check(masks, phi_train)
  unknown = set(attacks) - set(ATTACKS)
  if unknown:
    raise ValueError(f'unknown attacks {sorted(unknown)}: choose from '
                     f'{", ".join(ATTACKS)}')
  targets = np.asarray(targets, np.int64)
  out = {a: np.empty((len(targets), masks.shape[1])) for a in attacks}
  for start, stop, scores in _score_tiles(masks, phi_train, targets, attacks,
                                          tile):
    for a, v in scores.items():
      out[a][:, start:stop] = v
  return out



def attack_all(masks, phi_train, targets=None, *, attacks=ATTACKS,
               levels=LEVELS, num_bootstrap: int = 200, seed: int = 0,
               tile: int = TILE) -> dict:
  """Every attack's ROC statistics over (target, training example) pairs.

  Args:
    masks: (t, n) bool; phi_train: (t, n, V) float (lira_scores).
    targets: (T,) int model indices, 'all', or None for choose_targets(t,
      64, seed).
    attacks, levels: which attacks, and the FPR levels for TPR at FPR.
    num_bootstrap: resamples of the targets (with replacement, seeded, the
      same draws for every attack) for the 95% percentile intervals.
  Returns:
    {attack: roc.statistics() ('auc', 'acc': {'value', 'lo', 'hi'},
    'tpr_at_fpr': {'0.01': {...}, ...}, 'roc': {'fpr', 'tpr'}, 'excluded':
    pairs without a score) and 'targets' (T,) int64, 'pairs': T n}.
  """
  masks, phi_train = _check(masks, phi_train)
  t = masks.shape[0]
  if targets is None:
    targets = choose_targets(t, seed=seed)
  elif isinstance(targets, str) and targets == 'all':
    targets = np.arange(t)
  targets = np.asarray(targets, np.int64)
  scores = lira_scores(masks, phi_train, targets, attacks, tile)
  member = masks[targets].ravel()
  pair_target = np.repeat(np.arange(len(targets)), masks.shape[1])
  draws = roc.bootstrap_draws(len(targets), num_bootstrap, seed)
  return {a: dict(roc.statistics(scores[a].ravel(), member, pair_target,
                                 draws, levels),
                  targets=targets, pairs=member.size)
          for a in attacks}


def per_example(masks, phi_train, *, level: float = 0.01,
                tile: int = TILE) -> dict:
  """Per training example, the online attack with every model as target.

  With s[k, i] the online score of target k (its pool every other model),
  in_minus_out[i] is the mean of s[k, i] over the models that trained on i
  minus the mean over the others, and tpr[i] (fpr[i]) the fraction of them
  called members by one global threshold: score > v, v from
  roc.threshold_at_fpr over every non-member pair, the largest global FPR
  below `level` (the attack_all rule). Pairs without a score are left out;
  NaN where a side has none. Holds the (t, n) scores in float64: a
  one-shadow group's sd of 1e-30 gives scores past float32's range.

  Returns dict: in_minus_out, score_in, score_out, tpr, fpr (n,) float64;
  num_in, num_out (n,) int64 (scored pairs); threshold, level float.
  """
  masks, phi_train = _check(masks, phi_train)
  t, n = masks.shape
  s = np.empty((t, n))
  for start, stop, scores in _score_tiles(masks, phi_train, np.arange(t),
                                          ('online',), tile):
    s[:, start:stop] = scores['online']
  v = roc.threshold_at_fpr(s[~masks], level)
  out = dict(threshold=v, level=level)
  scored = ~np.isnan(s)
  for side, member in (('in', masks), ('out', ~masks)):
    count = (member & scored).sum(0)
    total = np.where(member & scored, s, 0).sum(0, dtype=np.float64)
    # No threshold without a scored non-member: no rate either.
    above = (member & (s > v)).sum(0) if not math.isnan(v) else np.nan
    with np.errstate(invalid='ignore', divide='ignore'):
      out[f'score_{side}'] = np.where(count > 0, total / count, np.nan)
      out['tpr' if side == 'in' else 'fpr'] = np.where(count > 0,
                                                       above / count, np.nan)
    out[f'num_{side}'] = count.astype(np.int64)
  out['in_minus_out'] = out['score_in'] - out['score_out']
  return out
