"""How the analysis commands write their files.

Every write is atomic (store.atomic_write), so a kill leaves no torn file;
files that belong together are written as one set (`write_set`); a failure
ends as an OutputError naming the path and what to change (`writing`); and
the folder a command writes into is held for the command's length
(`output_folder`).
"""

import contextlib
import errno
import glob
import os

from feldman_zhang import errors
from feldman_zhang import store


class OutputError(errors.UserError):
  """An output that cannot be written (a full disk, a read-only folder, a
  path under a file); the message names the path and what to change."""


# The remedy for an output the commands write under --out.
OUT = 'name another folder with --out'


@contextlib.contextmanager
def writing(path: str, remedy: str | None = OUT):
  """An OSError in the block (a full disk's names no file) becomes an
  OutputError naming path and what to do: free space (a full disk), or
  remedy (None: nothing to name)."""
  try:
    yield
  except OSError as e:
    fixes = (['free space'] if e.errno in (errno.ENOSPC, errno.EDQUOT)
             else []) + ([remedy] if remedy else [])
    raise OutputError(f'cannot write {path}: {e.strerror or e}' +
                      (f'; {" or ".join(fixes)}' if fixes else '')) from e


def write_file(path: str, write, remedy: str | None = OUT) -> str:
  """store.atomic_write(path, write), a failure named (`writing`); returns
  path."""
  with writing(path, remedy):
    store.atomic_write(path, write)
  return path


def write_set(files: dict, remedy: str | None = OUT) -> list:
  """Writes {path: write(file object)} as one set that a kill never leaves
  mixed: every file is written to a temporary name first; then the last
  path's old file is removed, the others are renamed into place, and the
  last one last. A folder with some of the set but not its last file holds
  a partial set (`remove_partial_set`). Returns the paths."""
  paths, staged = list(files), {}
  try:
    for path, write in files.items():
      tmp = os.path.join(os.path.dirname(path),
                         f'.tmp-set-{os.getpid()}-{os.path.basename(path)}')
      with writing(path, remedy):
        store.atomic_write(tmp, write)
      staged[path] = tmp
    with writing(paths[-1], remedy):
      with contextlib.suppress(FileNotFoundError):
        os.remove(paths[-1])
      for path in paths:
        os.replace(staged[path], path)
  finally:
    for tmp in staged.values():  # those not renamed, if anything failed
      with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
  return paths


def remove_partial_set(paths: list) -> None:
  """Removes the files of a set (write_set) whose last file is missing."""
  if not os.path.exists(paths[-1]):
    for path in paths[:-1]:
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def output_folder(path: str):
  """The folder a command writes into: made if missing, held for the block
  (a second command writing it is refused in one line), and cleared first
  of the temporary files (.tmp-*) of writes a kill interrupted. Where the
  file system cannot lock a folder, it is neither held nor cleared."""
  with writing(path):
    os.makedirs(path, exist_ok=True)
  try:
    fd = store.lock_directory(path)
  except OSError:
    fd = -1
  if fd is None:
    raise OutputError(f'{path} is being written by another command; wait '
                      f'for it to end, or {OUT}')
  try:
    if fd >= 0:
      for tmp in glob.glob(os.path.join(glob.escape(path), '.tmp-*')):
        with contextlib.suppress(FileNotFoundError):
          os.remove(tmp)
    yield path
  finally:
    if fd >= 0:
      os.close(fd)


def clear_if_idle(workdir: str) -> None:
  """Removes the temporary files of killed writes in a run's folders
  (store.Workdir.temp_files: the report's and the experiment figures' are
  there) if no job holds the run's lock; a job that does removes them
  itself when it next starts."""
  try:
    fd = store.lock_directory(workdir)
  except OSError:
    return
  if fd is None:
    return
  try:
    for tmp in store.Workdir(workdir).temp_files():
      with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
  finally:
    os.close(fd)
