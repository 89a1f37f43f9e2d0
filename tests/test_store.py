"""The workdir: its lock (one process at a time, a killed holder leaves
none), stale temporary files removed under it, bad workdirs in one line."""

import glob
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT
from feldman_zhang import errors
from feldman_zhang import pipeline
from feldman_zhang import store


def _files(workdir):
  return {os.path.relpath(p, workdir): open(p, 'rb').read()
          for p in glob.glob(os.path.join(workdir, '**', '*'), recursive=True)
          if os.path.isfile(p) and not p.endswith(store.LOCK_FILE) and
          'summary.json' not in p}


@pytest.mark.integration
def test_a_second_process_is_refused_and_names_the_holder(finished):
  c, workdir, _ = finished
  before = _files(workdir)
  with store.locked(workdir):
    with pytest.raises(errors.StoreError,
                       match=rf'in use by another process \(pid {os.getpid()}'):
      pipeline.run(c, workdir)
  assert _files(workdir) == before
  pipeline.run(c, workdir)  # free again


@pytest.mark.integration
def test_a_killed_holder_leaves_no_lock(tmp_path):
  workdir = str(tmp_path / 'run')
  holder = _hold_lock(workdir)
  with pytest.raises(errors.StoreError, match='in use'):
    with store.locked(workdir):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with store.locked(workdir):
    pass


def test_stale_temporary_files_are_removed_under_the_lock(tmp_path):
  workdir = tmp_path / 'run'
  (workdir / 'chunks').mkdir(parents=True)
  for p in (workdir / '.tmp-abc', workdir / '.tmp-dense-x.npy',
            workdir / 'chunks' / '.tmp-y'):
    p.write_bytes(b'torn')
  (workdir / 'keep.txt').write_text('mine')
  with store.locked(str(workdir)):
    pass
  assert sorted(p.name for p in workdir.rglob('*')
                if p.is_file()) == ['.lock', 'keep.txt']


@pytest.mark.integration
def test_bad_workdirs_are_one_line(tiny_config, tmp_path):
  afile = tmp_path / 'file'
  afile.write_text('x')
  with pytest.raises(errors.StoreError, match='is a file, not a directory'):
    pipeline.run(tiny_config, str(afile))
  with pytest.raises(errors.StoreError, match='cannot use --workdir'):
    pipeline.run(tiny_config, '/proc/feldman_zhang_test/run')


def _hold_lock(workdir):
  """A process holding workdir's lock until killed."""
  holder = subprocess.Popen(
      [sys.executable, '-c',
       'import sys, time; from feldman_zhang import store\n'
       f'with store.locked({workdir!r}):\n'
       '  print("held", flush=True); time.sleep(60)'],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'held'
  return holder


@pytest.mark.integration
def test_deleting_the_lock_file_lets_no_second_process_in(tmp_path):
  workdir = str(tmp_path / 'run')
  holder = _hold_lock(workdir)
  try:
    os.remove(os.path.join(workdir, store.LOCK_FILE))
    with pytest.raises(errors.StoreError, match='in use by another process'):
      with store.locked(workdir):
        pass
  finally:
    holder.kill()
    holder.wait()
  with store.locked(workdir):  # free once the holder is gone
    pass


def test_the_experiments_stale_temporary_files_are_removed_under_the_lock(
    tmp_path):
  workdir = tmp_path / 'run'
  stale = [workdir / d / '.tmp-killed' for d in ('drop', 'lastlayer')]
  for p in stale:
    p.parent.mkdir(parents=True)
    p.write_bytes(b'torn')
  with store.locked(str(workdir)):
    pass
  assert not any(p.exists() for p in stale)


def test_where_a_directory_cannot_be_locked_the_note_file_is(tmp_path,
                                                             monkeypatch):
  import errno

  def no_directory_locks(path):  # some NFS mounts
    raise OSError(errno.EBADF, 'Bad file descriptor')

  monkeypatch.setattr(store, 'lock_directory', no_directory_locks)
  workdir = str(tmp_path / 'run')
  with store.locked(workdir):
    with pytest.raises(errors.StoreError,
                       match=rf'in use by another process \(pid {os.getpid()}'):
      with store.locked(workdir):
        pass
  with store.locked(workdir):  # released
    pass
