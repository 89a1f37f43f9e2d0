"""A finished run as the analysis commands see it.

`load_run(workdir)` reads what the estimate job left (config.json,
summary.json, estimates.npz) and reloads the data set the models trained on,
label noise included, so every index and label the commands show is the one
the estimates refer to.
"""

import dataclasses
import json
import os
import sys

from absl import app

from feldman_zhang import config as config_lib
from feldman_zhang import data as data_lib
from feldman_zhang import errors
from feldman_zhang import estimates_file
from feldman_zhang import identity as identity_lib
from feldman_zhang import store
from feldman_zhang.dataset import Dataset


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
  dataset: Dataset
  resolved: dict


def read_json_or_fail(path: str,
                      remedy: str = 're-run the same estimate command to '
                      'rewrite it'):
  """A run's JSON file, or StoreError in one line saying the remedy."""
  try:
    return store.read_json(path)
  except (OSError, ValueError) as e:
    raise errors.StoreError(f'{path} is unreadable ({e}); {remedy}') from e


def check_finished(workdir: str) -> store.Workdir:
  """The workdir of a finished run; StoreError in one line if it is not."""
  w = store.Workdir(workdir)
  if not os.path.exists(w.run_json):
    raise errors.StoreError(f'{workdir} has no run.json: not a run '
                           'directory (python -m feldman_zhang.main '
                           f'--workdir={workdir} makes one)')
  if not os.path.exists(w.estimates):
    raise errors.StoreError(f'{workdir} has no estimates.npz: the run has not '
                           'finished; run the estimate there first')
  return w


def load_run(workdir: str, need_infl: bool = False) -> Run:
  """Reads a finished run; StoreError with a one-line reason if it is not."""
  w = check_finished(workdir)
  config_path = w.config_json
  estimates = estimates_file.load_estimates(workdir)
  # The config the estimates were made with; runs before they recorded it
  # need config.json.
  resolved = (json.loads(str(estimates.pop('resolved_config_json')))
              if 'resolved_config_json' in estimates else None)
  if 'config_json' in estimates:
    config = json.loads(str(estimates.pop('config_json')))
  elif os.path.exists(config_path):
    config = read_json_or_fail(config_path)
  else:
    raise errors.StoreError(f'{workdir} has no config.json (written after '
                           'estimates.npz): re-run the same estimate command')
  if need_infl and not has_influence(estimates):
    raise errors.StoreError(
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
  """A command's first step: its run, or a one-line error and exit 1."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    return load_run(workdir, need_infl)
  except errors.USER_ERRORS as e:
    sys.exit(f'error: {e}')


def load_dataset(config: dict) -> Dataset:
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
      raise errors.StoreError(f'{run_path} lacks the data fingerprint '
                             f'({e!r}); re-run the same estimate command '
                             'in a new --workdir') from e
    if trained != ds.fingerprint():
      raise errors.StoreError(
          f'the data set {ds.name} differs from the one the run in {workdir} '
          'trained on (data fingerprints differ in run.json)')
  if len(estimates['mem']) != ds.num_train:
    raise errors.StoreError(
        f'{workdir}/estimates.npz is for {len(estimates["mem"])} training '
        f'examples but {ds.name} has {ds.num_train}')
  # Estimates copied in from another run (issue 27, item 3): their run id
  # is not this run.json's. (Estimates written before run ids have none.)
  if 'run_id' in estimates and os.path.exists(run_path):
    if str(estimates['run_id']) != identity_lib.run_id(workdir):
      raise errors.StoreError(
          f'{workdir}/estimates.npz was made by another run (its run id is '
          'not that of run.json); re-run the same estimate command there '
          'to rebuild it from its own models')


def has_influence(estimates: dict) -> bool:
  """Whether the estimates hold infl, dense or in the top-k form."""
  return 'infl' in estimates or 'infl_top_infl' in estimates


def mem_threshold(run: Run) -> float:
  """The run's bar for "memorized" (the paper's 0.25 unless changed)."""
  return float(run.config['summary']['mem_threshold'])
