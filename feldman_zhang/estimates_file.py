"""The estimates file: estimates.npz and the dense matrices beside it.

estimates.npz holds the (n,) estimates and the config they came from; each
(n, n_test) float32 matrix (DENSE) is its own WORKDIR/NAME-CRC.npy, named in
estimates.npz and checked against that crc32 when read.
"""

import contextlib
import errno
import glob
import os
import re
import zlib

import numpy as np

from feldman_zhang import store
from feldman_zhang import units
from feldman_zhang.errors import StoreError


# The (n, n_test) matrices (2.4 GB each at MNIST's size) are plain .npy files
# beside estimates.npz rather than members of it: they are filled tile by tile
# as the device computes them (new_dense), and read back memory-mapped,
# so an analysis that needs a few rows does not read them whole (MNIST's infl
# loads from an npz in seconds, maps in milliseconds). Each file is named
# by the crc32 of its data (the array, not the .npy header) and estimates.npz
# names the file it goes with, so a kill between the writes leaves the old
# estimates.npz with the old file.
DENSE = ('infl', 'infl_stderr', 'infl_margin')
_DENSE_TMP = '.tmp-dense-'


def estimates_path(workdir: str) -> str:
  return store.Workdir(workdir).estimates


@contextlib.contextmanager
def dense_files(workdir: str):
  """Yields new_dense(workdir, shape) as a function of shape, and removes
  the files it made if the block raises (each is as large as the matrix)."""
  made = []

  def new(shape):
    made.append(new_dense(workdir, shape))
    return made[-1]
  try:
    yield new
  except BaseException:
    for array in made:
      if os.path.exists(array.filename):
        os.remove(array.filename)
    raise


def new_dense(workdir: str, shape) -> np.memmap:
  """A zeroed float32 array of `shape` backed by a temporary .npy file in
  workdir; write_estimates seals it in place instead of copying it."""
  fd, tmp = store._temp_file(workdir, _DENSE_TMP, '.npy')
  os.close(fd)
  try:
    array = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.float32,
                                      shape=tuple(shape))
    # The blocks are reserved now: a page the disk has no room for would
    # otherwise kill the job with SIGBUS at its first write, not raise here.
    # (Where the file system cannot reserve, glibc writes a byte per block.)
    if hasattr(os, 'posix_fallocate'):
      with open(tmp, 'rb+') as f:
        os.posix_fallocate(f.fileno(), 0, os.path.getsize(tmp))
  except OSError as e:
    os.remove(tmp)
    if e.errno != errno.ENOSPC:
      raise
    raise StoreError(f'{workdir} has no room for a '
                     f'{units.human_bytes(np.prod(shape) * 4)} matrix '
                     f'{tuple(shape)}; free space, or set '
                     'estimate.infl=False') from e
  return array


def _crc32(array) -> int:
  crc, flat = 0, array.reshape(-1)
  step = 1 << 26  # 256 MB at a time: a map is never read in one piece
  for start in range(0, flat.size, step):
    crc = zlib.crc32(np.ascontiguousarray(flat[start:start + step]), crc)
  return crc


def _write_dense(workdir: str, name: str, array) -> str:
  """Writes array to workdir/NAME-CRC.npy; returns that file's name."""
  # A new_dense map of this workdir not sealed yet is renamed, not copied.
  if (isinstance(array, np.memmap) and os.path.basename(
      array.filename).startswith(_DENSE_TMP) and
      os.path.dirname(array.filename) == os.path.abspath(workdir) and
      os.path.exists(array.filename)):
    array.flush()
    crc = _crc32(array)
    with open(array.filename, 'rb+') as f:
      os.fsync(f.fileno())
    filename = f'{name}-{crc:08x}.npy'
    os.replace(array.filename, os.path.join(workdir, filename))
  else:
    array = np.asarray(array, np.float32)
    filename = f'{name}-{_crc32(array):08x}.npy'
    store.atomic_write(os.path.join(workdir, filename),
                       lambda f: np.save(f, array))
  return filename


def write_estimates(workdir: str, estimates: dict) -> str:
  """Writes estimates.npz, with the dense matrices (DENSE) in their own
  files; removes the files of earlier estimates. Returns the npz's path."""
  small = {k: v for k, v in estimates.items() if k not in DENSE}
  for name in DENSE:
    if name in estimates:
      small[f'{name}_file'] = np.array(
          _write_dense(workdir, name, estimates[name]))
  path = estimates_path(workdir)
  store.atomic_write(path, lambda f: np.savez(f, **small))
  keep = {str(small[f'{name}_file']) for name in DENSE
          if f'{name}_file' in small}
  for name in DENSE:
    for old in store.Workdir(workdir).dense_files(name):
      if os.path.basename(old) not in keep:
        os.remove(old)
  # Ours are sealed by now: any left were a killed job's.
  for tmp in glob.glob(os.path.join(workdir, _DENSE_TMP + '*')):
    os.remove(tmp)
  return path


def load_estimates(workdir: str, verify: bool = True) -> dict:
  """The estimates as numpy arrays; infl and infl_stderr (n, n_test) are
  read-only memory maps (or arrays, from runs that kept them in the npz).

  verify: check each dense file against the crc32 in its name (reads it
  whole once); False maps it unchecked.

  A map reads its file as it goes: a rerun of the job in the same workdir
  replaces the file, so copy what you need (np.array(est['infl'][rows]))
  before rerunning while an analysis holds it, above all on NFS.
  """
  path = estimates_path(workdir)
  try:
    with np.load(path, allow_pickle=False) as f:
      out = {k: f[k] for k in f.files}
  except FileNotFoundError:
    raise
  except Exception as e:  # zipfile, zlib and numpy raise many types.
    raise StoreError(f'{path} is unreadable ({type(e).__name__}: {e}); '
                     're-run the same estimate command to rebuild it') from e
  for name in DENSE:
    if f'{name}_file' in out:
      path = store.Workdir(workdir).dense(str(out.pop(f'{name}_file')))
      if not os.path.exists(path):
        raise StoreError(f'{path}, named in {estimates_path(workdir)}, is '
                         'missing: rerun the job to estimate again')
      try:
        out[name] = np.load(path, mmap_mode='r')
      except (ValueError, OSError) as e:  # a torn or overwritten header
        raise StoreError(f'{path} is unreadable ({e}); re-run the same '
                         'estimate command to rebuild it') from e
      if verify:
        _verify_dense(path, out[name])
  return out


def _verify_dense(path: str, array) -> None:
  """The crc32 its name carries, over the whole file's data (about 1 s per
  GB): a bit flipped anywhere is refused, not read as an estimate."""
  named = re.search(r'-([0-9a-f]{8})\.npy$', path)
  if named is None or _crc32(array) != int(named[1], 16):
    raise StoreError(f'{path} is corrupt (its data does not match the crc32 '
                     'in its name); re-run the same estimate command to '
                     'rebuild it from the stored models')
