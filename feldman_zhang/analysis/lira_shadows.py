"""The shadow groups LiRA's attacks score against (lira.py): for a target
model k, an example i and a view v, the scores phi of the OTHER models that
trained on i (IN) and of those that did not (OUT). Their locations are
medians, taken on the device from the two middle scores; their scales
population stds, taken on the host in float64; the fixed-variance attacks'
scales the stds pooled over examples and views. Each leaves the target out
by removing it from the whole group's statistics, so one pass serves every
target. The work goes by tiles of training examples (`tiles`).
"""

import jax
import jax.numpy as jnp
import numpy as np


def _loo_middle(phi, group, targets):
  """The two middle scores of each target's group without the target, whose
  mean is the group's median (np.median's rule).

  phi: (t, b, V) float32; group: (t, b, V) bool; targets: (T,) int32.
  Returns lo, hi (T, b, V) float32, NaN where the group is empty.
  """
  t = phi.shape[0]
  size = jnp.sum(group, 0, dtype=jnp.int32)
  keyed = jnp.where(group, phi, jnp.inf)  # the group first, in order
  order = jnp.argsort(keyed, axis=0)
  ordered = jnp.take_along_axis(keyed, order, axis=0)
  own = group[targets]
  # Dropping the target's entry shifts every later position by one; a tied
  # copy's position would give the same values.
  skip = jnp.where(own, jnp.argsort(order, axis=0)[targets], t)
  left = size[None] - own
  def at(p):
    p = jnp.maximum(p, 0)
    value = jnp.take_along_axis(ordered, jnp.minimum(p + (p >= skip), t - 1),
                                axis=0)
    return jnp.where(left > 0, value, jnp.nan)
  return at((left - 1) // 2), at(left // 2)


@jax.jit
def tile_middles(masks, phi, targets):
  """masks: (t, b) bool; phi: (t, b, V) float32; targets: (T,) int32 ->
  dict of (T, b, V) float32 in_lo, in_hi, out_lo, out_hi (_loo_middle),
  and whether every score is finite."""
  member = jnp.broadcast_to(masks[:, :, None], phi.shape)
  in_lo, in_hi = _loo_middle(phi, member, targets)
  out_lo, out_hi = _loo_middle(phi, ~member, targets)
  return dict(in_lo=in_lo, in_hi=in_hi, out_lo=out_lo, out_hi=out_hi,
              finite=jnp.all(jnp.isfinite(phi)))


def loo_std(phi, group, targets):
  """np.std of each target's group without the target: (T, b, V) float64,
  NaN where the group is empty.

  phi: (t, b, V) float64; group: (t, b, V) bool; targets: (T,) int.
  One pass serves every target: Welford's removal of the target from the
  group's two-pass sums. In float64 on the host because removing an
  outlier cancels: in float32 the sd of two close shadows (0.004, the third
  at 0.9 from them) came out 5e-4 off relatively, 15 in a score of 3400.
  """
  size = group.sum(0)
  total = np.where(group, phi, 0).sum(0)
  mean = total / np.maximum(size, 1)
  sq = np.where(group, np.square(phi - mean), 0).sum(0)
  x, own = phi[targets], group[targets]
  left = size - own
  mean_left = (total - x) / np.maximum(left, 1)
  sq_left = np.where(own, sq - (x - mean) * (x - mean_left), sq)
  var = np.where(left > 1, np.maximum(sq_left, 0) / np.maximum(left, 1), 0)
  return np.where(left > 0, np.sqrt(var), np.nan)


def tiles(masks, phi, tile):
  """(start, stop, masks (t, b), phi (t, b, V) float32) per tile of `tile`
  examples, the last padded so every tile compiles once."""
  n = masks.shape[1]
  tile = max(1, min(tile, n))
  for start in range(0, n, tile):
    stop = min(start + tile, n)
    m = np.zeros((masks.shape[0], tile), bool)
    p = np.zeros((phi.shape[0], tile, phi.shape[2]), np.float32)
    m[:, :stop - start], p[:, :stop - start] = (masks[:, start:stop],
                                                phi[:, start:stop])
    yield start, stop, m, p


def pooled_std(masks, phi, tile):
  """(2, t) float64: the std of the pooled IN (row 0) and OUT (row 1) scores
  of every model but the one in the column, over examples and views; NaN
  where none."""
  t, _, num_views = phi.shape
  shift = float(np.mean(phi[:, :min(tile, phi.shape[1])], dtype=np.float64))
  moments = np.zeros((2, 3, t))  # side, (count, sum, sum of squares), model
  for start in range(0, masks.shape[1], tile):
    d = np.asarray(phi[:, start:start + tile], np.float64) - shift
    member = masks[:, start:start + tile]
    for side, group in enumerate((member, ~member)):
      w = group[:, :, None]
      moments[side] += [group.sum(1) * num_views,
                        np.where(w, d, 0).sum((1, 2)),
                        np.where(w, d * d, 0).sum((1, 2))]
  pooled = moments.sum(2, keepdims=True) - moments  # leave each model out
  count, total, sq = pooled.transpose(1, 0, 2)
  with np.errstate(invalid='ignore', divide='ignore'):
    var = sq / count - np.square(total / count)
  return np.where(count > 0, np.sqrt(np.maximum(var, 0)), np.nan)
