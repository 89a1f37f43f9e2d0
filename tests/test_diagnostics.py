"""Which models converged, which examples are memorizable, and the stderr
the stop rule judges."""

import numpy as np

from feldman_zhang import diagnostics


def test_a_model_diverged_in_any_epoch_is_diverged():
  inf = np.inf
  loss = np.array([[inf, 1.0, 0.5], [2.0, 1.0, 0.5], [1.0, np.nan, 0.5]])
  np.testing.assert_array_equal(diagnostics.converged(loss),
                                [False, True, False])


def test_the_stderr_target_is_judged_on_memorizable_examples():
  """The issue's simulation: 95% easy examples, 5% with p_in 0.9 and p_out
  0.4; the median over all is ~3x below the examples that matter."""
  from feldman_zhang import estimate as estimate_lib
  rng = np.random.default_rng(0)
  t, n = 50, 2000
  hard = np.arange(n) < 100
  masks = rng.random((t, n)) < 0.7
  p = np.where(masks, np.where(hard, 0.9, 1.0), np.where(hard, 0.4, 1.0))
  correct = rng.random((t, n)) < p
  est = estimate_lib.estimate(masks, correct, None, with_infl=False)
  est = {k: np.asarray(v) for k, v in est.items()}
  overall = float(np.median(est['mem_stderr']))
  of_hard = float(np.median(est['mem_stderr'][hard]))
  assert overall < 0.6 * of_hard
  np.testing.assert_allclose(diagnostics.median_stderr(est), of_hard,
                             rtol=0.15)
  assert diagnostics.memorizable(est['heldout_acc'])[hard].mean() > 0.9
