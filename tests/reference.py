"""Plain-numpy reference of the Feldman-Zhang estimators, loop by loop."""

import fractions

import numpy as np


def _mean(values):
  return values.mean() if len(values) else 0.5


def _var_of_mean(values):
  """Smoothed Bernoulli variance of a mean: p = (successes + 1/2) / (n + 1)."""
  if not len(values):
    return 0.25
  p = (values.sum() + 0.5) / (len(values) + 1)
  return p * (1 - p) / len(values)


def estimates(masks, train_correct, test_correct):
  """The paper's formulas, one example at a time, in float64."""
  t, n = masks.shape
  n_test = test_correct.shape[1]
  out = dict(mem=np.zeros(n), mem_stderr=np.zeros(n), in_acc=np.zeros(n),
             heldout_acc=np.zeros(n), num_in=np.zeros(n, int),
             infl=np.zeros((n, n_test)), infl_stderr=np.zeros((n, n_test)))
  for i in range(n):
    a = [k for k in range(t) if masks[k, i]]
    b = [k for k in range(t) if not masks[k, i]]
    in_i, out_i = train_correct[a, i], train_correct[b, i]
    out['num_in'][i] = len(a)
    out['in_acc'][i] = _mean(in_i)
    out['heldout_acc'][i] = _mean(out_i)
    out['mem'][i] = _mean(in_i) - _mean(out_i)
    out['mem_stderr'][i] = np.sqrt(_var_of_mean(in_i) + _var_of_mean(out_i))
    for j in range(n_test):
      in_j, out_j = test_correct[a, j], test_correct[b, j]
      out['infl'][i, j] = _mean(in_j) - _mean(out_j)
      out['infl_stderr'][i, j] = np.sqrt(_var_of_mean(in_j) +
                                         _var_of_mean(out_j))
  return out


def div_rn(num: int, den: int) -> np.float32:
  """num / den rounded once to the nearest float32, ties to even: exact
  comparisons of fractions, no floating-point rounding on the way."""
  exact = fractions.Fraction(num, den)
  near = np.float32(float(exact))  # within an ulp or so of the answer
  cands = [near, np.nextafter(near, np.float32(-np.inf)),
           np.nextafter(near, np.float32(np.inf))]
  err = lambda c: abs(fractions.Fraction(float(c)) - exact)
  best = min(err(c) for c in cands)
  ties = [c for c in cands if err(c) == best]
  even = [c for c in ties if not (c.view(np.uint32) & 1)]
  return (even or ties)[0]
