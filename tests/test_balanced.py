"""The balanced subset design (subsets.balanced, config.subset_design)."""

import os

import numpy as np
import pytest

from feldman_zhang import chunks
from feldman_zhang import errors
from feldman_zhang import pipeline
from feldman_zhang import identity as identity_lib
from feldman_zhang import resolve
from feldman_zhang import subsets

pytestmark = pytest.mark.integration  # runs and subprocesses


@pytest.mark.parametrize('n,ratio,t', [(100, 0.5, 10), (60, 0.7, 30),
                                       (1797, 0.7, 1000), (13, 0.7, 7)])
def test_every_example_in_round_ratio_t_subsets_of_size_m(n, ratio, t):
  m = subsets.subset_size(n, ratio)
  idx = subsets.balanced(3, n, m, t, np.arange(t))
  masks = subsets.to_masks(idx, n)
  assert (masks.sum(1) == m).all()                       # each of size m
  assert all(len(np.unique(row)) == m for row in idx)    # no repeats
  counts = masks.sum(0)
  if t * m % n == 0:  # exactly what the arithmetic allows
    assert (counts == round(ratio * t)).all()
  assert counts.max() - counts.min() <= 1
  assert abs(counts.mean() - t * m / n) < 1e-9
  # Seeded and independent of how the models are asked for.
  parts = np.concatenate([subsets.balanced(3, n, m, t, ids)
                          for ids in np.array_split(np.arange(t)[::-1], 3)])
  np.testing.assert_array_equal(parts, idx[::-1])
  assert not np.array_equal(subsets.balanced(4, n, m, t, np.arange(t)), idx)


def test_pairs_of_examples_are_not_tied_together():
  # Consecutive windows of one round would put i and its neighbours in the
  # same subsets; fresh permutations each round keep co-membership near
  # what independent subsets give (ratio^2 of the models).
  n, t = 200, 400
  m = subsets.subset_size(n, 0.5)
  masks = subsets.to_masks(subsets.balanced(0, n, m, t, np.arange(t)), n)
  both = (masks[:, :, None] & masks[:, None, :]).mean(0)
  off = both[~np.eye(n, dtype=bool)]
  assert abs(off.mean() - 0.25) < 0.01 and off.max() < 0.4


@pytest.mark.optimized
def test_a_balanced_run_resumes_identically_and_refuses_another_t(
    tiny_config, tmp_path):
  c = tiny_config
  c.subset_design = 'balanced'
  c.num_models, c.models_per_device, c.train.epochs = 8, 4, 2
  workdir = str(tmp_path / 'run')
  pipeline.run(c, workdir)
  preds = chunks.load_predictions(workdir)
  n = preds['masks'].shape[1]
  counts = preds['masks'].sum(0)
  assert counts.max() - counts.min() <= 1
  # A lost chunk retrains with the same subsets, at another K too.
  os.remove(chunks.list_chunks(workdir)[1][2])
  c.models_per_device = 2
  pipeline.run(c, workdir)
  np.testing.assert_array_equal(chunks.load_predictions(workdir)['masks'],
                                preds['masks'])
  m = subsets.subset_size(n, c.subset_ratio)
  np.testing.assert_array_equal(
      preds['masks'], subsets.to_masks(
          subsets.balanced(c.seed, n, m, 8, np.arange(8)), n))
  c.num_models = 12
  with pytest.raises(identity_lib.IdentityError, match='num_models'):
    pipeline.run(c, workdir)


def test_balanced_refuses_an_early_stop(tiny_config):
  tiny_config.subset_design = 'balanced'
  tiny_config.target_stderr = 0.05
  with pytest.raises(errors.ConfigError, match='unbalance'):
    resolve.validate(tiny_config)
  tiny_config.subset_design = 'lira'
  tiny_config.target_stderr = 0.0
  with pytest.raises(errors.ConfigError, match='random or balanced'):
    resolve.validate(tiny_config)
