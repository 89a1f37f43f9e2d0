"""Consistency of memorization and influence across runs on the same data."""

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from feldman_zhang import chunks
from feldman_zhang import estimates_file
from feldman_zhang import store
from feldman_zhang import topk as topk_lib

from feldman_zhang.analysis import consistency
from feldman_zhang.analysis import consistency_measures
from feldman_zhang.analysis import consistency_runs

pytestmark = pytest.mark.integration  # runs and subprocesses

MEM_THETAS = consistency.thresholds('0.05:0.95:0.05')
INFL_THETAS = consistency.thresholds('0.05:0.5:0.05')



@pytest.fixture
def tiny_workdir(tiny_run):
  """The workdir of conftest's shared tiny run (read only)."""
  return tiny_run[1]

def _copy_run(workdir, dest, estimates=None, identity=None):
  """A workdir with the run's files but other estimates or identity."""
  os.makedirs(dest)
  for name in ('run.json', 'config.json', 'summary.json'):
    shutil.copy(os.path.join(workdir, name), dest)
  if identity:
    doc = store.read_json(os.path.join(dest, 'run.json'))
    for k, v in identity.items():
      if k.startswith('config.'):
        doc['identity']['config'][k[len('config.'):]] = v
      else:
        doc['identity'][k] = v
    store.write_json(os.path.join(dest, 'run.json'), doc)
  estimates_file.write_estimates(dest, estimates if estimates is not None else
                        dict(estimates_file.load_estimates(workdir)))
  return str(dest)


def _rows(rows, kind):
  return [r for r in rows if r['kind'] == kind]


def _script(*args):
  return subprocess.run([sys.executable, '-m', 'analysis.consistency', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_jaccard_of_sets():
  a = np.array([1, 1, 0, 0], bool)
  jaccard = consistency_measures.jaccard
  assert jaccard(a, a) == 1.0
  assert jaccard(a, np.array([0, 1, 1, 0], bool)) == 1 / 3
  assert jaccard(a, ~a) == 0.0
  assert jaccard(np.zeros(4, bool), np.zeros(4, bool)) == 1.0


def test_pair_consistency_looks_up_pairs_outside_a_set():
  a = dict(tr_idx=np.array([0, 1]), tt_idx=np.array([0, 0]),
           infl=np.array([0.5, 0.2], np.float32))
  b = dict(tr_idx=np.array([0]), tt_idx=np.array([0]),
           infl=np.array([0.3], np.float32))
  dense_b = np.array([[0.3], [0.1]])
  got = consistency_measures.pair_consistency(a, b, [0.15, 0.4], None,
                                              lambda i, j: dense_b[i, j])
  # 0.15: a has both pairs, b only (0, 0); b's (1, 0) is its dense 0.1.
  np.testing.assert_allclose(got['jaccard'], [0.5, 0.0])
  np.testing.assert_allclose(got['mean_abs_diff'], [(0.2 + 0.1) / 2, 0.2],
                             rtol=1e-6)
  np.testing.assert_array_equal(got['compared'], [2, 1])
  # Without b's matrix, (1, 0) is unknown to b: left out of the mean only.
  got = consistency_measures.pair_consistency(a, b, [0.15], None, None)
  assert got['jaccard'][0] == 0.5 and got['compared'][0] == 1
  np.testing.assert_allclose(got['mean_abs_diff'], [0.2], rtol=1e-6)
  empty = {k: v[:0] for k, v in a.items()}
  got = consistency_measures.pair_consistency(empty, empty, [0.1])
  assert got['jaccard'][0] == 1.0 and np.isnan(got['mean_abs_diff'][0])


def test_a_run_agrees_with_itself(tiny_workdir, tmp_path):
  result = _script(f'--runs={tiny_workdir}', f'--reference={tiny_workdir}',
                   f'--out={tmp_path}')
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(tmp_path)) == ['consistency.csv',
                                          'consistency.png']
  with open(tmp_path / 'consistency.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['kind'] for r in rows] == (['mem'] * len(MEM_THETAS) +
                                       ['pairs'] * len(INFL_THETAS))
  for r in rows:
    assert float(r['jaccard']) == 1.0, r
    assert r['size_run'] == r['size_reference'] == r['union']
    if int(r['union']):
      assert float(r['mean_abs_diff']) == 0.0, r
    else:
      assert r['mean_abs_diff'] == 'nan'
  # Not vacuous: the sets are not all empty.
  assert sum(int(r['union']) > 0 for r in rows if r['kind'] == 'pairs') >= 3
  assert sum(int(r['union']) > 0 for r in rows if r['kind'] == 'mem') >= 3


def test_shuffled_mem_is_inconsistent(tiny_workdir, tmp_path):
  est = dict(estimates_file.load_estimates(tiny_workdir))
  est['mem'] = np.random.default_rng(0).permutation(est['mem'])
  shuffled = consistency_runs.Estimates(
      _copy_run(tiny_workdir, tmp_path / 's', est))
  rows = consistency_runs.consistency(consistency_runs.Estimates(tiny_workdir),
                                      [shuffled], MEM_THETAS, INFL_THETAS)
  mem = [r for r in _rows(rows, 'mem') if r['union']]
  assert max(r['jaccard'] for r in mem) < 0.7
  assert min(r['mean_abs_diff'] for r in mem) > 0.1
  # The pairs follow the mem bar, so they move too.
  pairs = [r for r in _rows(rows, 'pairs') if r['union']]
  assert max(r['jaccard'] for r in pairs) < 0.7
  assert not any(r['baseline'] for r in rows)  # same settings, not a seed


def test_topk_only_run_agrees_where_its_list_is_whole(tiny_workdir, tmp_path):
  preds = chunks.load_predictions(tiny_workdir)
  est = {k: v for k, v in estimates_file.load_estimates(tiny_workdir).items()
         if not k.startswith('infl')}
  est.update(topk_lib.topk_estimates(preds['masks'], preds['test_correct'],
                                     est['mem'], 2, 0.15, 0.25))
  topk = consistency_runs.Estimates(
      _copy_run(tiny_workdir, tmp_path / 'k', est))
  rows = consistency_runs.consistency(consistency_runs.Estimates(tiny_workdir),
                                      [topk], MEM_THETAS, INFL_THETAS)
  pairs = _rows(rows, 'pairs')
  whole = [r for r in pairs if r['theta'] >= 0.15]
  assert all(r['jaccard'] == 1.0 for r in whole)
  assert all(r['mean_abs_diff'] == 0.0 for r in whole if r['union'])
  # Below its pair list's bar it knows only the top 2 per test example.
  below = [r for r in pairs if r['theta'] < 0.15]
  assert min(r['jaccard'] for r in below) < 1.0
  assert all(r['compared'] <= r['union'] for r in below)


def test_seed_baseline_is_labelled(tiny_workdir, tmp_path):
  ref = consistency_runs.Estimates(tiny_workdir)
  seed = consistency_runs.Estimates(_copy_run(
      tiny_workdir, tmp_path / 'seed1', identity={'config.seed': 1}))
  lr = consistency_runs.Estimates(_copy_run(
      tiny_workdir, tmp_path / 'lr',
      identity={'config.seed': 1, 'config.train.lr': 0.5}))
  assert consistency_runs.is_seed_baseline(ref, seed)
  assert not consistency_runs.is_seed_baseline(ref, lr)
  assert consistency_runs.label(ref, seed) == 'seed1 (seed baseline)'
  assert consistency_runs.label(ref, lr) == 'lr (seed, train.lr)'
  rows = consistency_runs.consistency(ref, [seed, lr], MEM_THETAS, [])
  assert {r['run']: r['baseline'] for r in rows} == {
      seed.workdir: True, lr.workdir: False}
  fig = consistency.figure(rows, ref.name)
  (ax,) = fig.axes
  assert [l.get_linestyle() for l in ax.get_lines()] == ['--', '-']


def test_other_data_is_refused_in_one_line(tiny_workdir, tmp_path):
  other = _copy_run(tiny_workdir, tmp_path / 'other', identity={'data': 'f' * 64})
  result = _script(f'--runs={other}', f'--reference={tiny_workdir}',
                   f'--out={tmp_path / "out"}')
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), lines
  assert 'data fingerprints differ' in lines[0]
  assert not os.path.exists(tmp_path / 'out')
