"""The estimate job end to end on digits: store, estimates, resume, identity."""

import os
import time
from unittest import mock

import numpy as np
import pytest

import reference
from feldman_zhang import chunks as chunks_lib
from feldman_zhang import errors
from feldman_zhang import estimates_file
from feldman_zhang import pipeline
from feldman_zhang import store
from feldman_zhang import subsets

pytestmark = pytest.mark.integration  # runs and subprocesses


def test_store_and_estimates(capsys, finished):
  c, workdir, summary = finished
  preds = chunks_lib.load_predictions(workdir)
  t, n, n_test = c.num_models, 1300, 497
  np.testing.assert_array_equal(preds['model_ids'], np.arange(t))
  assert preds['masks'].shape == (t, n) and preds['masks'].dtype == bool
  assert preds['train_correct'].shape == (t, n)
  assert preds['test_correct'].shape == (t, n_test)
  assert preds['test_ptrue'].dtype == np.float16
  m = subsets.subset_size(n, c.subset_ratio)
  np.testing.assert_array_equal(preds['masks'],
                                subsets.masks(c.seed, n, m, range(t)))
  # 12 models, 5 per call: chunks 0-5, 5-10, 10-12.
  assert [(a, b) for a, b, _ in chunks_lib.list_chunks(workdir)] == [
      (0, 5), (5, 10), (10, 12)]

  est = estimates_file.load_estimates(workdir)
  assert {'mem', 'infl', 'mem_stderr', 'heldout_acc'} <= set(est)
  want = reference.estimates(preds['masks'][:, :40], preds['train_correct'][:, :40],
                             preds['test_correct'][:, :30])
  for k in ('mem', 'mem_stderr', 'heldout_acc'):
    np.testing.assert_allclose(est[k][:40], want[k], atol=2e-7, err_msg=k)
  np.testing.assert_allclose(est['infl'][:40, :30], want['infl'], atol=2e-7)

  assert summary['num_models'] == t and summary['diverged_models'] == 0
  assert summary['model_test_acc_mean'] > 0.85
  assert summary['num_memorized'] == int((est['mem'] >= 0.25).sum())
  best = summary['top_pairs'][0]
  assert best['infl'] == pytest.approx(est['infl'].max())
  # The job prints its summary (here, a rerun with nothing left to train).
  capsys.readouterr()
  assert pipeline.run(c, workdir) == dict(summary, timing=mock.ANY)
  out = capsys.readouterr().out
  assert 'examples with mem >= 0.25' in out and 'influence pairs' in out


def test_rerun_resumes_and_extends(finished):
  # The first run estimated from the predictions it held in memory; the
  # rerun reads them from the store: the same estimates and summary, bit for
  # bit.
  c, workdir, first = finished
  before = estimates_file.load_estimates(workdir)
  stale = os.path.join(workdir, 'chunks', '.tmp-killed')  # a killed write's
  open(stale, 'wb').close()
  again = pipeline.run(c, workdir)
  assert again['timing']['models_trained'] == 0
  assert not os.path.exists(stale)
  after = estimates_file.load_estimates(workdir)
  assert set(before) == set(after)
  for k in before:
    np.testing.assert_array_equal(before[k], after[k])
  drop = lambda s: {k: v for k, v in s.items() if k != 'timing'}
  assert drop(again) == drop(first)
  c.num_models = 15
  extended = pipeline.run(c, workdir)
  assert extended['timing']['models_trained'] == 3
  assert estimates_file.load_estimates(workdir)['num_models'] == 15


@pytest.mark.optimized
def test_lost_and_corrupt_chunks_are_retrained_identically(finished):
  c, workdir, _ = finished
  before = estimates_file.load_estimates(workdir)
  chunks = chunks_lib.list_chunks(workdir)
  os.remove(chunks[0][2])
  with open(chunks[1][2], 'r+b') as f:  # flip bytes inside the file
    f.seek(200)
    f.write(b'\xff\xfe\xfd\xfc')
  summary = pipeline.run(c, workdir)
  assert summary['timing']['models_trained'] == 10
  phases = summary['timing']['phases']
  assert set(phases) == {'load_data', 'plan', 'scan_workdir', 'compile', 'train',
                         'wait_for_device', 'write_chunks', 'load_predictions',
                         'compile_ahead', 'estimate', 'write_estimates',
                         'summary'}
  # Waiting and writing happen inside the training loop.
  assert phases['train'] >= phases['wait_for_device'] + phases['write_chunks']
  assert phases['compile'] > 0
  assert os.path.exists(os.path.join(workdir, 'chunks', 'corrupt'))
  after = estimates_file.load_estimates(workdir)
  for k in before:
    np.testing.assert_array_equal(before[k], after[k], err_msg=k)


def test_changed_config_is_refused_and_results_kept(finished):
  c, workdir, _ = finished
  before = os.path.getmtime(estimates_file.estimates_path(workdir))
  c.train.lr = 0.2
  c.seed = 3
  with pytest.raises(errors.StoreError, match=(
      r'config.seed \(stored 0, given 3\), config.train.lr \(stored 0.05, '
      r'given 0.2\) differ')):
    pipeline.run(c, workdir)
  assert os.path.getmtime(estimates_file.estimates_path(workdir)) == before


def _poison(workdir, model_ids):
  """Rewrites the chunks holding model_ids as if those models had diverged."""
  for _, _, path in chunks_lib.list_chunks(workdir):
    chunk = chunks_lib.read_chunk(path)
    bad = np.isin(chunk['model_ids'], model_ids)
    chunk['loss'][bad, -1] = np.nan
    chunks_lib.write_chunk(workdir, **chunk)


def test_diverged_models_are_excluded(finished):
  c, workdir, _ = finished
  preds = chunks_lib.load_predictions(workdir)
  _poison(workdir, [2, 7])
  summary = pipeline.run(c, workdir)
  assert summary['diverged_models'] == 2
  est = estimates_file.load_estimates(workdir)
  np.testing.assert_array_equal(est['diverged_models'], [2, 7])
  keep = ~np.isin(np.arange(c.num_models), [2, 7])
  want = reference.estimates(preds['masks'][keep][:, :20],
                             preds['train_correct'][keep][:, :20],
                             preds['test_correct'][keep][:, :5])
  np.testing.assert_allclose(est['mem'][:20], want['mem'], atol=2e-7)
  np.testing.assert_allclose(est['infl'][:20, :5], want['infl'], atol=2e-7)
  _poison(workdir, range(c.num_models))
  with pytest.raises(errors.TrainingError, match='every model diverged'):
    pipeline.run(c, workdir)


def test_target_stderr_stops_early(tiny_config, tmp_path):
  c = tiny_config
  c.num_models = 40
  c.models_per_device = 8
  c.target_stderr = 0.3   # reached after the first calls
  summary = pipeline.run(c, str(tmp_path / 'run'))
  assert summary['stopped_at_target_stderr']
  t = summary['num_models']
  assert 8 <= t < 40 and t % 8 == 0
  est = estimates_file.load_estimates(str(tmp_path / 'run'))
  assert est['num_models'] == t and np.median(est['mem_stderr']) < 0.3
  assert [c['models'] for c in summary['convergence']] == [
      round(t / 4), round(t / 2), t]


def test_top_k_influence_in_estimates(tiny_config, tmp_path):
  c = tiny_config
  c.estimate.infl_topk = 3
  c.estimate.pair_threshold = 0.5
  pipeline.run(c, str(tmp_path / 'run'))
  est = estimates_file.load_estimates(str(tmp_path / 'run'))
  assert est['infl_top_infl'].shape == (3, 497)
  np.testing.assert_array_equal(est['infl_top_infl'],
                                -np.sort(-est['infl'], axis=0)[:3])
  assert np.all(est['infl_pair_infl'] >= 0.5)
  # Pairs of the examples over the mem bar only, and all of them.
  memorized = est['mem'] >= c.estimate.pair_mem_threshold
  assert np.all(memorized[est['infl_pair_train']])
  assert len(est['infl_pair_infl']) == (
      (est['infl'] >= 0.5) & memorized[:, None]).sum() > 0
  assert est['infl_pairs_dropped'] == 0


def test_results_are_readable_like_any_file_the_user_writes(tmp_path):
  path = str(tmp_path / 'x.json')
  store.write_json(path, {'a': 1})
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600










def test_a_failed_last_chunk_write_leaves_no_estimates(tiny_config, tmp_path,
                                                       monkeypatch):
  # The last cell is written while the estimate runs; if that write fails,
  # the job fails and writes no estimates of models it did not store.
  write_chunk, calls = chunks_lib.write_chunk, []

  def flaky(workdir, **chunk):
    calls.append(chunk['model_ids'][0])
    if len(calls) == 3:  # 12 models, 5 per call: the third cell's write
      raise errors.StoreError('disk full')
    return write_chunk(workdir, **chunk)

  monkeypatch.setattr(chunks_lib, 'write_chunk', flaky)
  workdir = str(tmp_path / 'run')
  with pytest.raises(errors.StoreError, match='disk full'):
    pipeline.run(tiny_config, workdir)
  assert not os.path.exists(estimates_file.estimates_path(workdir))
  assert not [f for f in os.listdir(workdir) if 'dense' in f or 'infl' in f]
  assert [(a, b) for a, b, _ in chunks_lib.list_chunks(workdir)] == [
      (0, 5), (5, 10)]


def test_the_estimate_compiles_ahead_and_survives_its_failure(
    tiny_config, tmp_path, monkeypatch, caplog):
  from feldman_zhang import estimate as estimate_lib
  calls = []

  def ahead(t, n, n_test, **kwargs):
    calls.append((t, n, n_test, kwargs['with_infl']))
    raise RuntimeError('out of memory')

  monkeypatch.setattr(estimate_lib, 'compile_ahead', ahead)
  summary = pipeline.run(tiny_config, str(tmp_path / 'run'))
  assert calls == [(12, 1300, 497, True)]
  assert summary['num_models'] == 12
  assert 'compiling the estimate ahead failed: out of memory' in caplog.text


def test_a_failed_estimate_still_waits_for_and_reports_the_last_write(
    tiny_config, tmp_path, monkeypatch, caplog):
  from feldman_zhang import estimate as estimate_lib
  write_chunk, calls = chunks_lib.write_chunk, []

  def slow_and_flaky(workdir, **chunk):
    calls.append(chunk['model_ids'][0])
    if len(calls) == 3:
      time.sleep(0.5)  # still writing when the estimate fails
      raise errors.StoreError('disk full')
    return write_chunk(workdir, **chunk)

  def no_room(*args, **kwargs):
    raise errors.StoreError('no room for the dense matrix')

  monkeypatch.setattr(chunks_lib, 'write_chunk', slow_and_flaky)
  monkeypatch.setattr(estimate_lib, 'estimate', no_room)
  with pytest.raises(errors.StoreError, match='no room'):
    pipeline.run(tiny_config, str(tmp_path / 'run'))
  assert len(calls) == 3
  assert 'storing the last models failed too: disk full' in caplog.text


def test_a_chunk_of_another_run_is_set_aside_and_retrained(tiny_config,
                                                           tmp_path):
  # Issue 27, items 1 and 2: a sound chunk with the right name, copied in
  # from a run of another seed (or another epoch count), is not this run's.
  c = tiny_config
  c.update(num_models=6, models_per_device=3)
  c.train.epochs = 2
  a, b, e = (str(tmp_path / x) for x in 'abe')
  pipeline.run(c, a)
  want = estimates_file.load_estimates(a)
  other = c.copy_and_resolve_references()
  other.seed = 1
  pipeline.run(other, b)
  longer = c.copy_and_resolve_references()
  longer.train.epochs = 3
  pipeline.run(longer, e)
  for source in (b, e):
    name = os.path.basename(store.Workdir(a).chunk(3, 6))
    os.replace(store.Workdir(source).chunk(3, 6), store.Workdir(a).chunk(3, 6))
    pipeline.run(c, a)
    assert name in os.listdir(store.Workdir(a).corrupt)
    got = estimates_file.load_estimates(a)
    for k in ('mem', 'infl', 'heldout_acc'):
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert str(got['run_id']) == str(want['run_id'])


def test_margins_are_stored_for_every_model_and_view(finished):
  c, workdir, _ = finished
  preds = chunks_lib.load_predictions(workdir)
  t = c.num_models
  assert preds['train_margin'].shape == (t, 1300, 1)
  assert preds['test_margin'].shape == (t, 497, 1)
  assert preds['train_margin'].dtype == chunks_lib.MARGIN_DTYPE
  # The log-odds of p(true label), both stored as float16.
  p = 1 / (1 + np.exp(-preds['test_margin'][..., 0].astype(np.float32)))
  np.testing.assert_allclose(p, preds['test_ptrue'].astype(np.float32),
                             atol=2e-3)


def test_the_plan_counts_what_the_run_writes(tiny_config, tmp_path):
  # Issue 27, item 12: within 10% of the bytes written.
  from feldman_zhang import cost, prepare  # pylint: disable=g-import-not-at-top
  c = tiny_config
  c.train.epochs = 2
  job = prepare.prepare(c)
  p = cost.plan(job.config, job.ds, job.m, job.model, c.num_models)
  workdir = str(tmp_path / 'run')
  pipeline.run(c, workdir)
  written = sum(os.path.getsize(os.path.join(top, f))
                for top, _, files in os.walk(workdir) for f in files
                if f.endswith(('.npz', '.npy')))
  assert abs(p.disk_bytes - written) < 0.1 * written, (p.disk_bytes, written)
