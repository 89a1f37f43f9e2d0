"""A finished run as the analysis scripts see it, and their shared drawing.

`load_run(workdir)` reads what the estimate job left (config.json,
summary.json, estimates.npz) and reloads the data set the models trained on,
label noise included, so every index and label the scripts show is the one
the estimates refer to.

Figures are `matplotlib.figure.Figure`s made without pyplot: they render
through the Agg canvas whatever the user's backend, hold no global state, and
the scripts either save them (`save_png`) or embed them (`png_bytes`).
"""

import contextlib
import dataclasses
import errno
import functools
import glob
import io
import json
import logging
import os
import sys

from absl import app

from matplotlib import figure as mpl_figure

from feldman_zhang import config as config_lib
from feldman_zhang import data as data_lib
from feldman_zhang import errors
from feldman_zhang import identity as identity_lib
from feldman_zhang import store

# What a user can get wrong (a workdir, a data set that moved): main() shows
# these as one line and exits non-zero.
USER_ERRORS = errors.USER_ERRORS


class OutputError(errors.UserError):
  """An output that cannot be written (a full disk, a read-only folder, a
  path under a file); the message names the path and what to change."""


# -- the commands -------------------------------------------------------------


def command(main):
  """An analysis command's main, as every command's run() hands it to
  app.run: what a user can cause ends as one line and a non-zero exit --
  a UserError (a damaged or unfinished run, an output that cannot be
  written), any other OSError (named by its path), and Ctrl-C
  ('interrupted', exit 130). Every write is atomic, so none of these
  leaves a torn or temporary file. Anything else is a bug and keeps its
  traceback."""
  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except USER_ERRORS as e:
      sys.exit(f'error: {e}')
    except OSError as e:
      where = f' ({e.filename})' if e.filename else ''
      sys.exit(f'error: {e.strerror or e}{where}')
    except KeyboardInterrupt:
      print('interrupted', file=sys.stderr)
      sys.exit(130)
  return wrapped


def run_command(define_flags, main) -> None:
  """Defines a command's flags and runs its main through `command`."""
  define_flags()
  # JAX logs its probe for a TPU on every CPU host: not the user's concern.
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  app.run(command(main))


_OUT = 'name another folder with --out'


@contextlib.contextmanager
def writing(path: str, remedy: str | None = _OUT):
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


def write_file(path: str, write, remedy: str | None = _OUT) -> str:
  """store.atomic_write(path, write), a failure named (`writing`); returns
  path."""
  with writing(path, remedy):
    store.atomic_write(path, write)
  return path


def write_set(files: dict, remedy: str | None = _OUT) -> list:
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
                      f'for it to end, or {_OUT}')
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


@dataclasses.dataclass(frozen=True)
class Run:
  """A finished estimate run.

  config: the run's config as a nested dict (the estimates' record, over
    base()'s values for fields the run predates: config.from_record).
  summary: summary.json, or None if the run was not summarized.
  estimates: estimates.npz: mem, mem_stderr, in_acc, heldout_acc (n,)
    float32; num_in (n,) int32; infl (n, n_test) float32 and infl_stderr
    when estimated (read-only memory maps of their files); infl_top_* /
    infl_pair_* in the top-k form.
  dataset: the data set the models trained on (its noisy labels, if any).
  resolved: the config as the job resolved it (every 'auto' concrete), as
    the estimates record it; runs before they recorded it: config.
  """
  workdir: str
  config: dict
  summary: dict | None
  estimates: dict
  dataset: data_lib.Dataset
  resolved: dict


def read_json_or_fail(path: str,
                      remedy: str = 're-run the same estimate command to '
                      'rewrite it'):
  """A run's JSON file, or StoreError in one line saying the remedy."""
  try:
    return store.read_json(path)
  except (OSError, ValueError) as e:
    raise store.StoreError(f'{path} is unreadable ({e}); {remedy}') from e


def check_finished(workdir: str) -> store.Workdir:
  """The workdir of a finished run; StoreError in one line if it is not."""
  w = store.Workdir(workdir)
  if not os.path.exists(w.run_json):
    raise store.StoreError(f'{workdir} has no run.json: not a run '
                           'directory (python -m feldman_zhang.main '
                           f'--workdir={workdir} makes one)')
  if not os.path.exists(w.estimates):
    raise store.StoreError(f'{workdir} has no estimates.npz: the run has not '
                           'finished; run the estimate there first')
  return w


def load_run(workdir: str, need_infl: bool = False) -> Run:
  """Reads a finished run; StoreError with a one-line reason if it is not."""
  w = check_finished(workdir)
  config_path = w.config_json
  estimates = store.load_estimates(workdir)
  # The config the estimates were made with; runs before they recorded it
  # need config.json.
  resolved = (json.loads(str(estimates.pop('resolved_config_json')))
              if 'resolved_config_json' in estimates else None)
  if 'config_json' in estimates:
    config = json.loads(str(estimates.pop('config_json')))
  elif os.path.exists(config_path):
    config = read_json_or_fail(config_path)
  else:
    raise store.StoreError(f'{workdir} has no config.json (written after '
                           'estimates.npz): re-run the same estimate command')
  if need_infl and not has_influence(estimates):
    raise store.StoreError(
        f'{workdir}/estimates.npz holds no influence estimates (the run had '
        'estimate.infl=False and estimate.infl_topk=0); rerun with either set')
  config = config_lib.from_record(config)
  resolved = config_lib.from_record(resolved) if resolved else config
  summary_path = w.summary_json
  summary = (read_json_or_fail(summary_path) if os.path.exists(summary_path)
             else None)
  dataset = load_dataset(config)
  _check_data(workdir, dataset, estimates)
  return Run(workdir, config, summary, estimates, dataset, resolved)


def load_run_or_exit(argv, workdir: str, need_infl: bool = False) -> Run:
  """A script's first step: its run, or a one-line error and exit 1."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    return load_run(workdir, need_infl)
  except USER_ERRORS as e:
    sys.exit(f'error: {e}')


def load_dataset(config: dict) -> data_lib.Dataset:
  """The data set as the job builds it for training."""
  return data_lib.from_config(config)


def _check_data(workdir, ds, estimates):
  """Refuses a data set other than the trained one: its indices would lie."""
  run_path = store.Workdir(workdir).run_json
  if os.path.exists(run_path):
    try:
      trained = read_json_or_fail(
          run_path, 'it records what the models were trained on, so the run '
          'cannot be checked or resumed: re-run the estimate in a new '
          '--workdir')['identity']['data']
    except (KeyError, TypeError) as e:
      raise store.StoreError(f'{run_path} lacks the data fingerprint '
                             f'({e!r}); re-run the same estimate command '
                             'in a new --workdir') from e
    if trained != ds.fingerprint():
      raise store.StoreError(
          f'the data set {ds.name} differs from the one the run in {workdir} '
          'trained on (data fingerprints differ in run.json)')
  if len(estimates['mem']) != ds.num_train:
    raise store.StoreError(
        f'{workdir}/estimates.npz is for {len(estimates["mem"])} training '
        f'examples but {ds.name} has {ds.num_train}')
  # Estimates copied in from another run (issue 27, item 3): their run id
  # is not this run.json's. (Estimates written before run ids have none.)
  if 'run_id' in estimates and os.path.exists(run_path):
    if str(estimates['run_id']) != identity_lib.run_id(workdir):
      raise store.StoreError(
          f'{workdir}/estimates.npz was made by another run (its run id is '
          'not that of run.json); re-run the same estimate command there '
          'to rebuild it from its own models')


def has_influence(estimates: dict) -> bool:
  """Whether the estimates hold infl, dense or in the top-k form."""
  return 'infl' in estimates or 'infl_top_infl' in estimates


def mem_threshold(run: Run) -> float:
  """The run's bar for "memorized" (the paper's 0.25 unless changed)."""
  return float(run.config['summary']['mem_threshold'])


# -- drawing ------------------------------------------------------------------


def new_figure(width: float, height: float) -> mpl_figure.Figure:
  return mpl_figure.Figure(figsize=(width, height))


def show_image(ax, x, caption: str = '', color: str = 'black') -> None:
  """Draws one (H, W, C) uint8 image, C = 1 (grey) or 3 (RGB), captioned."""
  if x.shape[-1] == 1:
    ax.imshow(x[..., 0], cmap='gray', vmin=0, vmax=255,
              interpolation='nearest')
  else:
    ax.imshow(x, interpolation='nearest')
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_xlabel(caption, fontsize=7, color=color, linespacing=1.1)


def png_bytes(fig: mpl_figure.Figure, dpi: int = 100) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=dpi)
  return buf.getvalue()


def save_png(fig: mpl_figure.Figure, path: str, dpi: int = 100,
             remedy: str | None = _OUT) -> str:
  """Writes the figure (atomically, as the store does); returns the path.
  OutputError naming it if it cannot be written (`writing`)."""
  data = png_bytes(fig, dpi)
  return write_file(path, lambda f: f.write(data), remedy)
