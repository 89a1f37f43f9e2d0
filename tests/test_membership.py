"""LiRA membership inference (analysis/membership.py) against plain loops
written from the definitions: each attack's score of every (target,
example) pair, the ROC statistics by counting pairs (roc.py), the
per-example view, degenerate pools, and the reference folder layout
(lira_files.py); then the command on a finished run."""

import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from feldman_zhang import chunks
from feldman_zhang import errors
from feldman_zhang import estimates_file
from feldman_zhang import store
from feldman_zhang.analysis import lira
from feldman_zhang.analysis import lira_files
from feldman_zhang.analysis import roc

# -- plain references: one pair at a time, float64 ----------------------------


def logpdf_ref(x, mu, sd):
  sd = sd + 1e-30
  return (-0.5 * ((x - mu) / sd) ** 2 - math.log(sd) -
          0.5 * math.log(2 * math.pi))


def log_cdf_ref(z):
  """log Phi(z); far in the lower tail, where erfc underflows, the Mills
  ratio's asymptotic series (its error under 10395 / z^12)."""
  if z > -20:
    return math.log(0.5 * math.erfc(-z / math.sqrt(2)))
  r = 1 / (z * z)
  return (-0.5 * z * z - math.log(-z) - 0.5 * math.log(2 * math.pi) +
          math.log(1 - r + 3 * r**2 - 15 * r**3 + 105 * r**4 - 945 * r**5))


def median_ref(values):
  v = sorted(values)
  if not v:
    return math.nan
  return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2


def std_ref(values):
  if not values:
    return math.nan
  mean = sum(values) / len(values)
  return math.sqrt(sum((x - mean) ** 2 for x in values) / len(values))


def lira_ref(masks, phi, targets):
  """{attack: (T, n)}: for each target, its pool is every other model."""
  t, n, num_views = phi.shape
  out = {a: np.zeros((len(targets), n)) for a in lira.ATTACKS}
  for row, k in enumerate(targets):
    pool = [j for j in range(t) if j != k]
    pooled_in = [float(phi[j, i, v]) for j in pool for i in range(n)
                 for v in range(num_views) if masks[j, i]]
    pooled_out = [float(phi[j, i, v]) for j in pool for i in range(n)
                  for v in range(num_views) if not masks[j, i]]
    gsd_in, gsd_out = std_ref(pooled_in), std_ref(pooled_out)
    for i in range(n):
      per_view = {a: [] for a in lira.ATTACKS}
      for v in range(num_views):
        x = float(phi[k, i, v])
        ins = [float(phi[j, i, v]) for j in pool if masks[j, i]]
        outs = [float(phi[j, i, v]) for j in pool if not masks[j, i]]
        m_in, s_in = median_ref(ins), std_ref(ins)
        m_out, s_out = median_ref(outs), std_ref(outs)
        per_view['online'].append(logpdf_ref(x, m_in, s_in) -
                                  logpdf_ref(x, m_out, s_out))
        per_view['online_fixed'].append(logpdf_ref(x, m_in, gsd_in) -
                                        logpdf_ref(x, m_out, gsd_out))
        per_view['offline'].append(-logpdf_ref(x, m_out, s_out))
        per_view['offline_fixed'].append(-logpdf_ref(x, m_out, gsd_out))
        per_view['offline_onesided'].append(
            log_cdf_ref((x - m_out) / (s_out + 1e-30)) if outs else math.nan)
        per_view['global'].append(x)
      for a, values in per_view.items():
        out[a][row, i] = sum(values) / num_views
  return out


def thresholds_ref(score):
  return sorted(set(s for s in score if not math.isnan(s))) + [math.inf]


def rates_ref(score, member, tau):
  pos = [s for s, m in zip(score, member) if m and not math.isnan(s)]
  neg = [s for s, m in zip(score, member) if not m and not math.isnan(s)]
  return (sum(s >= tau for s in neg) / len(neg),
          sum(s >= tau for s in pos) / len(pos))


def auc_ref(score, member):
  pos = [s for s, m in zip(score, member) if m and not math.isnan(s)]
  neg = [s for s, m in zip(score, member) if not m and not math.isnan(s)]
  wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
  return wins / (len(pos) * len(neg))


def stats_ref(score, member, levels):
  points = [rates_ref(score, member, tau) for tau in thresholds_ref(score)]
  acc = max(1 - (f + (1 - r)) / 2 for f, r in points)
  tpr = {str(q): max(r for f, r in points if f < q) for q in levels}
  return auc_ref(score, member), acc, tpr


# -- data ---------------------------------------------------------------------


def pool(t=12, n=10, num_views=2, seed=0, effect=0.0):
  rng = np.random.default_rng(seed)
  masks = rng.random((t, n)) < 0.5
  base = rng.normal(0, 2, (1, n, num_views))
  phi = (base + effect * masks[:, :, None] +
         rng.normal(0, 1, (t, n, num_views))).astype(np.float32)
  return masks, phi


def assert_scores_close(got, want):
  for a in want:
    np.testing.assert_allclose(got[a], want[a], rtol=2e-4, atol=2e-4,
                               equal_nan=True, err_msg=a)


# -- the scores ---------------------------------------------------------------


def test_every_attack_matches_the_loops():
  masks, phi = pool()
  targets = np.arange(12)
  want = lira_ref(masks, phi, targets)
  # tile 3 of 10 examples: several tiles and a padded last one.
  for tile in (3, 512):
    assert_scores_close(lira.lira_scores(masks, phi, targets,
                                               tile=tile), want)


def test_degenerate_pools_give_nan_not_a_crash():
  masks, phi = pool(t=7, n=6, num_views=1, seed=1)
  masks[:, 0] = True   # IN for every model: no OUT shadow
  masks[:, 1] = False  # OUT for every model: no IN shadow
  masks[:2, 2] = True  # with a target IN, a single IN shadow: sd 0
  masks[2:, 2] = False
  targets = np.arange(7)
  got = lira.lira_scores(masks, phi[:, :, 0], targets)
  assert_scores_close(got, lira_ref(masks, phi, targets))
  for a in ('online', 'online_fixed'):
    assert np.isnan(got[a][:, :2]).all() and np.isfinite(got[a][:, 3:]).all()
  assert np.isnan(got['offline'][:, 0]).all()
  assert np.isfinite(got['offline'][:, 1]).all()
  assert np.isfinite(got['global']).all()
  result = lira.attack_all(masks, phi, 'all', num_bootstrap=5)
  assert result['online']['excluded'] == 2 * 7
  assert result['offline']['excluded'] == 7
  assert result['global']['excluded'] == 0
  assert 0 <= result['online']['auc']['value'] <= 1


def test_a_single_model_has_no_pool():
  masks, phi = pool(t=1, n=5)
  result = lira.attack_all(masks, phi, num_bootstrap=3)
  assert result['online']['excluded'] == 5
  assert math.isnan(result['online']['auc']['value'])


def test_non_finite_phi_is_refused():
  masks, phi = pool()
  phi[3, 4, 1] = np.nan
  with pytest.raises(ValueError, match='non-finite'):
    lira.lira_scores(masks, phi, [0])


# -- the ROC statistics --------------------------------------------------------


def test_roc_statistics_count_pairs_with_ties():
  rng = np.random.default_rng(2)
  score = rng.integers(0, 6, 150).astype(float)
  score[:4] = np.nan
  member = rng.random(150) < 0.4
  score[member] += rng.integers(0, 2, member.sum())
  levels = (0.05, 0.2, 0.5)
  got = roc.summary(*roc.roc(score, member), levels)
  auc, acc, tpr = stats_ref(score, member, levels)
  assert got['auc'] == pytest.approx(auc)
  assert got['acc'] == pytest.approx(acc)
  assert got['tpr_at_fpr'] == pytest.approx(tpr)


def test_weights_count_pairs_that_many_times():
  rng = np.random.default_rng(3)
  score = rng.integers(0, 8, 60).astype(float)
  member = rng.random(60) < 0.5
  weight = rng.integers(0, 4, 60)
  levels = (0.1, 0.4)
  got = roc.summary(*roc.roc(score, member, weight), levels)
  want = roc.summary(*roc.roc(np.repeat(score, weight),
                                            np.repeat(member, weight)),
                            levels)
  assert got['auc'] == pytest.approx(want['auc'])
  assert got['acc'] == pytest.approx(want['acc'])
  assert got['tpr_at_fpr'] == pytest.approx(want['tpr_at_fpr'])


def test_attack_all_against_the_pairs():
  masks, phi = pool(t=12, n=10, seed=4, effect=1.0)
  targets = [1, 4, 7, 11]
  levels = (0.1, 0.3)
  result = lira.attack_all(masks, phi, targets, levels=levels,
                                 num_bootstrap=20, seed=5)
  want = lira_ref(masks, phi, targets)
  member = masks[targets].ravel()
  for a in lira.ATTACKS:
    auc, acc, tpr = stats_ref(want[a].ravel(), member, levels)
    got = result[a]
    assert got['auc']['value'] == pytest.approx(auc, abs=1e-9), a
    assert got['acc']['value'] == pytest.approx(acc, abs=1e-9), a
    for q in tpr:
      assert got['tpr_at_fpr'][q]['value'] == pytest.approx(tpr[q]), a
    assert got['auc']['lo'] <= got['auc']['value'] <= got['auc']['hi'], a
    assert got['pairs'] == 40
    assert got['excluded'] == np.isnan(want[a]).sum()
  again = lira.attack_all(masks, phi, targets, levels=levels,
                                num_bootstrap=20, seed=5)
  assert again['online']['auc'] == result['online']['auc']


def test_default_targets_are_a_seeded_sample():
  targets = lira.choose_targets(200, seed=3)
  assert len(targets) == 64 and len(set(targets)) == 64
  np.testing.assert_array_equal(targets, lira.choose_targets(200,
                                                                   seed=3))
  assert len(lira.choose_targets(10)) == 10


def test_planted_members_are_found_and_chance_is_chance():
  masks, phi = pool(t=48, n=60, seed=6, effect=1.5)
  planted = lira.attack_all(masks, phi, num_bootstrap=50)
  assert planted['online']['auc']['value'] > 0.8
  assert planted['online']['auc']['lo'] > 0.75
  masks, phi = pool(t=48, n=60, seed=7, effect=0.0)
  chance = lira.attack_all(masks, phi, num_bootstrap=50)
  for a in ('online', 'global'):
    assert abs(chance[a]['auc']['value'] - 0.5) < 0.05, a


# -- per example ---------------------------------------------------------------


def test_per_example_against_the_loops():
  masks, phi = pool(t=10, n=8, seed=8, effect=1.0)
  masks[:, 0] = True
  t, n = masks.shape
  s = lira_ref(masks, phi, range(t))['online']
  got = lira.per_example(masks, phi, level=0.2, tile=3)
  # The smallest threshold of `score >= tau` whose FPR over every
  # non-member pair is below the level.
  flat, member = s.ravel(), masks.ravel()
  tau = min(x for x in thresholds_ref(flat)
            if rates_ref(flat, member, x)[0] < 0.2)
  for i in range(n):
    ins = [s[k, i] for k in range(t) if masks[k, i] and not np.isnan(s[k, i])]
    outs = [s[k, i] for k in range(t)
            if not masks[k, i] and not np.isnan(s[k, i])]
    mean_in = np.mean(ins) if ins else np.nan
    mean_out = np.mean(outs) if outs else np.nan
    np.testing.assert_allclose(got['in_minus_out'][i], mean_in - mean_out,
                               rtol=1e-4, equal_nan=True)
    tpr = np.mean([x >= tau for x in ins]) if ins else np.nan
    np.testing.assert_allclose(got['tpr'][i], tpr, equal_nan=True)
    assert got['num_in'][i] == len(ins)
  assert np.isnan(got['in_minus_out'][0]) and np.isnan(got['tpr'][0])
  # Pooled over examples, the rule is attack_all's TPR at FPR.
  pooled = lira.attack_all(masks, phi, 'all', levels=(0.2,),
                                 num_bootstrap=2)['online']
  tpr_all = np.nansum(got['tpr'] * got['num_in']) / got['num_in'].sum()
  assert tpr_all == pytest.approx(pooled['tpr_at_fpr']['0.2']['value'])


def test_threshold_at_fpr():
  out = np.arange(100.0)
  assert roc.threshold_at_fpr(out, 0.01) == 99  # none above: FPR 0
  assert roc.threshold_at_fpr(out, 0.05) == 95  # 4 above: FPR 0.04
  assert roc.threshold_at_fpr(out, 1.0) == 0  # all but the least
  assert math.isnan(roc.threshold_at_fpr([np.nan], 0.01))
  with pytest.raises(ValueError, match='FPR level'):
    roc.threshold_at_fpr(out, 0)


# -- the reference's folder layout --------------------------------------------


def test_lira_dir_round_trip(tmp_path):
  masks, phi = pool(t=5, n=7)
  lira_files.write_lira_dir(str(tmp_path), masks, phi)
  assert sorted(os.listdir(tmp_path)) == [f'experiment-{k}' for k in range(5)]
  got_masks, got_phi, ids = lira_files.read_lira_dir(str(tmp_path))
  np.testing.assert_array_equal(got_masks, masks)
  np.testing.assert_array_equal(got_phi, phi)
  np.testing.assert_array_equal(ids, np.arange(5))
  assert got_masks.dtype == bool and got_phi.dtype == np.float32
  # Named by model id: a run's pool with a diverged model left out.
  lira_files.write_lira_dir(str(tmp_path / 'ids'), masks, phi,
                            model_ids=[0, 1, 3, 10, 11])
  got = lira_files.read_lira_dir(str(tmp_path / 'ids'))
  np.testing.assert_array_equal(got.model_ids, [0, 1, 3, 10, 11])
  np.testing.assert_array_equal(got.phi, phi)


def test_lira_dir_reads_the_reference_names_in_model_order(tmp_path):
  masks, phi = pool(t=12, n=4)
  for k in range(12):
    folder = tmp_path / f'experiment-{k}_12'
    (folder / 'scores').mkdir(parents=True)
    np.save(folder / 'keep.npy', masks[k])
    np.save(folder / 'scores' / '0000000010.npy', phi[k] - 1)
    np.save(folder / 'scores' / '0000000020.npy', phi[k])  # the last epoch
  got_masks, got_phi, ids = lira_files.read_lira_dir(str(tmp_path))
  np.testing.assert_array_equal(got_masks, masks)
  np.testing.assert_array_equal(got_phi, phi)
  np.testing.assert_array_equal(ids, np.arange(12))


@pytest.mark.parametrize('breakage, message', [
    ('missing', 'is not a folder'),
    ('empty', 'no experiment-<k> folders'),
    ('no_keep', 'keep.npy does not exist'),
    ('no_scores', 'holds no .npy scores'),
    ('ragged', 'is ragged'),
    ('short_scores', r'not \(n, V\)'),
    ('twice', 'model 1 twice'),
])
def test_lira_dir_refusals(tmp_path, breakage, message):
  masks, phi = pool(t=3, n=4)
  root = tmp_path / 'lira'
  if breakage != 'missing':
    root.mkdir()
  if breakage not in ('missing', 'empty'):
    lira_files.write_lira_dir(str(root), masks, phi)
  one = root / 'experiment-1'
  if breakage == 'no_keep':
    os.remove(one / 'keep.npy')
  elif breakage == 'no_scores':
    os.remove(one / 'scores' / '0.npy')
  elif breakage == 'ragged':
    np.save(one / 'keep.npy', np.zeros(5, bool))
    np.save(one / 'scores' / '0.npy', np.zeros((5, 2), np.float32))
  elif breakage == 'short_scores':
    np.save(one / 'scores' / '0.npy', np.zeros((3, 2), np.float32))
  elif breakage == 'twice':
    lira_files.write_lira_dir(str(tmp_path / 'other'), masks, phi)
    os.rename(tmp_path / 'other' / 'experiment-1', root / 'experiment-1_3')
  with pytest.raises(errors.StoreError, match=message) as e:
    lira_files.read_lira_dir(str(root))
  assert '\n' not in str(e.value)


# -- the command --------------------------------------------------------------


def _command(*args):
  return subprocess.run([sys.executable, '-m', 'analysis.membership', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def attacked(tiny_run, tmp_path_factory):
  """(workdir, out, lira): the command on tiny_run, every model a target,
  its pool exported to lira (the run itself is not written to)."""
  _, workdir = tiny_run
  root = tmp_path_factory.mktemp('membership')
  out, lira = str(root / 'out'), str(root / 'lira')
  result = _command(f'--workdir={workdir}', f'--out={out}',
                    f'--lira_dir={lira}', '--targets=all')
  assert result.returncode == 0, result.stderr
  assert 'online_fixed' in result.stdout and 'TPR@0.1%' in result.stdout
  return workdir, out, lira


@pytest.mark.integration
def test_command_writes_every_attack_with_intervals(attacked):
  workdir, out, _ = attacked
  doc = store.read_json(os.path.join(out, 'membership.json'))
  assert doc['attacks'] == list(lira.ATTACKS)
  assert doc['models'] == 16 and doc['views'] == 1
  assert doc['targets'] == list(range(16)) and doc['pairs'] == 16 * 1300
  for a in lira.ATTACKS:
    r = doc[a]
    assert set(r) == {'auc', 'acc', 'tpr_at_fpr', 'excluded'}, a
    assert set(r['tpr_at_fpr']) == {'0.01', '0.001', '0.0001'}, a
    for stat in [r['auc'], r['acc'], *r['tpr_at_fpr'].values()]:
      assert 0 <= stat['lo'] <= stat['value'] <= stat['hi'] <= 1, (a, stat)
  assert os.path.getsize(os.path.join(out, 'roc.png')) > 0
  assert os.path.getsize(os.path.join(out, 'mem_vs_vulnerability.png')) > 0
  est = estimates_file.load_estimates(workdir)
  with np.load(os.path.join(out, 'per_example.npz')) as f:
    for k in ('in_minus_out', 'tpr', 'num_in', 'num_out', 'mem'):
      assert f[k].shape == (1300,), k
    np.testing.assert_array_equal(f['mem'], est['mem'])
    np.testing.assert_array_equal(f['num_in'] + f['num_out'] <= 16, True)


@pytest.mark.integration
def test_lira_dir_export_is_the_run_and_scores_the_same(attacked, tmp_path):
  workdir, out, lira_dir = attacked
  preds = chunks.load_predictions(workdir)
  pool = lira_files.read_lira_dir(lira_dir)
  np.testing.assert_array_equal(pool.model_ids, preds['model_ids'])
  np.testing.assert_array_equal(pool.masks, preds['masks'])
  np.testing.assert_array_equal(pool.phi,
                                preds['train_margin'].astype(np.float32))
  result = _command(f'--from_lira_dir={lira_dir}', f'--out={tmp_path}',
                    '--targets=all')
  assert result.returncode == 0, result.stderr
  theirs = store.read_json(str(tmp_path / 'membership.json'))
  ours = store.read_json(os.path.join(out, 'membership.json'))
  for a in lira.ATTACKS:
    assert theirs[a]['auc'] == ours[a]['auc'], a
    assert theirs[a]['tpr_at_fpr'] == ours[a]['tpr_at_fpr'], a
  assert sorted(os.listdir(tmp_path)) == ['membership.json',
                                          'per_example.npz', 'roc.png']
  with np.load(tmp_path / 'per_example.npz') as f:
    assert 'mem' not in f.files


@pytest.mark.integration
def test_old_format_and_missing_workdirs_are_refused(tiny_run, tmp_path):
  _, workdir = tiny_run
  old = str(tmp_path / 'old')
  shutil.copytree(workdir, old)
  for _, _, path in chunks.list_chunks(old):
    chunk = chunks.read_chunk(path)
    del chunk['train_margin'], chunk['test_margin']  # as format 1 wrote them
    chunks.write_chunk(old, **chunk)
  for bad, message in ((old, 're-run the estimate with this version'),
                       (str(tmp_path / 'none'), 'has no run.json')):
    result = _command(f'--workdir={bad}', f'--out={tmp_path / "out"}')
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), lines
    assert message in lines[0], lines
