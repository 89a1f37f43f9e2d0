"""The linear datamodeling score (analysis/lds_score.py) and the margin
influence against plain loops written from the definitions, and on planted
linear datamodels; then the command (analysis/lds.py) on two finished runs."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from conftest import make_tiny_config
from feldman_zhang import margins
from feldman_zhang import pipeline
from feldman_zhang import store
from feldman_zhang.analysis import lds as lds_lib
from feldman_zhang.analysis import lds_score
from feldman_zhang.analysis import lira_files
from feldman_zhang.analysis import runs

# -- plain references ---------------------------------------------------------


def ranks_ref(x):
  """1 + how many are smaller + half of the others equal to it."""
  return [1 + sum(b < a for b in x) + (sum(b == a for b in x) - 1) / 2
          for a in x]


def spearman_ref(a, b):
  ra, rb = ranks_ref(a), ranks_ref(b)
  ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
  da, db = [r - ma for r in ra], [r - mb for r in rb]
  saa, sbb = sum(d * d for d in da), sum(d * d for d in db)
  if saa == 0 or sbb == 0:
    return math.nan
  return sum(x * y for x, y in zip(da, db)) / math.sqrt(saa * sbb)


def lds_ref(score, eval_masks, eval_out):
  """(n_test,) LDS_j: predicted output of model m is the sum of the scores
  of the examples it trained on."""
  (num_models, n), n_test = eval_masks.shape, score.shape[1]
  out = []
  for j in range(n_test):
    predicted = [sum(float(score[i, j]) for i in range(n) if eval_masks[m, i])
                 for m in range(num_models)]
    out.append(spearman_ref(predicted, list(eval_out[:, j])))
  return np.array(out)


def margin_ref(masks, phi):
  """mean over A_i minus mean over B_i of phi[k, j]; an empty mean is 0."""
  t, n = masks.shape
  out = np.zeros((n, phi.shape[1]))
  for i in range(n):
    for j in range(phi.shape[1]):
      a = [float(phi[k, j]) for k in range(t) if masks[k, i]]
      b = [float(phi[k, j]) for k in range(t) if not masks[k, i]]
      out[i, j] = ((sum(a) / len(a) if a else 0) -
                   (sum(b) / len(b) if b else 0))
  return out


def planted(n=40, n_test=30, num_models=200, noise=0.1, seed=0, w=None):
  """A linear datamodel w (n, n_test), random half subsets (num_models, n)
  and the outputs masks @ w plus noise (num_models, n_test) float32."""
  rng = np.random.default_rng(seed)
  w = rng.normal(0, 1, (n, n_test)) if w is None else w
  masks = rng.random((num_models, w.shape[0])) < 0.5
  out = masks @ w + noise * rng.normal(0, 1, (num_models, w.shape[1]))
  return w, masks, out.astype(np.float32)


# -- the LDS ------------------------------------------------------------------


def test_lds_matches_the_loops_with_ties():
  rng = np.random.default_rng(1)
  n, n_test, num_models = 6, 7, 9
  score = rng.integers(-1, 2, (n, n_test)).astype(np.float32)
  score[:, 1] = 0  # every prediction 0: constant, NaN
  eval_masks = rng.random((num_models, n)) < 0.5
  eval_out = rng.integers(0, 3, (num_models, n_test)).astype(np.float32)
  eval_out[:, 0] = 2  # constant outputs: NaN
  want = lds_ref(score, eval_masks, eval_out)
  assert np.isnan(want[:2]).all() and np.isfinite(want[2:]).all()
  for tile in (3, 512):  # several tiles, the last padded; one tile
    got = lds_score.lds(score, eval_masks, eval_out, tile=tile,
                        num_bootstrap=50)
    np.testing.assert_allclose(got['per_test'], want, rtol=1e-6,
                               equal_nan=True)
    assert got['excluded'] == 2 and got['num_test'] == n_test
    assert got['value'] == pytest.approx(np.nanmean(want), abs=1e-6)
    assert got['lo'] <= got['value'] <= got['hi']


def test_lds_averages_views_and_refuses_mismatched_shapes():
  w, masks, out = planted(n=8, n_test=5, num_models=20)
  views = np.stack([out - 1, out + 1], -1)  # mean over views is out
  a = lds_score.lds(w, masks, views, num_bootstrap=10)
  b = lds_score.lds(w, masks, out, num_bootstrap=10)
  np.testing.assert_allclose(a['per_test'], b['per_test'], rtol=1e-6)
  with pytest.raises(ValueError, match='not \\(n, n_test\\)'):
    lds_score.lds(w[:, :4], masks, out)


def test_bootstrap_is_seeded():
  w, masks, out = planted(noise=3.0)
  a = lds_score.lds(w, masks, out, seed=3)
  assert a['lo'] == lds_score.lds(w, masks, out, seed=3)['lo']
  assert a['lo'] != lds_score.lds(w, masks, out, seed=4)['lo']
  assert a['lo'] < a['value'] < a['hi']


def test_planted_datamodel_scores_near_one_and_random_near_zero():
  w, masks, out = planted()
  assert lds_score.lds(w, masks, out)['value'] > 0.95
  chance = lds_score.lds(lds_score.random_scores(40, 30, seed=2), masks, out)
  assert abs(chance['value']) < 0.06
  assert chance['lo'] < 0 < chance['hi']


# -- the margin influence -----------------------------------------------------


def test_infl_margin_and_mem_margin_match_the_loops():
  rng = np.random.default_rng(5)
  t, n, n_test = 9, 6, 5
  masks = rng.random((t, n)) < 0.5
  masks[:, 0] = True   # B_0 empty: mean over A_0 alone
  masks[:, 1] = False  # A_1 empty: minus the mean over B_1
  phi_test = (5 + rng.normal(0, 1, (t, n_test))).astype(np.float32)
  want = margin_ref(masks, phi_test)
  for tile in (2, 512):
    got = margins.infl_margin(masks, phi_test, tile=tile)
    assert got.dtype == np.float32 and got.shape == (n, n_test)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[0], phi_test.mean(0), rtol=1e-5)
  np.testing.assert_allclose(got[1], -phi_test.mean(0), rtol=1e-5)
  out = np.zeros((n, n_test), np.float32)
  assert margins.infl_margin(masks, phi_test, out=out) is out
  phi_train = (5 + rng.normal(0, 1, (t, n))).astype(np.float32)
  want = [margin_ref(masks[:, [i]], phi_train[:, [i]])[0, 0]
          for i in range(n)]
  np.testing.assert_allclose(margins.mem_margin(masks, phi_train), want,
                             rtol=1e-5, atol=1e-5)
  views = np.stack([phi_train - 1, phi_train + 1], -1)
  np.testing.assert_allclose(margins.mem_margin(masks, views), want,
                             rtol=1e-5, atol=1e-5)


def test_infl_margin_recovers_a_planted_datamodel_and_its_curve_rises():
  w, masks, phi_test = planted(n=30, n_test=20, num_models=160, noise=0.5)
  _, eval_masks, eval_out = planted(num_models=60, noise=0.5, seed=1,
                                    w=w)
  counts = lds_score.curve_counts(160)
  assert counts == (20, 40, 80, 160)
  def score(c):
    return margins.infl_margin(masks[:c], phi_test[:c])
  curve = lds_score.lds_curve(score, counts, eval_masks, eval_out,
                              num_bootstrap=20)
  values = [r['value'] for r in curve]
  assert [r['count'] for r in curve] == list(counts)
  # 0.54, 0.68, 0.80, 0.88: more models, less noise in the estimate.
  assert values[-1] > 0.8 and np.all(np.diff(values) > 0)
  again = lds_score.lds_curve([score(c) for c in counts], counts,
                              eval_masks, eval_out, num_bootstrap=20)
  assert [r['value'] for r in again] == values


# -- the command --------------------------------------------------------------


@pytest.fixture(scope='module')
def eval_run(tmp_path_factory):
  """A second finished digits run, as tiny_run but with its own seed and
  half subsets: the models that judge tiny_run's scores."""
  c = make_tiny_config()
  c.update(num_models=16, models_per_device=8, seed=1, subset_ratio=0.5)
  workdir = str(tmp_path_factory.mktemp('lds_eval') / 'run')
  pipeline.run(c, workdir)
  return workdir


def _command(*args):
  return subprocess.run([sys.executable, '-m', 'analysis.lds', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_recomputed_scores_are_the_estimates(tiny_run):
  """Where A's estimates lack the dense matrices, the command recomputes
  them from the stored predictions: the same matrices, bit for bit."""
  run = runs.load_run(tiny_run[1])
  preds = lira_files.converged_predictions(run)
  recomputed = lds_lib.score_functions(preds, {})
  for name in ('infl', 'infl_margin'):
    np.testing.assert_array_equal(recomputed[name](16), run.estimates[name])


@pytest.mark.integration
def test_command_scores_a_run_on_another(tiny_run, eval_run, tmp_path):
  _, workdir = tiny_run
  result = _command(f'--scores={workdir}', f'--eval={eval_run}',
                    f'--out={tmp_path}')
  assert result.returncode == 0, result.stderr
  assert 'infl_margin' in result.stdout and 'random' in result.stdout
  with open(tmp_path / 'lds.json') as f:
    doc = json.load(f)
  assert doc['models_a'] == doc['models_b'] == 16
  for name in lds_lib.SCORES:
    r = doc[name]
    assert set(r) == {'value', 'lo', 'hi', 'excluded'}, name
    assert -1 <= r['lo'] <= r['value'] <= r['hi'] <= 1, (name, r)
  assert sorted(doc['curve']) == ['infl', 'infl_margin']
  for name, rows in doc['curve'].items():
    assert [r[0] for r in rows] == [2, 4, 8, 16], name
    assert rows[-1][1:] == [doc[name][k] for k in ('value', 'lo', 'hi')]
  assert os.path.getsize(tmp_path / 'lds_curve.png') > 0


@pytest.mark.integration
def test_runs_on_other_data_are_refused(tiny_run, tmp_path):
  _, workdir = tiny_run
  # Another data set's fingerprint (label noise changes it too): only
  # run.json is read before the refusal.
  other = tmp_path / 'other'
  other.mkdir()
  shutil.copy(os.path.join(workdir, 'estimates.npz'), other)
  record = store.read_json(os.path.join(workdir, 'run.json'))
  record['identity']['data'] = '0' * 64
  store.write_json(str(other / 'run.json'), record)
  result = _command(f'--scores={workdir}', f'--eval={other}',
                    f'--out={tmp_path / "out"}')
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert lines == [f'error: {workdir} and {other} trained on different data '
                   '(the data fingerprints in their run.json differ): the '
                   'LDS judges scores on models of the same data'], lines
  assert not os.path.exists(tmp_path / 'out')
