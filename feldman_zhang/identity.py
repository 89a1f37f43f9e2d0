"""A run's identity: everything its stored predictions depend on.

A workdir belongs to one run: `run.json` records the config fields that
change results, the data's fingerprint and the trainer and format versions,
and a resume must match it exactly.
"""

import hashlib
import json
import os

import jax
import numpy as np

from feldman_zhang import chunks
from feldman_zhang import config as config_lib
from feldman_zhang import distributed
from feldman_zhang import store
from feldman_zhang.errors import IdentityError
from feldman_zhang.errors import StoreError

# Bumped whenever a change to the trainer or the store changes what a stored
# chunk means; a workdir written under another version is not resumed.
TRAINER_VERSION = 1

# Result fields added since TRAINER_VERSION 1, with the value that computes
# what runs recorded before them computed: an older run.json lacking one is
# read as holding this value, so adding a field does not orphan old runs.
ADDED_FIELDS = {'train.param_storage': 'float32', 'model.tta': 'none',
                'train.lr_start': 0.0, 'train.lr_end': 0.0,
                'train.bias_lr_scale': 1.0, 'train.whiten_bias_epochs': 0,
                'train.lookahead': False, 'train.drop_last': False,
                'subset_stream': 0,
                'subset_design': 'random'}


_DTYPES = ('compute_dtype', 'momentum_dtype')


def identity(config, ds) -> dict:
  """What the stored predictions depend on; a resume must match it exactly.

  config: resolved (resolve.resolve): its dtypes and parameter storage are
  what the models computed with, so auto and what it resolved to are the
  same run, and a run must not mix bf16 and f32 models.
  """
  dtypes = {k: config.train[k] for k in _DTYPES}
  fields = config_lib.result_fields(config)
  if config.subset_design == 'balanced':
    # Every subset of a balanced design depends on t: another num_models is
    # another design, not an extension.
    fields['num_models'] = config.num_models
  return dict(config=fields, dtypes=dtypes,
              data=ds.fingerprint(), trainer_version=TRAINER_VERSION,
              format_version=chunks.FORMAT_VERSION)


def run_id(workdir) -> str:
  """A short hash of the identity run.json records (as written): every
  chunk and the estimates carry it, so a file copied in from another run,
  sound as it may be, is recognized and set aside."""
  path = store.Workdir(workdir).run_json
  try:
    recorded = store.read_json(path)['identity']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise StoreError(f'{path} is unreadable ({type(e).__name__}); use a new '
                     '--workdir') from e
  return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()
                        ).hexdigest()[:16]


def recorded_config(workdir) -> dict | None:
  """The identity config of the models a workdir stores (what
  resolve.resolve keeps an auto param_storage to), or None where it stores
  none or its run.json is unreadable (check_identity says why)."""
  w = store.Workdir(workdir)
  if not os.path.exists(w.run_json) or not chunks.list_chunks(workdir):
    return None
  try:
    return read_identity(workdir)['config']
  except StoreError:
    return None


def differences(old: dict, new: dict) -> dict:
  """{name: (old value, new value)} of two identities: the top-level keys
  (data, dtypes, versions) by name, config fields as 'config.FIELD'."""
  out = {k: (old.get(k), new.get(k))
         for k in ('data', 'dtypes', 'trainer_version', 'format_version')
         if old.get(k) != new.get(k)}
  fa, fb = old.get('config', {}), new.get('config', {})
  out.update({f'config.{k}': (fa.get(k), fb.get(k))
              for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)})
  return out


def check_identity(workdir, ident) -> None:
  """Records the run's identity, or refuses a workdir made by another run.

  A workdir with a run.json but no results (a first attempt that failed
  before storing a model) takes the new identity. Every process checks; only
  the leader writes.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise StoreError(f'--workdir {workdir} is a file, not a directory')
  w = store.Workdir(workdir)
  results = chunks.list_chunks(workdir) or os.path.exists(w.estimates)
  if not os.path.exists(w.run_json) or not results:
    if results:
      raise StoreError(f'{workdir} holds results but no run.json')
    if distributed.is_leader():
      store.write_json(w.run_json, dict(identity=ident, versions=_versions()))
    return
  diffs = differences(read_identity(workdir), ident)
  if diffs:
    raise IdentityError(workdir, list(diffs),
                        {k: v for k, v in diffs.items()
                         if k.startswith('config.')})


def read_identity(workdir) -> dict:
  """The identity the workdir's run.json records, in the terms identity()
  now uses (fields added since, at the values older runs computed with)."""
  path = store.Workdir(workdir).run_json
  try:
    old = store.read_json(path)['identity']
    old['config'] = {**ADDED_FIELDS, **old['config']}
    # Runs before the resolved dtypes recorded them as written (auto).
    old['config'].update({f'train.{k}': v
                          for k, v in old.get('dtypes', {}).items()
                          if k in _DTYPES})
  except (OSError, ValueError, KeyError, TypeError) as e:
    # The reason, not the file: a repr of a decode error holds all of it.
    reason = f'{type(e).__name__}: {e}'[:200]
    raise StoreError(f'{path} is unreadable ({reason}); it records what '
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
