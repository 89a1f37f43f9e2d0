"""estimates.npz and the dense matrix files beside it."""

import errno
import glob
import os

import numpy as np
import pytest

from feldman_zhang import chunks
from feldman_zhang import errors
from feldman_zhang import estimate
from feldman_zhang import estimates_file
from feldman_zhang import store


def _estimates(workdir, seed, in_place=True):
  rng = np.random.default_rng(seed)
  masks = rng.random((7, 50)) < 0.6
  correct = rng.random((7, 50)) < 0.7
  test_correct = rng.random((7, 9)) < 0.5
  out = {}
  if in_place:
    out = dict(infl_out=estimates_file.new_dense(workdir, (50, 9)),
               infl_stderr_out=estimates_file.new_dense(workdir, (50, 9)))
  est = estimate.estimate(masks, correct, test_correct, with_infl_stderr=True,
                          block=16, **out)
  want = estimate.estimate(masks, correct, test_correct, with_infl_stderr=True)
  return est, want


def _dense_files(workdir):
  return sorted(os.path.basename(p)
                for p in glob.glob(os.path.join(workdir, '*.npy')))


def test_dense_matrices_are_mapped_files_named_by_their_crc(tmp_path):
  workdir = str(tmp_path)
  est, want = _estimates(workdir, 0)
  for k in want:  # filled in place: the same values as in memory
    np.testing.assert_array_equal(est[k], want[k], err_msg=k)
  estimates_file.write_estimates(workdir, est)
  files = _dense_files(workdir)
  assert [f.split('-')[0] for f in files] == ['infl', 'infl_stderr']
  assert not glob.glob(os.path.join(workdir, '.tmp-*'))
  got = estimates_file.load_estimates(workdir)
  assert isinstance(got['infl'], np.memmap) and not got['infl'].flags.writeable
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  estimates_file.write_estimates(workdir, est)  # again, its maps already sealed
  assert _dense_files(workdir) == files
  # The same values written from memory get the same file names.
  other = tmp_path / 'copy'
  estimates_file.write_estimates(str(other), want)
  assert _dense_files(str(other)) == files


def test_new_estimates_replace_old_files_and_stale_temps(tmp_path):
  workdir = str(tmp_path)
  estimates_file.write_estimates(workdir, _estimates(workdir, 0)[0])
  old = _dense_files(workdir)
  estimates_file.new_dense(workdir, (3, 3))  # as a killed job would leave it
  est, want = _estimates(workdir, 1)
  estimates_file.write_estimates(workdir, est)
  new = _dense_files(workdir)
  assert len(new) == 2 and not set(new) & set(old)
  assert not glob.glob(os.path.join(workdir, '.tmp-*'))
  np.testing.assert_array_equal(estimates_file.load_estimates(workdir)['infl'],
                                want['infl'])
  # Estimates without infl leave no dense file behind.
  estimates_file.write_estimates(workdir, {'mem': want['mem']})
  assert _dense_files(workdir) == []
  assert 'infl' not in estimates_file.load_estimates(workdir)


def test_a_kill_before_the_npz_keeps_the_old_pair(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  _, first = _estimates(workdir, 0, in_place=False)
  estimates_file.write_estimates(workdir, first)
  est, _ = _estimates(workdir, 1)

  def killed(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(np, 'savez', killed)
  with pytest.raises(KeyboardInterrupt):
    estimates_file.write_estimates(workdir, est)
  monkeypatch.undo()
  got = estimates_file.load_estimates(workdir)
  for k in first:
    np.testing.assert_array_equal(got[k], first[k], err_msg=k)


def test_missing_dense_file_is_a_store_error(tmp_path):
  workdir = str(tmp_path)
  _, want = _estimates(workdir, 0, in_place=False)
  estimates_file.write_estimates(workdir, want)
  os.remove(os.path.join(workdir, _dense_files(workdir)[0]))
  with pytest.raises(errors.StoreError, match=r'infl-.*\.npy.*is missing'):
    estimates_file.load_estimates(workdir)


def test_reads_estimates_that_hold_infl_in_the_npz(tmp_path):
  # Runs written before the dense files kept infl inside estimates.npz.
  workdir = str(tmp_path)
  _, want = _estimates(workdir, 0, in_place=False)
  np.savez(estimates_file.estimates_path(workdir), **want)
  got = estimates_file.load_estimates(workdir)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_output_arrays_of_another_shape_are_refused():
  rng = np.random.default_rng(0)
  masks = rng.random((4, 6)) < 0.5
  with pytest.raises(ValueError, match=r'not float32\(6, 2\)'):
    estimate.estimate(masks, masks, masks[:, :2],
                      infl_out=np.zeros((6, 3), np.float32))


def test_dense_files_of_a_failed_estimate_are_removed(tmp_path):
  with pytest.raises(RuntimeError):
    with estimates_file.dense_files(str(tmp_path)) as new_dense:
      new_dense((30, 20))
      assert len(glob.glob(str(tmp_path / '.tmp-dense-*'))) == 1
      raise RuntimeError('the device failed')
  assert not os.listdir(tmp_path)


def test_a_full_disk_is_a_store_error_not_a_crash(tmp_path, monkeypatch):
  def full(fd, offset, length):
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(os, 'posix_fallocate', full, raising=False)
  with pytest.raises(errors.StoreError, match=r'no room for a .* \(300, 200\)'):
    estimates_file.new_dense(str(tmp_path), (300, 200))
  assert not os.listdir(tmp_path)


# -- chunks -------------------------------------------------------------------


def _chunk_arrays(k=3, n=20, n_test=6, views=2, seed=0):
  rng = np.random.default_rng(seed)
  bits = lambda *s: rng.random(s) < 0.5
  floats = lambda *s: rng.standard_normal(s).astype(np.float32)
  return dict(model_ids=np.arange(4, 4 + k), masks=bits(k, n),
              train_correct=bits(k, n), test_correct=bits(k, n_test),
              train_ptrue=floats(k, n), test_ptrue=floats(k, n_test),
              loss=floats(k, 2), train_margin=10 * floats(k, n, views),
              test_margin=10 * floats(k, n_test, views))


def test_a_chunk_keeps_its_margins_and_the_run_that_wrote_it(tmp_path):
  workdir, arrays = str(tmp_path), _chunk_arrays()
  path = chunks.write_chunk(workdir, **arrays, run_id='run-a')
  got = chunks.read_chunk(path, dict(run_id='run-a', n=20, n_test=6))
  assert got['run_id'] == 'run-a'
  for k in ('train_margin', 'test_margin'):
    assert got[k].dtype == chunks.MARGIN_DTYPE and got[k].shape[-1] == 2
    np.testing.assert_array_equal(got[k], arrays[k].astype(np.float16))
  for k in ('masks', 'train_correct', 'test_correct'):
    np.testing.assert_array_equal(got[k], arrays[k])
  # A copy of a chunk keeps its run (the tests rewrite chunks so).
  again = chunks.write_chunk(str(tmp_path / 'b'), **got)
  assert chunks.read_chunk(again)['run_id'] == 'run-a'


@pytest.mark.parametrize('expect', [dict(run_id='run-b'), dict(n=21),
                                    dict(n_test=5)])
def test_a_chunk_of_another_run_is_foreign(tmp_path, expect):
  path = chunks.write_chunk(str(tmp_path), **_chunk_arrays(), run_id='run-a')
  with pytest.raises(chunks.ForeignChunkError, match='belongs to another run'):
    chunks.read_chunk(path, expect)


def test_stored_models_set_a_foreign_chunk_aside(tmp_path):
  workdir = str(tmp_path)
  mine = _chunk_arrays()
  chunks.write_chunk(workdir, **mine, run_id='run-a')
  theirs = dict(_chunk_arrays(seed=1), model_ids=np.arange(7, 10))
  chunks.write_chunk(workdir, **theirs, run_id='run-b')
  expect = dict(run_id='run-a', n=20, n_test=6)
  have = chunks.stored_models(workdir, 10, quarantine=True, expect=expect)
  np.testing.assert_array_equal(np.flatnonzero(have), [4, 5, 6])
  assert os.listdir(store.Workdir(workdir).corrupt) == [
      'models_0000007-0000010.npz']
  preds = chunks.load_predictions(workdir, expect=expect)
  np.testing.assert_array_equal(preds['model_ids'], [4, 5, 6])


def test_format_1_chunks_read_without_margins(tmp_path):
  workdir = str(tmp_path)
  new = chunks.read_chunk(chunks.write_chunk(workdir, **_chunk_arrays(),
                                             run_id='x'))
  # A format-1 chunk: no margins, no run id, its own checksum.
  path = store.Workdir(workdir).chunk(4, 7)
  with np.load(path) as f:
    old = {k: f[k] for k in f.files
           if k not in ('train_margin', 'test_margin', 'run_id', 'checksum')}
  old['checksum'] = np.array(chunks._checksum(old))  # pylint: disable=protected-access
  with open(path, 'wb') as f:
    np.savez(f, **old)
  got = chunks.read_chunk(path)
  assert 'train_margin' not in got and got['run_id'] == ''
  np.testing.assert_array_equal(got['masks'], new['masks'])
  # Loaded beside a format-2 chunk: the fields both have.
  chunks.write_chunk(workdir, **dict(_chunk_arrays(), model_ids=np.arange(7, 10)))
  preds = chunks.load_predictions(workdir)
  assert 'train_margin' not in preds and len(preds['model_ids']) == 6
