"""C-scores over subset ratios (ratios.py), against plain numpy."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from feldman_zhang import chunks
from feldman_zhang import config as config_lib
from feldman_zhang import errors
from feldman_zhang import estimates_file
from feldman_zhang import pipeline
from feldman_zhang import ratios
from feldman_zhang import resolve
from feldman_zhang import store
from feldman_zhang import streams
from feldman_zhang import subsets

pytestmark = pytest.mark.integration  # runs and subprocesses


def _reference_cscore(heldout, num_out):
  """The definition, one example at a time."""
  r, n = heldout.shape
  score, counted = np.full(n, np.nan), np.zeros(n, int)
  for i in range(n):
    held = [heldout[j, i] for j in range(r) if num_out[j, i] > 0]
    counted[i] = len(held)
    if held:
      score[i] = sum(held) / len(held)
  return score, counted


def test_cscore_equals_the_definition_with_empty_groups():
  rng = np.random.default_rng(0)
  heldout = rng.random((3, 50)).astype(np.float32)
  num_out = rng.integers(0, 3, (3, 50))
  num_out[:, 7] = 0           # never held out at any ratio
  num_out[:, 8] = [0, 4, 0]   # held out at one ratio only
  score, counted = ratios.cscore(heldout, num_out)
  want, want_counted = _reference_cscore(heldout, num_out)
  np.testing.assert_array_equal(counted, want_counted)
  np.testing.assert_allclose(score, want, rtol=1e-6)
  assert np.isnan(score[7]) and counted[7] == 0
  assert score[8] == heldout[1, 8] and counted[8] == 1


def test_config_checks_the_ratios(tiny_config):
  tiny_config.subset_ratios = (0.3, 0.5)  # lacks subset_ratio 0.7
  with pytest.raises(errors.ConfigError, match='must hold subset_ratio'):
    resolve.validate(tiny_config)
  tiny_config.subset_ratios = (0.7, 0.7)
  with pytest.raises(errors.ConfigError, match='distinct'):
    resolve.validate(tiny_config)


def test_other_ratios_draw_subsets_of_their_own():
  plain = subsets.indices(0, 100, 30, [3])
  own = subsets.indices(0, 100, 30, [3], stream=streams.ratio_stream(0.3))
  assert not np.array_equal(plain, own)
  np.testing.assert_array_equal(
      own, subsets.indices(0, 100, 30, [3], stream=streams.ratio_stream(0.3)))
  assert streams.ratio_stream(0.3) != streams.ratio_stream(0.5) and streams.ratio_stream(0.3) > 0


@pytest.fixture(scope='module')
def cscore_run(tmp_path_factory):
  from conftest import make_tiny_config
  tmp = tmp_path_factory.mktemp('ratios')
  c = make_tiny_config()
  c.num_models, c.train.epochs = 8, 3
  plain = str(tmp / 'plain')
  pipeline.run(c, plain)
  c.subset_ratios = (0.3, 0.7)
  workdir = str(tmp / 'run')
  pipeline.run(c, workdir)
  return c, workdir, plain


def test_cscores_are_the_ratios_mean_and_mem_is_the_plain_runs(cscore_run):
  c, workdir, plain = cscore_run
  est = estimates_file.load_estimates(workdir)
  # mem and infl are the one-ratio run's, bit for bit.
  base = estimates_file.load_estimates(plain)
  for k in ('mem', 'heldout_acc', 'infl'):
    np.testing.assert_array_equal(est[k], base[k], err_msg=k)
  np.testing.assert_array_equal(est['subset_ratios'], [0.3, 0.7])
  other = estimates_file.load_estimates(ratios.workdir(workdir, 0.3))
  assert int(other['num_models']) == c.num_models
  want, counted = _reference_cscore(
      np.stack([other['heldout_acc'], est['heldout_acc']]),
      np.stack([c.num_models - other['num_in'], c.num_models - est['num_in']]))
  np.testing.assert_array_equal(est['cscore_num_ratios'], counted)
  np.testing.assert_allclose(est['cscore'], want, rtol=1e-6)
  # A held-out group that is empty at a ratio is NaN in that ratio's row.
  empty = (c.num_models - other['num_in']) == 0
  assert np.isnan(est['heldout_acc_by_ratio'][0][empty]).all()
  # The 0.3 ratio's models train on 30% subsets of their own stream.
  preds = chunks.load_predictions(ratios.workdir(workdir, 0.3))
  m = subsets.subset_size(len(est['mem']), 0.3)
  np.testing.assert_array_equal(preds['masks'].sum(1), m)
  summary = store.read_json(os.path.join(workdir, 'summary.json'))
  assert summary['cscore']['subset_ratios'] == [0.3, 0.7]
  assert len(summary['cscore']['lowest']) == c.summary.top_pairs


def test_adding_a_ratio_trains_only_it(cscore_run, tmp_path):
  import shutil
  c, workdir, _ = cscore_run
  workdir = str(shutil.copytree(workdir, tmp_path / 'run'))
  kept = chunks.load_predictions(ratios.workdir(workdir, 0.3))
  c = config_lib.copy(c)
  c.subset_ratios = (0.3, 0.5, 0.7)
  summary = pipeline.run(c, workdir)
  assert summary['timing']['models_trained'] == 0  # subset_ratio's: stored
  again = chunks.load_predictions(ratios.workdir(workdir, 0.3))
  np.testing.assert_array_equal(kept['masks'], again['masks'])
  est = estimates_file.load_estimates(workdir)
  np.testing.assert_array_equal(est['subset_ratios'], [0.3, 0.5, 0.7])
  assert int(estimates_file.load_estimates(ratios.workdir(workdir, 0.5))[
      'num_models']) == c.num_models


def test_subset_ratios_from_the_command_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'feldman_zhang.main',
       '--config=configs/digits_mlp.py', f'--workdir={tmp_path / "run"}',
       '--config.num_models=4', '--config.models_per_device=4',
       '--config.model.hidden=(16,)', '--config.train.epochs=1',
       "--config.subset_ratios=(0.5,0.7)", '--compilation_cache='],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'C-scores (mean held-out accuracy over subset ratios 0.5, 0.7)' in (
      result.stdout)


def test_report_shows_the_cscores(cscore_run):
  from feldman_zhang.analysis import report, runs  # pylint: disable=g-import-not-at-top
  page = report.build(runs.load_run(cscore_run[1]))
  assert '<h2>C-scores</h2>' in page and 'cscores.png' in page
  assert '<h2>C-scores</h2>' not in report.build(
      runs.load_run(cscore_run[2]))
