import logging

import jax
import numpy as np
import pytest

import reference
from feldman_zhang import diagnostics
from feldman_zhang import estimate
from feldman_zhang import topk


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
  # Example 0: A = all models (2/3 right), B empty (1/2): one rounding of
  # 2/3 - 1/2, where f32(2/3) - 1/2 would be 0.16666669.
  assert got['mem'][0] == np.float32(1 / 6) != np.float32(2 / 3) - 0.5
  assert got['heldout_acc'][0] == 0.5
  # Example 1: A empty (1/2), B = all models (2/3 right).
  assert got['in_acc'][1] == 0.5
  assert got['mem'][1] == -np.float32(1 / 6)
  np.testing.assert_array_equal(got['infl'], [[0.5], [-0.5]])
  # An empty group's stderr term is 1/4: unknown, not zero. The full group
  # has 2 of 3 right: smoothed p = 2.5 / 4.
  p = 2.5 / 4
  assert got['mem_stderr'][0] == pytest.approx(np.sqrt(p * (1 - p) / 3 + 0.25))


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


def test_tiled_top_k_equals_dense_top_k():
  rng = np.random.default_rng(5)
  masks, _, test_correct = _random_case(rng, 60, 103, 11)
  dense = estimate.estimate(masks, masks, test_correct)['infl']
  for block in (7, 50, 103, 500):
    top = topk.top_influence(masks, test_correct, k=5, threshold=0.3,
                             block=block)
    want = -np.sort(-dense, axis=0)[:5]
    np.testing.assert_array_equal(top['top_infl'], want)
    # Ties may pick other rows of the same value: check values at the rows.
    np.testing.assert_array_equal(
        np.take_along_axis(dense, top['top_train'], axis=0), want)
    for j in range(11):
      assert len(set(top['top_train'][:, j])) == 5  # no row counted twice
    rows, cols = np.nonzero(dense >= 0.3)
    assert sorted(zip(top['pair_train'], top['pair_test'])) == sorted(
        zip(rows, cols))
    np.testing.assert_array_equal(top['pair_infl'],
                                  dense[top['pair_train'], top['pair_test']])
    assert np.all(np.diff(top['pair_infl']) <= 0)


def test_pairs_past_max_pairs_keep_the_largest():
  # Pruned as tiles arrive (more than 2 * max_pairs held): the same pairs as
  # one sort of all entries over the threshold, ties by position.
  rng = np.random.default_rng(6)
  masks, _, test_correct = _random_case(rng, 60, 103, 11)
  dense = estimate.estimate(masks, masks, test_correct)['infl']
  rows, cols = np.nonzero(dense >= 0.0)
  order = np.lexsort((cols, rows, -dense[rows, cols]))[:9]
  top = topk.top_influence(masks, test_correct, k=2, threshold=0.0,
                           block=7, max_pairs=9)
  np.testing.assert_array_equal(top['pair_train'], rows[order])
  np.testing.assert_array_equal(top['pair_test'], cols[order])
  np.testing.assert_array_equal(top['pair_infl'], dense[rows, cols][order])


def test_stderr_covers_the_truth():
  """95% intervals from mem_stderr cover the true mem 90-99% of the time,
  over many simulated runs of Bernoulli models with known rates."""
  rng = np.random.default_rng(0)
  n, t, reps = 200, 150, 40
  # Rates across the range, extremes included (most real examples sit at 1).
  p_in = rng.choice([1.0, 0.995, 0.98, 0.9, 0.7, 0.5, 0.2], n)
  p_out = p_in * rng.choice([1.0, 0.9, 0.5, 0.1], n)
  truth = p_in - p_out
  hits = []
  for _ in range(reps):
    masks = rng.random((t, n)) < 0.7
    correct = rng.random((t, n)) < np.where(masks, p_in, p_out)
    est = estimate.estimate(masks, correct, correct[:, :1], with_infl=False)
    hits.append(np.abs(est['mem'] - truth) <= 1.96 * est['mem_stderr'])
  coverage = np.mean(hits)
  assert 0.90 <= coverage <= 0.99, coverage


def test_summary_top_pairs_equal_a_full_sort_with_ties():
  from feldman_zhang import pairs
  rng = np.random.default_rng(3)
  for shape, k in [((40, 30), 7), ((5, 3), 15), ((1, 9), 4), ((50, 1), 6)]:
    infl = rng.integers(-3, 4, shape).astype(np.float32) / 4  # many ties
    flat = np.arange(infl.size)
    order = np.lexsort((flat, -infl.reshape(-1)))[:k]
    want = [divmod(int(f), shape[1]) for f in order]
    assert pairs.top_pairs(infl, k) == want


def test_summary_top_pairs_from_the_topk_form_equal_dense():
  from feldman_zhang import pairs as pairs_lib
  rng = np.random.default_rng(4)
  t, n, n_test = 40, 30, 12
  masks = rng.random((t, n)) < 0.7
  test_correct = rng.random((t, n_test)) < 0.6
  dense = estimate.estimate(masks, masks, test_correct)['infl']
  top = topk.top_influence(masks, test_correct, k=5, block=7)
  want = pairs_lib.top_pairs(dense, 5)
  got = pairs_lib.top_pairs_of_topk(top['top_infl'], top['top_train'], 5)
  assert [(i, j) for i, j, _ in got] == want
  np.testing.assert_allclose([v for _, _, v in got],
                             [dense[i, j] for i, j in want], atol=1e-6)
  # k = 1, 20 pairs wanted from 12 test columns: the top-k lists alone hold
  # 12; the pair list over the threshold fills in the rest.
  want = pairs_lib.top_pairs(dense, 20)
  bar = min(dense[i, j] for i, j in want)
  top = topk.top_influence(masks, test_correct, k=1, threshold=bar,
                           block=7)
  pairs = (top['pair_train'], top['pair_test'], top['pair_infl'])
  got = pairs_lib.top_pairs_of_topk(top['top_infl'], top['top_train'], 20,
                                  pairs)
  assert [(i, j) for i, j, _ in got] == want
  assert len(pairs_lib.top_pairs_of_topk(top['top_infl'], top['top_train'],
                                       20)) == 12


def test_a_value_exactly_on_a_bar_is_not_rounded_under_it():
  # 13 of 20 right with the example, 10 of 20 without: exactly 0.15, the
  # paper's influence bar, where f32(13/20) - f32(10/20) is 0.14999998.
  assert np.float32(13 / 20) - np.float32(10 / 20) < np.float32(0.15)
  masks = np.zeros((40, 2), bool)
  masks[:20] = True
  correct = np.zeros((40, 2), bool)
  correct[:13] = correct[20:30] = True
  got = estimate.estimate(masks, correct, correct)
  assert got['mem'][0] == np.float32(0.15) and got['mem'][0] >= 0.15
  assert got['infl'][0, 0] == np.float32(0.15)
  top = topk.top_influence(masks, correct, k=1, threshold=0.15)
  assert len(top['pair_infl']) == 4  # both rows, both columns


def _division_cases(rng):
  """int32 (num, den) with 0 < den < 2^31, |num| <= den: random magnitudes,
  exact ties between two floats, powers of two, +-1, 0."""
  den = np.exp2(rng.uniform(0, 31, 3000)).astype(np.int64).clip(1, 2**31 - 1)
  num = (rng.uniform(-1, 1, 3000) * den).astype(np.int64)
  ties = [(2**24 + 1, 2**25), (2**24 + 3, 2**25), (-(2**24 + 1), 2**26),
          (3 * (2**24 + 1), 3 * 2**25), (2**30 + 64, 2**30 + 2**29)]
  edges = [(0, 1), (0, 7), (1, 1), (-1, 1), (5, 5), (2**31 - 1, 2**31 - 1),
           (1, 2**31 - 1), (-1, 2**31 - 1), (2**30, 2**31 - 1), (13, 20),
           (3, 20), (130, 200), (1, 3), (2, 3), (2**31 - 2, 2**31 - 1)]
  extra = np.array(ties + edges, np.int64)
  return (np.concatenate([num, extra[:, 0]]).astype(np.int32),
          np.concatenate([den, extra[:, 1]]).astype(np.int32))


def test_long_division_rounds_correctly():
  # The quotient every non-CPU backend uses, run here on the CPU, against
  # exact fractions: every bit, ties to even included.
  num, den = _division_cases(np.random.default_rng(0))
  got = np.asarray(jax.jit(estimate._long_div)(num, den))
  want = np.array([reference.div_rn(int(a), int(b)) for a, b in zip(num, den)])
  bad = np.nonzero(got.view(np.uint32) != want.view(np.uint32))[0]
  assert not len(bad), [(num[i], den[i], got[i], want[i]) for i in bad[:5]]


def test_division_on_this_backend_rounds_correctly():
  # What estimate runs here: f32 division on the CPU while the operands are
  # exact in f32 (max_den <= 2^24), long division on other backends.
  num, den = _division_cases(np.random.default_rng(1))
  small = np.abs(den) <= 2**24
  for max_den, keep in ((2**24, small), (2**31 - 1, np.ones_like(small))):
    a, b = num[keep], den[keep]
    got = np.asarray(jax.jit(estimate._div_rn, static_argnums=2)(a, b,
                                                                  max_den))
    want = np.array([reference.div_rn(int(x), int(y)) for x, y in zip(a, b)])
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_pairs_are_kept_only_for_the_rows_asked_for():
  rng = np.random.default_rng(7)
  masks, _, test_correct = _random_case(rng, 60, 103, 11)
  dense = estimate.estimate(masks, masks, test_correct)['infl']
  rows = rng.random(103) < 0.3
  top = topk.top_influence(masks, test_correct, k=2, threshold=0.1,
                           block=16, pair_rows=rows)
  want_rows, want_cols = np.nonzero((dense >= 0.1) & rows[:, None])
  assert sorted(zip(top['pair_train'], top['pair_test'])) == sorted(
      zip(want_rows, want_cols))
  assert top['pairs_dropped'] == 0
  # The top-k lists still look at every row.
  np.testing.assert_array_equal(top['top_infl'], -np.sort(-dense, axis=0)[:2])
  capped = topk.top_influence(masks, test_correct, k=2, threshold=0.1,
                              block=16, pair_rows=rows, max_pairs=5)
  assert capped['pairs_dropped'] == len(want_rows) - 5


def test_convergence_lists_each_count_once():
  rng = np.random.default_rng(8)
  masks, correct, _ = _random_case(rng, 2, 30, 1)
  rows = diagnostics.convergence(masks, correct)  # 0.25 and 0.5 of 2: both 1
  assert [r['models'] for r in rows] == [1, 2]
  assert rows[-1]['correlation'] == 1.0 and rows[-1]['max_abs_diff'] == 0


def test_estimates_past_the_exact_fraction_range_stay_right():
  # At t >= 92,681 the count products leave int32: the two means are
  # subtracted instead (the fraction would give values in the millions).
  rng = np.random.default_rng(9)
  t = 100_000
  masks = rng.random((t, 3)) < 0.5
  correct = rng.random((t, 3)) < np.where(masks, 0.6, 0.5)
  got = estimate.estimate(masks, correct, correct[:, :2])
  a, b = masks, ~masks
  want = (correct & a).sum(0) / a.sum(0) - (correct & b).sum(0) / b.sum(0)
  np.testing.assert_allclose(got['mem'], want, atol=1e-6)
  np.testing.assert_allclose(np.diag(got['infl'][:2]), want[:2], atol=1e-6)


def _compiled(caplog, name):
  return [r for r in caplog.records
          if 'Finished XLA compilation' in r.getMessage() and
          f'jit({name})' in r.getMessage()]


def test_compile_ahead_leaves_nothing_to_compile(caplog):
  # Shapes no other test uses, so only compile_ahead can have compiled them.
  rng = np.random.default_rng(3)
  t, n, n_test = 23, 301, 71
  masks, train_correct, test_correct = _random_case(rng, t, n, n_test)
  with caplog.at_level(logging.DEBUG, logger='jax'):
    estimate.compile_ahead(t, n, n_test, block=128)
    assert len(_compiled(caplog, '_memorization')) == 3  # t/4, t/2, t
    assert len(_compiled(caplog, 'influence_block')) == 1
    caplog.clear()
    full = estimate.estimate(masks, train_correct, test_correct, block=128)
    diagnostics.convergence(masks, train_correct, full=full)
    assert not _compiled(caplog, '_memorization')
    assert not _compiled(caplog, 'influence_block')
    # Other shapes compile as before.
    estimate.estimate(masks[:-1], train_correct[:-1], test_correct[:-1],
                      block=128)
    assert _compiled(caplog, '_memorization')
