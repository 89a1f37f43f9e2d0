"""Memorization and influence estimates from subset masks and correctness.

With A_i the models whose subset holds example i and B_i the others:

  mem_i    = mean_{k in A_i} correct[k, i]      - mean_{k in B_i} correct[k, i]
  infl_ij  = mean_{k in A_i} test_correct[k, j] - mean_{k in B_i} test_correct[k, j]

and a mean over an empty set is 1/2. Every sum is an exact integer count: the
infl counts are one matrix product masks^T @ test_correct of 0/1 values, exact
in bf16 inputs with f32 accumulation while t < 2^24, so estimates do not
depend on how the models were split over devices or chunks.
"""

import fractions
import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from feldman_zhang import pairs as pairs_lib

# The top-k form keeps at most this many pairs (the largest).
MAX_PAIRS = 1_000_000

# The mean over an empty group, as the fraction the exact kernels divide.
EMPTY_MEAN = fractions.Fraction(1, 2)


def _long_div(num, den):
  """Correctly rounded f32 num / den by integer long division.

  num, den: int32 arrays of one shape, 0 < den < 2^31, |num| <= den. XLA's
  f32 division on GPUs is div.full.f32, off by up to 2 ulp (openxla/xla
  #37181: a / a can be 0.99999994), which can put a value that equals a bar
  just under it. 24 quotient bits, a guard bit and a sticky bit, rounded to
  nearest even: every backend gives the same bits.
  """
  a = jnp.abs(num).astype(jnp.uint32)
  d = den.astype(jnp.uint32)
  # Shift a to d's bit length, then once more if it is below d: a in [d, 2d),
  # which fits uint32 since d < 2^31.
  s = (jax.lax.clz(a) - jax.lax.clz(d)).astype(jnp.uint32)
  a = jnp.where(num == 0, d, a << s)
  low = a < d
  a, s = jnp.where(low, a << 1, a), jnp.where(low, s + 1, s)
  r, mant = a - d, jnp.ones_like(a)
  for _ in range(24):  # 23 more mantissa bits, then the guard bit.
    r = r << 1
    bit = r >= d
    r = jnp.where(bit, r - d, r)
    mant = (mant << 1) | bit.astype(jnp.uint32)
  guard, mant = mant & 1, mant >> 1
  mant = mant + (guard & ((r != 0) | (mant & 1)).astype(jnp.uint32))
  # mant * 2^(-23 - s), with the power of two built from its exponent bits.
  scale = jax.lax.bitcast_convert_type(
      ((127 - 23 - s.astype(jnp.int32)) << 23), jnp.float32)
  value = mant.astype(jnp.float32) * scale
  return jnp.where(num == 0, 0.0, jnp.where(num < 0, -value, value))


def _f32_div(num, den):
  # XLA rewrites a division by a broadcast into a multiplication by its
  # reciprocal, a second rounding: the barrier keeps the division whole.
  den = jax.lax.optimization_barrier(den)
  return num.astype(jnp.float32) / den.astype(jnp.float32)


def _div_rn(num, den, max_den: int):
  """num / den as f32, one correct rounding of the exact fraction.

  num, den: int32 arrays that broadcast together, 0 < den <= max_den < 2^31,
  |num| <= den. The CPU's f32 division is IEEE's (correctly rounded) while
  both operands are exact in f32, i.e. max_den <= 2^24; elsewhere, and above
  that, the quotient comes from integer long division.
  """
  num, den = jnp.broadcast_arrays(num, den)
  if max_den <= 2**24:
    return jax.lax.platform_dependent(num, den, cpu=_f32_div,
                                      default=_long_div)
  return _long_div(num, den)


def _as_fraction(total, count):
  """(total, count) with an empty group's mean, 1/2, as the fraction 1/2."""
  empty = count == 0
  return (jnp.where(empty, EMPTY_MEAN.numerator, total),
          jnp.where(empty, EMPTY_MEAN.denominator, count))


def _mean(total, count, t: int):
  """total / count of t models, correctly rounded; an empty group's is 1/2."""
  return _div_rn(*_as_fraction(total, count), max(t, 2))


def _var_of_mean(total, count):
  """Variance of a group's mean of 0/1 values.

  p(1-p)/count with p smoothed by half a success and half a failure
  ((total + 1/2) / (count + 1)): a group that is all right or all wrong still
  has some uncertainty, where the raw p would claim none (and a 95% interval
  would then miss every example whose true rate is just below 1). An empty
  group counts as one observation of the largest variance, 1/4.
  """
  p = (total + 0.5) / (count + 1)
  return jnp.where(count > 0, p * (1 - p) / jnp.maximum(count, 1), 0.25)


# The counts' products are at most t^2 / 4: exact in int32 below this t.
_EXACT_T = 92_681


def _diff_of_means(right_in, num_in, right_out, num_out, t: int):
  """mean_in - mean_out from int32 counts of t models, as one rounding of
  the exact fraction (right_in num_out - right_out num_in) / (num_in num_out).

  The difference of two rounded means can land just under a value it equals
  (13/20 - 10/20 = 0.15 comes out 0.14999998 in f32), losing a pair that sits
  exactly on the paper's infl >= 0.15 bar. One correct rounding is monotonic:
  no value at or over a bar falls under it, on any backend. An empty group's
  mean 1/2 enters as the fraction 1/2. From _EXACT_T models on, the products
  would overflow int32 and the two rounded means are subtracted instead.
  """
  if t >= _EXACT_T:
    return _mean(right_in, num_in, t) - _mean(right_out, num_out, t)
  right_in, num_in = _as_fraction(right_in, num_in)
  right_out, num_out = _as_fraction(right_out, num_out)
  return _div_rn(right_in * num_out - right_out * num_in, num_in * num_out,
                 max(t * t // 4, 2 * t))


@jax.jit
def _memorization(masks, correct):
  """masks, correct: (t, n) bool -> dict of (n,) arrays."""
  t = masks.shape[0]
  num_in = jnp.sum(masks, 0, dtype=jnp.int32)
  num_out = t - num_in
  right_in = jnp.sum(masks & correct, 0, dtype=jnp.int32)
  right_out = jnp.sum(correct, 0, dtype=jnp.int32) - right_in
  in_acc, out_acc = _mean(right_in, num_in, t), _mean(right_out, num_out, t)
  stderr = jnp.sqrt(_var_of_mean(right_in, num_in) +
                    _var_of_mean(right_out, num_out))
  mem = _diff_of_means(right_in, num_in, right_out, num_out, t)
  return dict(mem=mem, mem_stderr=stderr, in_acc=in_acc,
              heldout_acc=out_acc, num_in=num_in)


def _matmul_dtype():
  # 0/1 operands are exact in bf16; the CPU has no fast bf16 matmul.
  return jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16


@functools.partial(jax.jit, static_argnames=('with_stderr',))
def influence_block(masks_block, test_correct, num_in, with_stderr):
  """masks_block: (t, b) bool; test_correct: (t, n_test) bool -> (b, n_test).

  Each entry depends only on its own training and test column and t: the
  dense estimate's tiles and paper_files.infl_per_class's class blocks are
  the same numbers."""
  t = masks_block.shape[0]
  dtype = _matmul_dtype()
  right_in = jnp.dot(masks_block.T.astype(dtype), test_correct.astype(dtype),
                     preferred_element_type=jnp.float32).astype(jnp.int32)
  right_all = jnp.sum(test_correct, 0, dtype=jnp.int32)
  num_in = num_in[:, None]
  num_out = t - num_in
  right_out = right_all[None, :] - right_in
  infl = _diff_of_means(right_in, num_in, right_out, num_out, t)
  stderr = (jnp.sqrt(_var_of_mean(right_in, num_in) +
                     _var_of_mean(right_out, num_out)) if with_stderr else None)
  return infl, stderr


def estimate(masks, train_correct, test_correct, *, with_infl: bool = True,
             with_infl_stderr: bool = False, block: int = 4096,
             infl_out=None, infl_stderr_out=None) -> dict:
  """Feldman-Zhang estimates.

  Args:
    masks: (t, n) bool, masks[k, i] is whether model k trained on example i.
    train_correct: (t, n) bool, whether model k classifies train example i.
    test_correct: (t, n_test) bool, likewise for test example j.
    with_infl: compute infl (n, n_test).
    with_infl_stderr: also its standard errors (n, n_test).
    block: training examples per influence tile; device memory holds
      test_correct and, per tile, its masks, the exact fraction's
      denominator and the outputs of two tiles: about (t + 3 * n_test) *
      block elements (more with the standard errors).
    infl_out, infl_stderr_out: (n, n_test) float32 arrays to fill instead of
      new ones, e.g. store.new_dense memory maps, so the tiles go to disk as
      they arrive.
  Returns:
    dict of numpy arrays: mem, mem_stderr, in_acc, heldout_acc (n,) float32;
    num_in (n,) int32; num_models () int64; infl, infl_stderr (n, n_test)
    float32 when asked for.
  """
  masks = jnp.asarray(masks, bool)
  t, n = masks.shape
  if t == 0:
    raise ValueError('no models to estimate from')
  out = {k: np.asarray(v)
         for k, v in _memorization(masks, jnp.asarray(train_correct, bool)).items()}
  out['num_models'] = np.int64(t)
  if with_infl:
    test_correct = jnp.asarray(test_correct, bool)
    shape = (n, test_correct.shape[1])
    infl = np.empty(shape, np.float32) if infl_out is None else infl_out
    infl_se = None
    if with_infl_stderr:
      infl_se = (np.empty(shape, np.float32) if infl_stderr_out is None else
                 infl_stderr_out)
    for dest in (infl, infl_se):
      if dest is not None and (dest.shape != shape or dest.dtype != np.float32):
        raise ValueError(f'an output array is {dest.dtype}{dest.shape}, not '
                         f'float32{shape}')
    num_in = jnp.asarray(out['num_in'])
    block = min(block, n)

    def copy_out(lo, values, se):
      infl[lo:lo + block] = np.asarray(values)
      if with_infl_stderr:
        infl_se[lo:lo + block] = np.asarray(se)

    pending = None
    for start in range(0, n, block):
      # Every tile has the same shape (the last overlaps the one before), so
      # the influence kernel compiles once.
      start = min(start, n - block)
      tile = (start, *influence_block(masks[:, start:start + block],
                                       test_correct,
                                       num_in[start:start + block],
                                       with_infl_stderr))
      # The next tile is dispatched before the last one is copied out, so the
      # device computes while the host copies (and writes, into a map).
      if pending:
        copy_out(*pending)
      pending = tile
    copy_out(*pending)
    out['infl'] = infl
    if with_infl_stderr:
      out['infl_stderr'] = infl_se
  return out


@functools.partial(jax.jit, static_argnames=('k',))
def _merge_top(top_vals, top_idx, tile, start, k):
  """Keeps the k largest per test column of [running top; tile].

  top_vals, top_idx: (k, n_test); tile: (b, n_test) rows start..start+b-1.
  """
  rows = start + jnp.arange(tile.shape[0], dtype=jnp.int32)
  vals = jnp.concatenate([top_vals, tile])
  idx = jnp.concatenate([top_idx, jnp.broadcast_to(rows[:, None], tile.shape)])
  # top_k runs along the last axis: work on (n_test, k + b).
  best, where = jax.lax.top_k(vals.T, k)
  return best.T, jnp.take_along_axis(idx.T, where, axis=1).T


@functools.partial(jax.jit, static_argnames=('size',))
def _pairs_over(tile, threshold, size):
  """(rows, cols, values) of the tile's entries >= threshold, padded to size
  (a power of two, so few sizes compile)."""
  rows, cols = jnp.nonzero(tile >= threshold, size=size)
  return rows, cols, tile[rows, cols]


def top_influence(masks, test_correct, k: int, threshold: float = 1.0,
                  block: int = 4096, max_pairs: int = MAX_PAIRS,
                  pair_rows=None) -> dict:
  """Top-k influence per test example, tile by tile: never the full matrix.

  For ImageNet-scale runs, where infl (n, n_test) would not fit in memory
  (1.28M x 50k floats is 256 GB), each tile of `block` training rows is
  computed on the device, merged into the running top-k, and dropped.

  Args:
    masks: (t, n) bool; test_correct: (t, n_test) bool.
    k: training examples kept per test example.
    threshold: also keep every pair with infl >= threshold (at most
      max_pairs of them, largest first).
    block: training rows per tile.
    pair_rows: (n,) bool, the training examples whose pairs are kept (e.g.
      mem >= 0.25, the paper's bar), so that pairs of low-mem examples do not
      crowd them out of max_pairs; None keeps every row's.
  Returns:
    top_infl (k, n_test) float32 and top_train (k, n_test) int32, best first
    along axis 0; pair_train, pair_test (P,) int32 and pair_infl (P,) float32;
    pairs_dropped () int64, the pairs past max_pairs (0: the list is whole).
  """
  masks = jnp.asarray(masks, bool)
  test_correct = jnp.asarray(test_correct, bool)
  n, n_test = masks.shape[1], test_correct.shape[1]
  k = min(k, n)
  num_in = jnp.sum(masks, 0, dtype=jnp.int32)
  pair_rows = (jnp.ones(n, bool) if pair_rows is None else
               jnp.asarray(pair_rows, bool))
  top_vals = jnp.full((k, n_test), -jnp.inf, jnp.float32)
  top_idx = jnp.zeros((k, n_test), jnp.int32)
  pairs, num_pairs = [], 0
  block = min(block, n)
  for start in range(0, n, block):
    # Tiles keep one shape: the last one overlaps the one before, and its
    # repeated rows are masked out of the merge and the pairs.
    lo = min(start, n - block)
    tile, _ = influence_block(masks[:, lo:lo + block], test_correct,
                               num_in[lo:lo + block], False)
    fresh = jnp.arange(block) >= start - lo
    tile = jnp.where(fresh[:, None], tile, -jnp.inf)
    top_vals, top_idx = _merge_top(top_vals, top_idx, tile, lo, k)
    # Only the pairs over the threshold leave the device (usually none):
    # at ImageNet scale the tiles together are 256 GB.
    tile = jnp.where(pair_rows[lo:lo + block, None], tile, -jnp.inf)
    count = int(jnp.sum(tile >= threshold))
    if count:
      rows, cols, vals = _pairs_over(tile, threshold,
                                     1 << (count - 1).bit_length())
      pairs.append((np.asarray(rows)[:count] + lo, np.asarray(cols)[:count],
                    np.asarray(vals)[:count]))
      num_pairs += count
      if sum(len(p[0]) for p in pairs) > 2 * max_pairs:
        pairs = [pairs_lib.largest(pairs, max_pairs)]  # host memory stays bounded
  if num_pairs > max_pairs:
    logging.warning('%d pairs have infl >= %g; keeping the %d largest',
                    num_pairs, threshold, max_pairs)
  pair_train, pair_test, pair_infl = pairs_lib.largest(pairs, max_pairs)
  return dict(top_infl=np.asarray(top_vals), top_train=np.asarray(top_idx),
              pair_train=pair_train, pair_test=pair_test, pair_infl=pair_infl,
              pairs_dropped=np.int64(num_pairs - len(pair_infl)))


def topk_estimates(masks, test_correct, mem, k: int, pair_threshold: float,
                   pair_mem_threshold: float, **kwargs) -> dict:
  """The top-k form as estimates.npz holds it: top_influence's arrays under
  infl_*, and the bars its pairs were kept at (infl_pair_threshold,
  infl_pair_mem_threshold), so a reader knows where the list is whole.

  mem: (n,) the run's memorization estimates.
  """
  top = top_influence(masks, test_correct, k, pair_threshold,
                      pair_rows=mem >= pair_mem_threshold, **kwargs)
  top.update(pair_threshold=np.float64(pair_threshold),
             pair_mem_threshold=np.float64(pair_mem_threshold))
  return {f'infl_{key}': v for key, v in top.items()}


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


def compile_ahead(t: int, n: int, n_test: int, *, with_infl: bool = True,
                  with_infl_stderr: bool = False, block: int = 4096,
                  fractions=(0.25, 0.5)) -> None:
  """Compiles the programs that estimate() and convergence() run for t
  models, n training and n_test test examples, without running them: on a
  thread while the device trains, they are ready when the models are
  (seconds of compiling saved: BENCHMARKS.md). jit keeps them; a call of
  other shapes compiles its own as before."""
  spec = jax.ShapeDtypeStruct
  for k in _convergence_counts(t, fractions):
    _memorization.lower(spec((k, n), bool), spec((k, n), bool)).compile()
  if with_infl:
    block = min(block, n)
    influence_block.lower(spec((t, block), bool), spec((t, n_test), bool),
                           spec((block,), jnp.int32),
                           with_infl_stderr).compile()


def _convergence_counts(t, fractions):
  # Small t rounds fractions to the same count: each count once.
  return list(dict.fromkeys(max(1, int(round(f * t)))
                            for f in tuple(fractions) + (1.0,)))


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
    full = estimate(masks, train_correct, None, with_infl=False)
  out = []
  for k in _convergence_counts(t, fractions):
    part = full if k == t else estimate(masks[:k], train_correct[:k], None,
                                        with_infl=False)
    diff = np.abs(part['mem'] - full['mem'])
    if part['mem'].std() > 0 and full['mem'].std() > 0:
      corr = float(np.corrcoef(part['mem'], full['mem'])[0, 1])
    else:  # a constant side: equal arrays agree, others have no correlation
      corr = 1.0 if not diff.any() else None
    out.append(dict(models=k, mean_abs_diff=float(diff.mean()),
                    max_abs_diff=float(diff.max()), correlation=corr,
                    median_stderr=float(np.median(part['mem_stderr']))))
  return out
