"""estimates.npz and the dense matrix files beside it."""

import errno
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from feldman_zhang import errors
from feldman_zhang import estimate
from feldman_zhang import estimates_file
from feldman_zhang import pipeline


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


@pytest.mark.integration
def test_a_corrupt_dense_file_is_refused_and_rebuilt(finished):
  c, workdir, _ = finished
  want = np.array(estimates_file.load_estimates(workdir)['infl'])
  (path,) = glob.glob(os.path.join(workdir, 'infl-*.npy'))
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b'\xff' * 8)
  with pytest.raises(errors.StoreError, match='is corrupt .* re-run the same'):
    estimates_file.load_estimates(workdir)
  out = subprocess.run([sys.executable, '-m', 'analysis.export_pairs',
                        f'--workdir={workdir}', f'--out={workdir}/pairs'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert out.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'is corrupt' in out.stderr and 'Traceback' not in out.stderr
  pipeline.run(c, workdir)  # the same command rebuilds it
  np.testing.assert_array_equal(
      estimates_file.load_estimates(workdir)['infl'], want)


@pytest.mark.integration
def test_a_torn_dense_header_is_one_line(finished):
  _, workdir, _ = finished
  (path,) = glob.glob(os.path.join(workdir, 'infl-*.npy'))
  with open(path, 'r+b') as f:
    f.write(b'garbage!' * 4)
  with pytest.raises(errors.StoreError, match='is unreadable .* re-run'):
    estimates_file.load_estimates(workdir)
  with open(os.path.join(workdir, 'estimates.npz'), 'r+b') as f:
    f.write(b'garbage!' * 4)
  with pytest.raises(errors.StoreError, match='estimates.npz is unreadable'):
    estimates_file.load_estimates(workdir)
