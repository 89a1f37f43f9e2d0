"""Memorization and influence estimates from subset masks and correctness.

With A_i the models whose subset holds example i and B_i the others:

  mem_i    = mean_{k in A_i} correct[k, i]      - mean_{k in B_i} correct[k, i]
  infl_ij  = mean_{k in A_i} test_correct[k, j] - mean_{k in B_i} test_correct[k, j]

and a mean over an empty set is 1/2. Every sum is an exact integer count: the
infl counts are one matrix product masks^T @ test_correct of 0/1 values, exact
in bf16 inputs with f32 accumulation while t < 2^24, so estimates do not
depend on how the models were split over devices or chunks.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

EMPTY_MEAN = 0.5


def _mean(total, count):
  return jnp.where(count > 0, total / jnp.maximum(count, 1), EMPTY_MEAN)


def _var_of_mean(p, count):
  """Bernoulli variance of a group mean; an empty group counts as the largest
  variance of one observation (1/4), so its stderr reads as unknown."""
  return jnp.where(count > 0, p * (1 - p) / jnp.maximum(count, 1), 0.25)


@jax.jit
def _memorization(masks, correct):
  """masks, correct: (t, n) bool -> dict of (n,) arrays."""
  t = masks.shape[0]
  num_in = jnp.sum(masks, 0, dtype=jnp.int32)
  num_out = t - num_in
  right_in = jnp.sum(masks & correct, 0, dtype=jnp.int32)
  right_out = jnp.sum(correct, 0, dtype=jnp.int32) - right_in
  in_acc, out_acc = _mean(right_in, num_in), _mean(right_out, num_out)
  stderr = jnp.sqrt(_var_of_mean(in_acc, num_in) +
                    _var_of_mean(out_acc, num_out))
  return dict(mem=in_acc - out_acc, mem_stderr=stderr, in_acc=in_acc,
              heldout_acc=out_acc, num_in=num_in)


def _matmul_dtype():
  # 0/1 operands are exact in bf16; the CPU has no fast bf16 matmul.
  return jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16


@functools.partial(jax.jit, static_argnames=('with_stderr',))
def _influence_block(masks_block, test_correct, num_in, with_stderr):
  """masks_block: (t, b) bool; test_correct: (t, n_test) bool -> (b, n_test)."""
  t = masks_block.shape[0]
  dtype = _matmul_dtype()
  right_in = jnp.dot(masks_block.T.astype(dtype), test_correct.astype(dtype),
                     preferred_element_type=jnp.float32)
  right_all = jnp.sum(test_correct, 0, dtype=jnp.int32).astype(jnp.float32)
  num_in = num_in[:, None].astype(jnp.float32)
  num_out = t - num_in
  in_acc = _mean(right_in, num_in)
  out_acc = _mean(right_all[None, :] - right_in, num_out)
  stderr = (jnp.sqrt(_var_of_mean(in_acc, num_in) +
                     _var_of_mean(out_acc, num_out)) if with_stderr else None)
  return in_acc - out_acc, stderr


def estimate(masks, train_correct, test_correct, *, with_infl: bool = True,
             with_infl_stderr: bool = False, block: int = 4096) -> dict:
  """Feldman-Zhang estimates.

  Args:
    masks: (t, n) bool, masks[k, i] is whether model k trained on example i.
    train_correct: (t, n) bool, whether model k classifies train example i.
    test_correct: (t, n_test) bool, likewise for test example j.
    with_infl: compute infl (n, n_test).
    with_infl_stderr: also its standard errors (n, n_test).
    block: training examples per influence tile, which bounds device memory
      to (t + n_test) * block elements.
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
    infl = np.empty((n, test_correct.shape[1]), np.float32)
    infl_se = np.empty_like(infl) if with_infl_stderr else None
    num_in = jnp.asarray(out['num_in'])
    block = min(block, n)
    for start in range(0, n, block):
      # Every tile has the same shape (the last overlaps the one before), so
      # the influence kernel compiles once.
      start = min(start, n - block)
      tile, se = _influence_block(masks[:, start:start + block], test_correct,
                                  num_in[start:start + block], with_infl_stderr)
      infl[start:start + block] = np.asarray(tile)
      if with_infl_stderr:
        infl_se[start:start + block] = np.asarray(se)
    out['infl'] = infl
    if with_infl_stderr:
      out['infl_stderr'] = infl_se
  return out
