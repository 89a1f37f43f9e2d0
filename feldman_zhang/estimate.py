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
      new ones, e.g. estimates_file.new_dense memory maps, so the tiles go to
      disk as they arrive.
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


def compile_ahead(t: int, n: int, n_test: int, *, with_infl: bool = True,
                  with_infl_stderr: bool = False, block: int = 4096,
                  fractions=(0.25, 0.5)) -> None:
  """Compiles the programs that estimate() and diagnostics.convergence() run
  for t models, n training and n_test test examples, without running them:
  on a thread while the device trains, they are ready when the models are
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
  # Here, not in diagnostics, so compile_ahead can compile convergence's
  # programs without importing the module above it.
  # Small t rounds fractions to the same count: each count once.
  return list(dict.fromkeys(max(1, int(round(f * t)))
                            for f in tuple(fractions) + (1.0,)))

