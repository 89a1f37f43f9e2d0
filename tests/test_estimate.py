import numpy as np
import pytest

import reference
from feldman_zhang import estimate


def _random_case(rng, t, n, n_test):
  masks = rng.random((t, n)) < 0.6
  masks[:, 0] = True    # example 0 is in every subset: B_0 is empty.
  masks[:, 1] = False   # example 1 is in none: A_1 is empty.
  train_correct = rng.random((t, n)) < 0.7
  test_correct = rng.random((t, n_test)) < 0.5
  return masks, train_correct, test_correct


@pytest.mark.parametrize('t', [1, 2, 5, 33])
def test_matches_reference(t):
  rng = np.random.default_rng(t)
  masks, train_correct, test_correct = _random_case(rng, t, 9, 6)
  got = estimate.estimate(masks, train_correct, test_correct,
                          with_infl_stderr=True)
  want = reference.estimates(masks, train_correct, test_correct)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=0, atol=2e-7, err_msg=k)
  assert got['num_models'] == t


def test_empty_groups_mean_one_half():
  masks = np.array([[1, 0], [1, 0], [1, 0]], bool)
  train_correct = np.array([[1, 0], [1, 1], [0, 1]], bool)
  test_correct = np.array([[1], [1], [1]], bool)
  got = estimate.estimate(masks, train_correct, test_correct)
  # Example 0: A = all models (2/3 right), B empty (1/2).
  assert got['mem'][0] == np.float32(2 / 3) - np.float32(0.5)
  assert got['heldout_acc'][0] == 0.5
  # Example 1: A empty (1/2), B = all models (2/3 right).
  assert got['in_acc'][1] == 0.5
  assert got['mem'][1] == np.float32(0.5) - np.float32(2 / 3)
  np.testing.assert_array_equal(got['infl'], [[0.5], [-0.5]])
  # An empty group's stderr term is 1/4: unknown, not zero.
  assert got['mem_stderr'][0] == pytest.approx(np.sqrt(2 / 9 / 3 + 0.25))


def test_tiles_equal_one_block():
  rng = np.random.default_rng(0)
  masks, train_correct, test_correct = _random_case(rng, 40, 103, 17)
  whole = estimate.estimate(masks, train_correct, test_correct, block=1000,
                            with_infl_stderr=True)
  tiled = estimate.estimate(masks, train_correct, test_correct, block=10,
                            with_infl_stderr=True)
  for k in whole:
    np.testing.assert_array_equal(whole[k], tiled[k], err_msg=k)


def test_counts_are_exact_at_large_t():
  # Float sums of 0/1 stay exact: a model count far past bf16's 8-bit mantissa.
  rng = np.random.default_rng(1)
  t = 5000
  masks, train_correct, test_correct = _random_case(rng, t, 4, 3)
  got = estimate.estimate(masks, train_correct, test_correct)
  num_in = masks.sum(0)
  right_in = (masks[:, :, None] & test_correct[:, None, :]).sum(0)
  right_out = (~masks[:, :, None] & test_correct[:, None, :]).sum(0)
  with np.errstate(invalid='ignore', divide='ignore'):
    want = (np.where(num_in[:, None] > 0, right_in / num_in[:, None], 0.5) -
            np.where(num_in[:, None] < t, right_out / (t - num_in[:, None]),
                     0.5))
  np.testing.assert_allclose(got['infl'], want, rtol=0, atol=1e-7)
  np.testing.assert_array_equal(got['num_in'], num_in)


def test_without_infl():
  rng = np.random.default_rng(2)
  got = estimate.estimate(*_random_case(rng, 5, 6, 3), with_infl=False)
  assert 'infl' not in got and got['mem'].shape == (6,)
