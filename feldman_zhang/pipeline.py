"""The estimate job: config -> data -> subsets -> train chunks -> store -> estimate.

`run(config, workdir)` checks everything it can before writing anything,
trains the models the workdir lacks (so re-running a killed job resumes it and
raising num_models extends it), then reduces all stored predictions.
"""

import os
import time

import jax
import numpy as np
from absl import logging

from feldman_zhang import config as config_lib
from feldman_zhang import data as data_lib
from feldman_zhang import estimate as estimate_lib
from feldman_zhang import models
from feldman_zhang import store
from feldman_zhang import subsets
from feldman_zhang import summary as summary_lib
from feldman_zhang import train

# Bumped whenever a change to the trainer or the store changes what a stored
# chunk means; a workdir written under another version is not resumed.
TRAINER_VERSION = 1

USER_ERRORS = (config_lib.ConfigError, data_lib.DataError, store.StoreError)


def prepare(config):
  """Checks the config and loads the data. Returns (dataset, m)."""
  config_lib.validate(config)
  ds = data_lib.load(config.data.source, config.data.data_dir,
                     config.data.num_classes, config.data.download)
  m = subsets.subset_size(ds.num_train, config.subset_ratio)
  if not 0 < m < ds.num_train:
    raise config_lib.ConfigError(
        f'subset_ratio={config.subset_ratio} gives subsets of {m} of '
        f'{ds.num_train} examples; each subset must hold some but not all')
  try:
    models.create(config.model, ds.num_classes)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  return ds, m


def identity(config, ds) -> dict:
  """What the stored predictions depend on; a resume must match it exactly."""
  return dict(config=config_lib.result_fields(config),
              data=ds.fingerprint(), trainer_version=TRAINER_VERSION,
              format_version=store.FORMAT_VERSION)


def check_identity(workdir, ident) -> None:
  """Records the run's identity, or refuses a workdir made by another run."""
  path = os.path.join(workdir, 'run.json')
  if not os.path.exists(path):
    if store.list_chunks(workdir):
      raise store.StoreError(f'{workdir} holds chunks but no run.json')
    store.write_json(path, dict(identity=ident, versions=_versions()))
    return
  old = store.read_json(path)['identity']
  if old == ident:
    return
  diffs = [k for k in ('data', 'trainer_version', 'format_version')
           if old.get(k) != ident[k]]
  keys = sorted(set(old['config']) | set(ident['config']))
  diffs += [f'config.{k}' for k in keys
            if old['config'].get(k) != ident['config'].get(k)]
  raise store.StoreError(
      f'{workdir} holds a run with other settings: {", ".join(diffs)} differ; '
      'use a new --workdir or the old settings')


def _versions():
  import flax, optax  # pylint: disable=g-import-not-at-top,multiple-imports
  return dict(jax=jax.__version__, flax=flax.__version__,
              optax=optax.__version__, numpy=np.__version__,
              backend=jax.default_backend())


def missing_models(workdir, num_models):
  """Model ids in [0, num_models) with no readable chunk, sorted.

  Corrupt chunks are reported and moved aside, so their models train again.
  """
  have = np.zeros(num_models, bool)
  for start, stop, path in store.list_chunks(workdir):
    try:
      store.read_chunk(path)
    except store.StoreError as e:
      logging.warning('%s; moving it to chunks/corrupt and retraining', e)
      os.makedirs(os.path.join(workdir, 'chunks', 'corrupt'), exist_ok=True)
      os.replace(path, os.path.join(workdir, 'chunks', 'corrupt',
                                    os.path.basename(path)))
      continue
    have[start:min(stop, num_models)] = True
  return np.flatnonzero(~have)


def plan_chunks(missing, size):
  """Splits sorted ids into runs of consecutive ids, each at most `size`."""
  chunks, run = [], []
  for k in missing.tolist():
    if run and (k != run[-1] + 1 or len(run) == size):
      chunks.append(run)
      run = []
    run.append(k)
  if run:
    chunks.append(run)
  return chunks


class Progress:
  """Logs models done, models/s and ETA."""

  def __init__(self, total, already):
    self.total, self.done, self.start_done = total, already, already
    self.start = time.time()

  def update(self, count):
    self.done += count
    elapsed = time.time() - self.start
    rate = (self.done - self.start_done) / max(elapsed, 1e-9)
    eta = (self.total - self.done) / rate if rate > 0 else float('inf')
    logging.info('models %d/%d (%.0f%%), %.1f models/s, ETA %s', self.done,
                 self.total, 100 * self.done / self.total, rate,
                 _duration(eta))


def _duration(s):
  if s == float('inf'):
    return '?'
  return f'{s:.0f}s' if s < 120 else f'{s / 60:.1f}min'


def train_missing(config, workdir, ds, m) -> int:
  """Trains and stores every model the workdir lacks; returns how many."""
  missing = missing_models(workdir, config.num_models)
  if not len(missing):
    return 0
  size = config.models_per_device * jax.local_device_count()
  chunk_fn = train.make_chunk_fn(models.create(config.model, ds.num_classes),
                                 config, m)
  arrays = [jax.device_put(a) for a in (ds.x_train, ds.y_train, ds.x_test,
                                        ds.y_test)]
  progress = Progress(config.num_models, config.num_models - len(missing))
  logging.info('training %d models, %d per call, on %d %s device(s)',
               len(missing), size, jax.local_device_count(),
               jax.default_backend())
  pending = None
  for ids in plan_chunks(missing, size):
    # A short chunk is padded with the ids that follow, so every call has the
    # same shapes and compiles once; the padding models are discarded.
    padded = np.arange(ids[0], ids[0] + size)
    idx = subsets.indices(config.seed, ds.num_train, m, padded)
    out = chunk_fn(train.model_keys(config.seed, padded), idx, *arrays)
    # Dispatch is asynchronous: the previous chunk is written while this one
    # trains.
    if pending:
      _write(workdir, ds, *pending, progress)
    pending = (ids, idx, out)
  _write(workdir, ds, *pending, progress)
  return len(missing)


def _write(workdir, ds, ids, idx, out, progress):
  k = len(ids)
  out = jax.device_get(out)
  loss = out['loss'][:k]
  bad = ~np.isfinite(loss[:, -1])
  if bad.any():
    logging.warning('models %s diverged (non-finite loss); they are kept in '
                    'the store and excluded from the estimates',
                    np.asarray(ids)[bad].tolist())
  store.write_chunk(
      workdir, ids, subsets.to_masks(idx[:k], ds.num_train),
      out['train_correct'][:k], out['test_correct'][:k],
      out['train_ptrue'][:k], out['test_ptrue'][:k], loss)
  progress.update(k)


def run(config, workdir) -> dict:
  """The whole estimate job. Returns the summary dict (also summary.json)."""
  ds, m = prepare(config)
  check_identity(workdir, identity(config, ds))
  logging.info('%s: n=%d, n_test=%d, %d classes, subsets of m=%d', ds.name,
               ds.num_train, ds.num_test, ds.num_classes, m)
  t0 = time.time()
  trained = train_missing(config, workdir, ds, m)
  train_s = time.time() - t0
  preds = store.load_predictions(workdir, config.num_models)
  valid = np.isfinite(preds['loss'][:, -1])
  if not valid.any():
    raise store.StoreError('every model diverged; lower train.lr')
  t0 = time.time()
  est = estimate_lib.estimate(
      preds['masks'][valid], preds['train_correct'][valid],
      preds['test_correct'][valid], with_infl=config.estimate.infl,
      with_infl_stderr=config.estimate.infl_stderr)
  est['diverged_models'] = preds['model_ids'][~valid]
  store.write_estimates(workdir, est)
  summary = summary_lib.summarize(config, ds, preds, valid, est)
  summary['timing'] = dict(models_trained=trained, train_s=train_s,
                           estimate_s=time.time() - t0)
  store.write_json(os.path.join(workdir, 'summary.json'), summary)
  print(summary_lib.render(summary, ds, est))
  return summary
