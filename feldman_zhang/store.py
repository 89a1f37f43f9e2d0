"""A run's directory: its layout, atomic writes, the lock, and json files.

WORKDIR/                    (every path: `Workdir`)
  run.json                  config, data fingerprint, format version
  chunks/models_A-B.npz     models A..B-1: subset masks and predictions
                            (chunks.py)
  estimates.npz             mem, mem_stderr, heldout_acc, ..., its config
  infl-CRC.npy              the (n, n_test) float32 matrices, named in
  infl_stderr-CRC.npy       estimates.npz (estimates_file.py)
  infl_margin-CRC.npy
  config.json               the config, readable (written after the estimates)
  summary.json              what the job printed, and its timing

Every file is written to a temporary name and renamed into place, so a kill
leaves either the old file or the new one, never a torn one.
"""

import contextlib
import dataclasses
import glob
import json
import os
import tempfile

from feldman_zhang.errors import StoreError

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

