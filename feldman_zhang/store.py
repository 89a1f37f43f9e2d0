"""The run's files: its identity, per-chunk predictions, and the estimates.

WORKDIR/                    (every path: `Workdir`)
  run.json                  config, data fingerprint, format version
  chunks/models_A-B.npz     models A..B-1: subset masks and predictions
  estimates.npz             mem, mem_stderr, heldout_acc, ..., its config
  infl-CRC.npy              the (n, n_test) float32 matrices, named in
  infl_stderr-CRC.npy       estimates.npz
  infl_margin-CRC.npy
  config.json               the config, readable (written after the estimates)
  summary.json              what the job printed, and its timing

Every file is written to a temporary name and renamed into place, so a kill
leaves either the old file or the new one, never a torn one. Chunks carry a
sha256 of their arrays, checked on every read.
"""

import contextlib
import dataclasses
import errno
import glob
import hashlib
import json
import os
import re
import tempfile
import zlib

import numpy as np
from absl import logging

from feldman_zhang import units
from feldman_zhang.errors import StoreError

# 2: chunks carry each model's margins per view and the id of the run that
# wrote them (readers of version-1 chunks get neither).
FORMAT_VERSION = 2
_CHUNK_RE = re.compile(r'models_(\d+)-(\d+)\.npz$')
# Bits are packed along the example axis: a (t, n) bool matrix costs n/8 bytes
# per model, so 2,000 MNIST models keep all their predictions in ~40 MB.
_PACKED = ('masks', 'train_correct', 'test_correct')




LOCK_FILE = '.lock'
# The analysis commands' default output folders inside a run.
ANALYSIS_FOLDERS = ('pairs', 'figures', 'release', 'consistency',
                    'membership', 'lds')


@dataclasses.dataclass(frozen=True)
class Workdir:
  """Every path of a run directory: the one place its layout is written."""
  root: str

  def _join(self, *parts) -> str:
    return os.path.join(self.root, *parts)

  @property
  def run_json(self) -> str:
    return self._join('run.json')

  @property
  def config_json(self) -> str:
    return self._join('config.json')

  @property
  def summary_json(self) -> str:
    return self._join('summary.json')

  @property
  def estimates(self) -> str:
    return self._join('estimates.npz')

  @property
  def chunks(self) -> str:
    return self._join('chunks')

  @property
  def corrupt(self) -> str:
    """Where unreadable chunks are set aside (their models retrain)."""
    return self._join('chunks', 'corrupt')

  @property
  def lock(self) -> str:
    return self._join(LOCK_FILE)

  def chunk(self, start: int, stop: int) -> str:
    return self._join('chunks', f'models_{start:07d}-{stop:07d}.npz')

  def temp_files(self) -> list[str]:
    """Temporary files of writes a kill interrupted, in the folders the
    holder of the lock writes: the run's, its chunks', the experiments'
    (lastlayer/ itself: the comparison and the backbone's checksum; the
    heads' chunks are their own run's, as the ratios' runs are, each with
    its own lock) and the report's (report.html: the run's folder)."""
    folders = ('', 'chunks', 'drop', 'lastlayer')
    return sorted(p for f in folders
                  for p in glob.glob(self._join(f, '.tmp-*')))

  def dense(self, filename: str) -> str:
    return self._join(filename)

  def dense_files(self, name: str) -> list[str]:
    """The name-CRC.npy files of one dense matrix ('infl', 'infl_stderr')."""
    return glob.glob(self._join(f'{name}-*.npy'))

  # -- the experiments (experiments/) and the C-score's ratios (ratios.py)

  @property
  def drop(self) -> str:
    return self._join('drop')

  @property
  def drop_csv(self) -> str:
    return self._join('drop', 'drop.csv')

  def drop_theta(self, theta: float) -> str:
    return self._join('drop', f'theta_{theta:.4f}.npz')

  @property
  def lastlayer(self) -> 'Workdir':
    """The heads' own run (chunks, estimates) beside the backbone."""
    return Workdir(self._join('lastlayer'))

  @property
  def backbone(self) -> str:
    """The backbone's orbax checkpoint (a folder)."""
    return os.path.abspath(self._join('lastlayer', 'backbone'))

  @property
  def backbone_checksum(self) -> str:
    """The sha256 of the backbone's weights, beside its checkpoint."""
    return self._join('lastlayer', 'backbone.sha256.json')

  @property
  def comparison_json(self) -> str:
    return self._join('lastlayer', 'comparison.json')

  def ratio(self, ratio: float) -> 'Workdir':
    """The run of one C-score ratio other than subset_ratio."""
    return Workdir(self._join('ratios', f'{ratio:.4f}'))

  # -- what the analysis commands write by default

  def analysis(self, name: str) -> str:
    """The default output folder of an analysis command (ANALYSIS_FOLDERS)
    or file (report.html)."""
    return self._join(name)


def _read_umask() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return umask


_UMASK = _read_umask()  # read once: os.umask is process-wide, not per thread.


def _temp_file(directory: str, prefix: str, suffix: str = ''):
  """(fd, path) of a new temporary file in directory, made if missing."""
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
  # mkstemp makes the file owner-only; results should be as readable as any
  # file the user writes (shared workdirs on clusters).
  os.chmod(tmp, 0o666 & ~_UMASK)
  return fd, tmp


def atomic_write(path: str, write) -> None:
  """Calls write(file_object) on a temporary file, then renames it to path."""
  fd, tmp = _temp_file(os.path.dirname(path) or '.', '.tmp-')
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def lock_directory(path: str) -> int | None:
  """An fd holding an exclusive flock on the directory path itself (released
  when the fd is closed, or the process dies), or None if another process
  holds it. OSError where the file system cannot lock a directory (some
  NFS mounts)."""
  import fcntl  # pylint: disable=import-outside-toplevel  (POSIX only)
  fd = os.open(path, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    return None
  except OSError:
    os.close(fd)
    raise
  return fd


def _lock_note_file(path: str) -> int | None:
  """The fallback where a directory cannot be locked: flock on the note
  file, kept only if the path still names the file locked (a file removed
  or replaced between open and flock is not the lock). Removing the note
  of a holder lets another process in here: the directory lock has no such
  hole."""
  import fcntl  # pylint: disable=import-outside-toplevel
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      return None
    try:
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        return fd
    except FileNotFoundError:
      pass
    os.close(fd)


@contextlib.contextmanager
def locked(workdir: str):
  """Holds the workdir's exclusive lock for the block.

  An OS lock (flock) on the workdir directory itself: it dies with its
  process, so a SIGKILL never leaves a workdir locked, and no file inside
  can be removed to break it. WORKDIR/.lock is only the holder's note
  ("pid N on host"), which a second process, refused, names in one line.
  (Where a directory cannot be locked, some NFS mounts, the note file is
  locked instead.) Inside the lock no other process writes, so the
  temporary files of killed writes are removed here. In a multi-process
  (jax.distributed) run the leader holds it for all processes: they write
  disjoint chunks under its plan.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise StoreError(f'--workdir {workdir} is a file, not a directory')
  note = Workdir(workdir).lock
  try:
    os.makedirs(workdir, exist_ok=True)
    try:
      fd = lock_directory(workdir)
    except OSError:
      fd = _lock_note_file(note)
    if fd is None:
      raise StoreError(f'{workdir} is in use by another process '
                       f'({_holder(note)}); wait for it to end, or use '
                       'another --workdir')
  except OSError as e:
    raise StoreError(f'cannot use --workdir {workdir}: {e.strerror} '
                     f'({e.filename or workdir})') from e
  try:
    import socket  # pylint: disable=import-outside-toplevel
    try:
      with open(note, 'w') as f:
        f.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    except OSError as e:
      raise StoreError(f'cannot use --workdir {workdir}: {e.strerror} '
                       f'({e.filename})') from e
    for tmp in Workdir(workdir).temp_files():
      with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
    yield
  finally:
    os.close(fd)  # releases the lock


def _holder(note: str) -> str:
  """The holder's note, or 'unknown' (removed, or not written yet)."""
  try:
    with open(note, 'rb') as f:
      return f.read(200).decode(errors='replace').strip() or 'unknown'
  except OSError:
    return 'unknown'


def write_json(path: str, obj) -> None:
  atomic_write(path, lambda f: f.write(
      json.dumps(obj, indent=2, sort_keys=True).encode()))


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


# -- chunks -------------------------------------------------------------------


def chunk_path(workdir: str, start: int, stop: int) -> str:
  return Workdir(workdir).chunk(start, stop)


def _checksum(arrays) -> str:
  h = hashlib.sha256()
  for k in sorted(arrays):
    a = np.ascontiguousarray(arrays[k])
    h.update(f'{k}{a.shape}{a.dtype.str}'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


# Margins are stored as float16: BENCHMARKS.md ("Margins: float16 against
# float32") measures what the rounding changes in the attacks' AUC and LDS.
MARGIN_DTYPE = np.float16


def write_chunk(workdir: str, model_ids, masks, train_correct, test_correct,
                train_ptrue, test_ptrue, loss, train_margin=None,
                test_margin=None, run_id: str = '') -> str:
  """Writes the predictions of consecutive models; returns the file's path.

  Args:
    model_ids: (K,) consecutive global model ids.
    masks: (K, n) bool, subset membership.
    train_correct, test_correct: (K, n), (K, n_test) bool.
    train_ptrue, test_ptrue: same shapes, probability of the true label.
    loss: (K, epochs) float, mean training loss of each epoch.
    train_margin, test_margin: (K, n, V), (K, n_test, V) float, each view's
      margin of the true class (train.margin), or None.
    run_id: identity.run_id of the run writing it: a reader sets aside a
      chunk of another run (`read_chunk`'s expect).
  """
  model_ids = np.asarray(model_ids, np.int64)
  if np.any(np.diff(model_ids) != 1):
    raise ValueError('a chunk holds consecutive model ids')
  arrays = dict(
      model_ids=model_ids,
      n=np.int64(masks.shape[1]), n_test=np.int64(test_correct.shape[1]),
      train_ptrue=np.asarray(train_ptrue, np.float16),
      test_ptrue=np.asarray(test_ptrue, np.float16),
      loss=np.asarray(loss, np.float32), run_id=np.array(str(run_id)))
  if train_margin is not None:
    arrays['train_margin'] = np.asarray(train_margin, MARGIN_DTYPE)
    arrays['test_margin'] = np.asarray(test_margin, MARGIN_DTYPE)
  for k, v in (('masks', masks), ('train_correct', train_correct),
               ('test_correct', test_correct)):
    arrays[k] = np.packbits(np.asarray(v, bool), axis=1)
  arrays['checksum'] = np.array(_checksum(arrays))
  path = chunk_path(workdir, int(model_ids[0]), int(model_ids[-1]) + 1)
  atomic_write(path, lambda f: np.savez(f, **arrays))
  return path


class ForeignChunkError(StoreError):
  """A sound chunk that another run wrote (or of other shapes)."""


def read_chunk(path: str, expect: dict | None = None) -> dict:
  """The arrays of one chunk, unpacked; StoreError if torn or corrupt,
  ForeignChunkError if it does not match expect: {'run_id': str, 'n': int,
  'n_test': int} (any subset of the keys)."""
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # zipfile, zlib and numpy raise many types.
    raise StoreError(f'chunk {path} is unreadable: {e}') from e
  checksum = str(arrays.pop('checksum', ''))
  if checksum != _checksum(arrays):
    raise StoreError(f'chunk {path} fails its checksum')
  named = _CHUNK_RE.search(os.path.basename(path))
  ids = arrays['model_ids']
  if named and (len(ids) != int(named[2]) - int(named[1]) or
                (len(ids) and int(ids[0]) != int(named[1]))):
    # A chunk copied over another: sound, but not the models its name says.
    got = f'{ids[0]}-{ids[-1] + 1}' if len(ids) else 'none'
    raise StoreError(f'chunk {path} holds models {got}, not the models '
                     f'{int(named[1])}-{int(named[2])} its name says')
  n, n_test = int(arrays.pop('n')), int(arrays.pop('n_test'))
  run_id = str(arrays.pop('run_id', ''))
  if expect:
    got = dict(run_id=run_id, n=n, n_test=n_test)
    wrong = [k for k in expect if got[k] != expect[k]]
    if wrong:
      raise ForeignChunkError(
          f'chunk {path} belongs to another run ({", ".join(wrong)} '
          f'{"differ" if len(wrong) > 1 else "differs"})')
  arrays['run_id'] = run_id  # so write_chunk(**read_chunk(path)) copies it
  for k in _PACKED:
    count = n_test if k == 'test_correct' else n
    # unpackbits gives 0/1 bytes: viewed as bool, not copied.
    arrays[k] = np.unpackbits(arrays[k], axis=1, count=count).view(bool)
  return arrays


def list_chunks(workdir: str):
  """[(start, stop, path)] of the chunk files, by start."""
  out = []
  for path in glob.glob(os.path.join(Workdir(workdir).chunks, 'models_*.npz')):
    match = _CHUNK_RE.search(os.path.basename(path))
    if match:
      out.append((int(match.group(1)), int(match.group(2)), path))
  return sorted(out)


def stored_models(workdir: str, num_models: int, quarantine: bool,
                  expect: dict | None = None):
  """(num_models,) bool: which models have a readable chunk of this run.

  A corrupt chunk, or one that does not match expect (read_chunk: another
  run's, copied in), is reported and, with quarantine, moved to
  chunks/corrupt, so its models train again; quarantine also removes the
  temporary files of killed writes (the leader scans while no process
  writes).
  """
  have = np.zeros(num_models, bool)
  w = Workdir(workdir)
  if quarantine:
    for tmp in w.temp_files():
      with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
  for start, stop, path in list_chunks(workdir):
    try:
      read_chunk(path, expect)
    except StoreError as e:
      if quarantine:
        logging.warning('%s; moving it to chunks/corrupt and retraining', e)
        os.makedirs(w.corrupt, exist_ok=True)
        os.replace(path, os.path.join(w.corrupt, os.path.basename(path)))
      continue
    have[start:min(stop, num_models)] = True
  return have


def load_predictions(workdir: str, num_models: int = 0,
                     expect: dict | None = None) -> dict:
  """All stored predictions, ordered by model id.

  Args:
    workdir: the run's directory.
    num_models: if > 0, only models 0..num_models-1, which must all be there.
    expect: what every chunk must match (read_chunk); StoreError if one
      does not.
  Returns:
    dict of numpy arrays: model_ids (t,), masks (t, n) bool, train_correct
    (t, n) bool, test_correct (t, n_test) bool, train_ptrue (t, n) float16,
    test_ptrue (t, n_test) float16, loss (t, epochs) float32, and where
    every chunk has them (format 2), train_margin (t, n, V) and test_margin
    (t, n_test, V) float16.
  """
  chunks = [c for c in list_chunks(workdir)
            if not num_models or c[0] < num_models]
  if not chunks:
    raise StoreError(f'no prediction chunks in {workdir}/chunks')
  parts = [read_chunk(path, expect) for _, _, path in chunks]
  for p in parts:
    del p['run_id']
  shared = set.intersection(*(set(p) for p in parts))
  if any(set(p) != shared for p in parts):  # margins of format-2 chunks only
    parts = [{k: p[k] for k in shared} for p in parts]
  # Copies are avoided where they would change nothing: at MNIST scale each
  # full copy of the predictions costs about a second.
  out = (parts[0] if len(parts) == 1 else
         {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  order = np.argsort(out['model_ids'], kind='stable')
  if np.any(order != np.arange(len(order))):
    out = {k: v[order] for k, v in out.items()}
  ids = out['model_ids']
  if np.any(np.diff(ids) == 0):
    raise StoreError(f'{workdir}/chunks holds model {ids[1:][np.diff(ids) == 0][0]} '
                     'twice')
  if num_models:
    keep = ids < num_models
    if not keep.all():
      out = {k: v[keep] for k, v in out.items()}
    if len(out['model_ids']) != num_models:
      missing = sorted(set(range(num_models)) - set(out['model_ids'].tolist()))
      raise StoreError(f'{workdir}/chunks lacks {len(missing)} of models '
                       f'0..{num_models - 1}, e.g. {missing[0]}')
  return out


# -- estimates ----------------------------------------------------------------


# The (n, n_test) matrices (2.4 GB each at MNIST's size) are plain .npy files
# beside estimates.npz rather than members of it: they are filled tile by tile
# as the device computes them (store.new_dense), and read back memory-mapped,
# so an analysis that needs a few rows does not read them whole (MNIST's infl
# loads from an npz in seconds, maps in milliseconds). Each file is named
# by the crc32 of its data (the array, not the .npy header) and estimates.npz
# names the file it goes with, so a kill between the writes leaves the old
# estimates.npz with the old file.
DENSE = ('infl', 'infl_stderr', 'infl_margin')
_DENSE_TMP = '.tmp-dense-'


def estimates_path(workdir: str) -> str:
  return Workdir(workdir).estimates


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
  fd, tmp = _temp_file(workdir, _DENSE_TMP, '.npy')
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
    atomic_write(os.path.join(workdir, filename),
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
  atomic_write(path, lambda f: np.savez(f, **small))
  keep = {str(small[f'{name}_file']) for name in DENSE
          if f'{name}_file' in small}
  for name in DENSE:
    for old in Workdir(workdir).dense_files(name):
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
      path = Workdir(workdir).dense(str(out.pop(f'{name}_file')))
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
