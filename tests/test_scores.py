"""A run's per-example scores against released per-example files: the
comparison's orientation, the file reader's refusals, and analysis.release
--compare_scores on a finished run. (Its statistics: test_stats.py.)"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from feldman_zhang import store
from feldman_zhang.analysis import release_compare
from feldman_zhang.analysis import runs
from feldman_zhang.analysis import scores
from feldman_zhang.analysis import stats


# -- the released lowest and the comparison -----------------------------------


def test_lowest_takes_ceil_q_n_and_whole_ties():
  v = np.array([5., 1., 4., 2., 3., 9., 8., 7., 6., 0.])
  np.testing.assert_array_equal(np.flatnonzero(scores.lowest(v, 0.2)), [1, 9])
  np.testing.assert_array_equal(np.flatnonzero(scores.lowest(v, 0.01)), [9])
  tied = np.array([0., 1., 1., 1., 2.])
  assert scores.lowest(tied, 0.4).sum() == 4  # cannot split the 1s
  with pytest.raises(ValueError):
    scores.lowest(v, 1.0)


def test_compare_orients_the_auc_by_score():
  rng = np.random.default_rng(3)
  cscore = rng.random(400)  # released: low = hard
  hard = scores.lowest(cscore, 0.05)
  noise = 0.05 * rng.standard_normal(400)
  acc = scores.compare(cscore + noise, cscore, 'heldout_acc')
  mem = scores.compare(1 - cscore + noise, cscore, 'mem')
  assert acc['auc_ranks_by'] == '-heldout_acc' and mem['auc_ranks_by'] == '+mem'
  assert acc['lowest_examples'] == hard.sum() == 20
  assert acc['auc'] == pytest.approx(stats.auc(-(cscore + noise), hard))
  assert mem['auc'] == pytest.approx(stats.auc(1 - cscore + noise, hard))
  assert acc['auc'] > 0.9 and mem['auc'] > 0.9
  assert acc['spearman'] > 0.9 and mem['spearman'] < -0.9
  # The same scores read as the other orientation are as wrong as can be.
  assert scores.compare(cscore, cscore, 'mem')['auc'] == 0.0
  assert scores.compare(cscore, cscore, 'cscore')['auc'] == 1.0


def test_compare_leaves_out_what_the_run_does_not_know():
  released = np.arange(10.0)
  ours = released.copy()
  ours[[0, 5]] = np.nan
  got = scores.compare(ours, released, 'cscore', 0.2)
  assert (got['examples'], got['compared'], got['left_out']) == (10, 8, 2)
  # The lowest 20% is the file's own (0 and 1); 0 is left out, 1 is first.
  assert got['lowest_examples'] == 2 and got['auc'] == 1.0
  assert got['pearson'] == pytest.approx(1.0)
  json.dumps(got, allow_nan=False)


def test_run_score_marks_examples_without_a_group():
  est = dict(num_models=np.int64(4), num_in=np.array([4, 0, 2], np.int32),
             heldout_acc=np.array([0.5, 0.25, 0.75], np.float32),
             mem=np.array([0.5, -0.5, 0.25], np.float32),
             cscore=np.array([np.nan, 0.5, 0.75], np.float32))
  np.testing.assert_array_equal(scores.run_score(est, 'heldout_acc'),
                                [np.nan, 0.25, 0.75])
  np.testing.assert_array_equal(scores.run_score(est, 'mem'),
                                [np.nan, np.nan, 0.25])
  np.testing.assert_array_equal(scores.run_score(est, 'cscore'),
                                [np.nan, 0.5, 0.75])
  del est['cscore']
  with pytest.raises(store.StoreError, match='subset_ratios') as e:
    scores.run_score(est, 'cscore')
  assert '\n' not in str(e.value)


# -- the released file --------------------------------------------------------


def test_read_released_npy_npz_key_and_single_array(tmp_path):
  v = np.linspace(0, 1, 6, dtype=np.float32)
  np.save(tmp_path / 'a.npy', v)
  np.savez(tmp_path / 'one.npz', whatever=v)
  np.savez(tmp_path / 'cs.npz', labels=np.arange(6, dtype=np.uint8),
           scores=v)
  for spec, key in ((f'{tmp_path}/a.npy', None),
                    (f'{tmp_path}/one.npz', 'whatever'),
                    (f'{tmp_path}/one.npz:whatever', 'whatever'),
                    (f'{tmp_path}/cs.npz:scores', 'scores')):
    got = scores.read_released(spec, 6)
    assert got.key == key and got.values.dtype == np.float64
    np.testing.assert_array_equal(got.values, v)
  np.testing.assert_array_equal(
      scores.read_released(f'{tmp_path}/cs.npz:scores', 6).labels,
      np.arange(6))
  assert scores.read_released(f'{tmp_path}/one.npz', 6).labels is None
  # A path that holds a colon itself is a path, not a key.
  odd = tmp_path / 'a:b.npy'
  np.save(odd, v)
  assert scores.read_released(str(odd), 6).key is None


def test_read_released_refusals_are_one_line(tmp_path):
  np.save(tmp_path / 'a.npy', np.zeros(6))
  np.save(tmp_path / 'grid.npy', np.zeros((2, 3)))
  np.save(tmp_path / 'nan.npy', np.array([0, 1, np.nan, 3, np.inf, 5]))
  np.save(tmp_path / 'text.npy', np.array(list('abcdef')))
  np.savez(tmp_path / 'cs.npz', labels=np.zeros(6, int), scores=np.zeros(6))
  (tmp_path / 'garbage.npz').write_bytes(b'not a zip file at all')
  for spec, why in (
      ('missing.npy', 'missing.npy does not exist'),
      ('cs.npz:score', "no array 'score'; it holds labels, scores"),
      ('cs.npz', 'holds 2 arrays (labels, scores): name one'),
      ('a.npy:scores', 'one .npy array: drop :scores'),
      ('grid.npy', 'float64(2, 3), not 1-d'),
      ('text.npy', 'not 1-d numbers'),
      ('nan.npy', '2 non-finite values (the first at index 2)'),
      ('garbage.npz', 'not a readable .npy or .npz'),
      ('a.npy', '6 values, the run 7 training examples')):
    n = 7 if spec == 'a.npy' else 6
    with pytest.raises(store.StoreError, match=re.escape(why)) as e:
      scores.read_released(f'{tmp_path}/{spec}', n)
    assert '\n' not in str(e.value)


# -- on a finished run, through the command line ------------------------------


@pytest.fixture
def tiny_workdir(tiny_run):
  """The workdir of conftest's shared tiny run (read only)."""
  return tiny_run[1]


def _script(*args):
  return subprocess.run([sys.executable, '-m', 'analysis.release', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_compare_scores_with_the_runs_own_heldout_acc(tiny_workdir, tmp_path):
  run = runs.load_run(tiny_workdir)
  est, ds = run.estimates, run.dataset
  path = str(tmp_path / 'cscores.npz')
  np.savez(path, labels=ds.y_train, scores=est['heldout_acc'])
  result = _script(f'--workdir={tiny_workdir}', f'--compare_scores={path}:scores',
                   f'--out={tmp_path}')
  assert result.returncode == 0, result.stderr
  assert 'spearman' in result.stdout and 'AUC of -heldout_acc' in result.stdout
  got = store.read_json(str(tmp_path / 'compare_scores.json'))
  no_held_out = int((est['num_in'] == est['num_models']).sum())
  assert got['examples'] == ds.num_train
  assert got['left_out'] == no_held_out
  assert got['pearson'] == pytest.approx(1.0)
  assert got['spearman'] == pytest.approx(1.0)
  assert got['auc'] == 1.0 and got['labels_agreement'] == 1.0
  assert got['key'] == 'scores' and got['released_file'] == path
  # mem against the same file: low held-out accuracy, high mem, and labels
  # from another order show.
  shuffled = np.random.default_rng(0).permutation(ds.y_train)
  np.savez(path, labels=shuffled, scores=est['heldout_acc'])
  got = release_compare.compare_scores(run, path + ':scores', 'mem', 0.1)
  assert got['auc_ranks_by'] == '+mem' and got['auc'] > 0.5
  assert got['labels_agreement'] < 0.5


def test_compare_scores_refusals_on_the_command_line(tiny_workdir, tmp_path):
  n = runs.load_run(tiny_workdir).dataset.num_train
  short, ok = str(tmp_path / 'short.npy'), str(tmp_path / 'ok.npy')
  np.save(short, np.zeros(n - 1))
  np.save(ok, np.zeros(n))
  for args, why in (((f'--compare_scores={short}',),
                     f'{n - 1} values, the run {n} training examples'),
                    ((f'--compare_scores={ok}', '--score=cscore'),
                     'the estimates hold no cscore')):
    result = _script(f'--workdir={tiny_workdir}', *args, f'--out={tmp_path}')
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), lines
    assert why in lines[0], lines
  assert not os.path.exists(tmp_path / 'compare_scores.json')
