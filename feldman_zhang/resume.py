"""What a workdir already holds, and what is left to train.

A workdir belongs to one run: `run.json` records everything its stored
predictions depend on (config fields that change results, the data's
fingerprint, trainer and format versions), and a resume must match it. The
models still missing are planned on a fixed grid of cells, so a model always
trains at the same place of the same program, whichever process, device or
attempt trains it.
"""

import glob
import os

import jax
import numpy as np
from absl import logging

from feldman_zhang import config as config_lib
from feldman_zhang import distributed
from feldman_zhang import store
from feldman_zhang import train

# Bumped whenever a change to the trainer or the store changes what a stored
# chunk means; a workdir written under another version is not resumed.
TRAINER_VERSION = 1

# Result fields added since TRAINER_VERSION 1, with the value that computes
# what runs recorded before them computed: an older run.json lacking one is
# read as holding this value, so adding a field does not orphan old runs.
ADDED_FIELDS = {'train.param_storage': 'float32', 'model.tta': 'none',
                'train.lr_start': 0.0, 'train.lr_end': 0.0,
                'train.bias_lr_scale': 1.0, 'train.whiten_bias_epochs': 0,
                'train.lookahead': False}


class IdentityError(store.StoreError):
  """A workdir made by a run with other settings; diffs names the fields."""

  def __init__(self, workdir, diffs, values=None):
    values = values or {}
    named = [f'{k} (stored {values[k][0]!r}, given {values[k][1]!r})'
             if k in values else k for k in diffs]
    super().__init__(f'{workdir} holds a run with other settings: '
                     f'{", ".join(named)} differ; use a new --workdir or the '
                     'old settings')
    self.diffs = diffs


_DTYPES = ('compute_dtype', 'momentum_dtype')


def identity(config, ds) -> dict:
  """What the stored predictions depend on; a resume must match it exactly.

  The dtypes and the parameter storage are resolved: 'auto' means bf16 and
  split storage on an accelerator, f32 on the CPU, and a run must not mix
  the two; 'auto' and what it resolves to are the same run.
  """
  dtypes = {k: jax.numpy.dtype(train.compute_dtype(config.train[k])).name
            for k in _DTYPES}
  fields = config_lib.result_fields(config)
  fields.update({f'train.{k}': v for k, v in dtypes.items()})
  fields['train.param_storage'] = train.param_storage(config.train)
  return dict(config=fields, dtypes=dtypes,
              data=ds.fingerprint(), trainer_version=TRAINER_VERSION,
              format_version=store.FORMAT_VERSION)


def keep_recorded_storage(config, workdir):
  """config, or a copy whose train.param_storage 'auto' is the storage the
  workdir's stored models were trained with.

  auto once meant float32 everywhere: a run stored then on a GPU resumes
  with its own storage instead of being refused for one it never chose.
  """
  path = os.path.join(workdir, 'run.json')
  if (config.train.param_storage != 'auto' or not os.path.exists(path) or
      not store.list_chunks(workdir)):
    return config
  try:
    recorded = _read_identity(path)['config']['train.param_storage']
  except store.StoreError:
    return config  # check_identity says what is wrong with it
  bf16 = train.compute_dtype(config.train.compute_dtype) == jax.numpy.bfloat16
  if (recorded == train.param_storage(config.train) or
      recorded not in ('float32', 'split') or (recorded == 'split' and
                                               not bf16)):
    return config  # the same, or check_identity refuses the run anyway
  logging.info('train.param_storage=auto keeps %s, the storage the models '
               'in %s were trained with', recorded, workdir)
  config = config.copy_and_resolve_references()
  config.train.param_storage = recorded
  return config


def check_identity(workdir, ident) -> None:
  """Records the run's identity, or refuses a workdir made by another run.

  A workdir with a run.json but no results (a first attempt that failed
  before storing a model) takes the new identity. Every process checks; only
  the leader writes.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise store.StoreError(f'--workdir {workdir} is a file, not a directory')
  path = os.path.join(workdir, 'run.json')
  results = (store.list_chunks(workdir) or
             os.path.exists(store.estimates_path(workdir)))
  if not os.path.exists(path) or not results:
    if results:
      raise store.StoreError(f'{workdir} holds results but no run.json')
    if distributed.is_leader():
      store.write_json(path, dict(identity=ident, versions=_versions()))
    return
  old = _read_identity(path)
  if old == ident:
    return
  diffs = [k for k in ('data', 'dtypes', 'trainer_version', 'format_version')
           if old.get(k) != ident[k]]
  keys = sorted(set(old['config']) | set(ident['config']))
  values = {f'config.{k}': (old['config'].get(k), ident['config'].get(k))
            for k in keys if old['config'].get(k) != ident['config'].get(k)}
  raise IdentityError(workdir, diffs + list(values), values)


def _read_identity(path) -> dict:
  """The identity a run.json records, in the terms identity() now uses."""
  try:
    old = store.read_json(path)['identity']
    old['config'] = {**ADDED_FIELDS, **old['config']}
    # Runs before the resolved dtypes recorded them as written ('auto').
    old['config'].update({f'train.{k}': v
                          for k, v in old.get('dtypes', {}).items()
                          if k in _DTYPES})
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise store.StoreError(f'{path} is unreadable ({e!r}); it records what '
                           'the stored models depend on, so they cannot be '
                           'resumed: use a new --workdir') from e
  for k in config_lib.LOCATION_FIELDS:  # recorded by runs before them
    old['config'].pop(k, None)
  return old


def _versions():
  import flax, optax  # pylint: disable=g-import-not-at-top,multiple-imports
  return dict(jax=jax.__version__, flax=flax.__version__,
              optax=optax.__version__, numpy=np.__version__,
              backend=jax.default_backend())


def stored_models(workdir, num_models, quarantine):
  """(num_models,) bool: which models have a readable chunk.

  A corrupt chunk is reported and, with quarantine, moved to chunks/corrupt,
  so its models train again.
  """
  have = np.zeros(num_models, bool)
  if quarantine:
    # A killed write's temporary files (the leader scans while no process
    # writes).
    for tmp in glob.glob(os.path.join(workdir, 'chunks', '.tmp-*')):
      os.remove(tmp)
  for start, stop, path in store.list_chunks(workdir):
    try:
      store.read_chunk(path)
    except store.StoreError as e:
      if quarantine:
        logging.warning('%s; moving it to chunks/corrupt and retraining', e)
        os.makedirs(os.path.join(workdir, 'chunks', 'corrupt'), exist_ok=True)
        os.replace(path, os.path.join(workdir, 'chunks', 'corrupt',
                                      os.path.basename(path)))
      continue
    have[start:min(stop, num_models)] = True
  return have


def plan_cells(have, cell, process_index=0, process_count=1):
  """The cells of `cell` consecutive models that this process must train.

  Cells sit on a fixed grid (0, cell, 2 cell, ...), dealt round-robin over
  processes, so each model always trains at the same place of the same
  program: a resumed run recomputes lost models bit for bit.
  Returns [(start, missing ids)] for cells with any model missing.
  """
  out = []
  for c, start in enumerate(range(0, len(have), cell)):
    missing = start + np.flatnonzero(~have[start:start + cell])
    if c % process_count == process_index and len(missing):
      out.append((start, missing))
  return out


def consecutive_runs(ids):
  """Sorted ids -> list of arrays of consecutive ids."""
  return np.split(ids, np.flatnonzero(np.diff(ids) != 1) + 1)
