"""The estimate job: config -> data -> subsets -> train chunks -> store -> estimate.

`run(config, workdir)` checks everything it can before writing anything,
trains the models the workdir lacks (so re-running a killed job resumes it and
raising num_models extends it), then reduces all stored predictions.
"""

import concurrent.futures
import contextlib
import functools
import json
import math
import os
import time
from typing import NamedTuple

import jax
import numpy as np
from absl import logging

from feldman_zhang import config as config_lib
from feldman_zhang import data as data_lib
from feldman_zhang import distributed
from feldman_zhang import estimate as estimate_lib
from feldman_zhang import models
from feldman_zhang import resume
from feldman_zhang import store
from feldman_zhang import subsets
from feldman_zhang import summary as summary_lib
from feldman_zhang import train


USER_ERRORS = (config_lib.ConfigError, data_lib.DataError, store.StoreError)


def load_data(config) -> data_lib.Dataset:
  """The data set a run trains on, label noise included.

  config: a ConfigDict or the plain dict of a run's config.json.
  """
  d, seed = config['data'], config['seed']
  ds = data_lib.load(d['source'], d.get('data_dir', ''),
                     d.get('num_classes', 0), d.get('download', False))
  if d.get('label_noise'):
    if ds.num_classes < 2:
      raise data_lib.DataError(f'data.label_noise needs 2 or more classes; '
                               f'{ds.name} has {ds.num_classes}')
    ds = data_lib.with_label_noise(ds, d['label_noise'], seed)
  return ds


def prepare(config):
  """Checks the config and loads the data. Returns (dataset, m)."""
  config_lib.validate(config)
  ds = load_data(config)
  m = subsets.subset_size(ds.num_train, config.subset_ratio)
  if not 0 < m < ds.num_train:
    raise config_lib.ConfigError(
        f'subset_ratio={config.subset_ratio} gives subsets of {m} of '
        f'{ds.num_train} examples; each subset must hold some but not all')
  need = config.num_models * (2 * ds.num_train + ds.num_test)
  have = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  if need > have:
    # The estimate holds every model's masks and correctness as bytes.
    raise config_lib.ConfigError(
        f'num_models={config.num_models:,} needs about '
        f'{store.human_bytes(need)} of host memory for the predictions of '
        f'{ds.num_train:,} + {ds.num_test:,} examples; this machine has '
        f'{store.human_bytes(have)}')
  if config.train.batch_size > m:
    raise config_lib.ConfigError(
        f'train.batch_size={config.train.batch_size} exceeds the subsets\' '
        f'm={m} examples')
  try:
    model = create_model(config, ds)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  need = getattr(model, 'input_shape', None)
  if need and tuple(ds.x_train.shape[1:]) != need:
    raise config_lib.ConfigError(
        f'model.name={config.model.name} takes images of shape {need}, not '
        f'{ds.name}\'s {tuple(ds.x_train.shape[1:])}')
  def logits(key, x):
    params, state = train.init(model, key, x)
    return train.apply(model, params, state, x, train=False)[0]
  want = (1, ds.num_classes)
  try:
    # Traced on one example, not run: a model that cannot take this data's
    # shape fails here, before the workdir is touched.
    got = jax.eval_shape(logits, jax.random.key(0), ds.x_train[:1]).shape
    if got != want:
      raise ValueError(f'logits of shape {got}, not {want}')
  except Exception as e:  # pylint: disable=broad-except
    # Flax and XLA raise many types for a shape they cannot take.
    raise config_lib.ConfigError(
        f'model.name={config.model.name} cannot take {ds.name}\'s inputs '
        f'{ds.x_train.shape[1:]}: {str(e).splitlines()[0]}') from e
  _check_device_memory(config, ds, model)
  return ds, m


def _check_device_memory(config, ds, model):
  """Refuses a call of models_per_device models that cannot fit a device.

  A floor, not an estimate: each model holds at least its f32 parameters,
  momentum, gradient and update (16 bytes a parameter) and its chunk's
  outputs (5 bytes an example), besides the data set once; activations
  come on top.
  """
  shapes = jax.eval_shape(lambda k: train.init(model, k, ds.x_train[:1])[0],
                          jax.random.key(0))
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
  k = min(config.models_per_device, config.num_models)
  need = (k * (16 * params + 5 * (ds.num_train + ds.num_test)) +
          ds.x_train.nbytes + ds.x_test.nbytes)
  device = jax.local_devices()[0]
  limit = (device.memory_stats() or {}).get('bytes_limit') if hasattr(
      device, 'memory_stats') else None
  limit = limit or os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  if need > limit:
    raise config_lib.ConfigError(
        f'models_per_device={k:,} needs at least {store.human_bytes(need)} '
        f'on a device ({params:,} parameters a model); {device.platform} '
        f'device 0 has {store.human_bytes(limit)}: lower models_per_device')


def converged(loss):
  """(t,) bool: models whose every recorded epoch loss (t, epochs) is
  finite. A loss that was inf once and finite later is a model that blew
  up and came back as something else: it is not the recipe's model."""
  return np.isfinite(loss).all(axis=1)


def create_model(config, ds):
  return models.create(config.model, ds.num_classes,
                       train.compute_dtype(config.train.compute_dtype))


class Phases:
  """Wall seconds of a job's phases, for the log and summary.json.

  with phases('estimate'): ...  adds the block's time to 'estimate'.
  """

  def __init__(self):
    self.seconds = {}

  @contextlib.contextmanager
  def __call__(self, name):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[name] = (self.seconds.get(name, 0.0) +
                            time.perf_counter() - start)


class Progress:
  """Logs models done, models/s and ETA."""

  def __init__(self, total):
    self.total, self.done = total, 0
    self.start = time.time()

  def update(self, count):
    self.done += count
    rate = self.done / max(time.time() - self.start, 1e-9)
    eta = (self.total - self.done) / rate if rate > 0 else float('inf')
    logging.info('models %d/%d (%.0f%%), %.1f models/s, ETA %s', self.done,
                 self.total, 100 * self.done / self.total, rate,
                 _duration(eta))


def _duration(s):
  if s == float('inf'):
    return '?'
  return f'{s:.0f}s' if s < 120 else f'{s / 60:.1f}min'


def models_per_call(config) -> tuple[int, int]:
  """(K, D): models per device and local devices. K never exceeds t."""
  try:
    d = distributed.devices_per_process()
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  return min(config.models_per_device, config.num_models), d


def train_models(config, model, ds, idx, keys) -> dict:
  """Trains one model per row of idx on all local devices; for experiments.

  idx: (R, m) int32 training indices; keys: (R,) PRNG keys.
  Returns the chunk outputs of the R models as numpy arrays, in order.
  """
  r = len(idx)
  size = min(config.models_per_device, r) * jax.local_device_count()
  # Whole calls: padded with copies of the last model, whose outputs drop.
  rows = np.minimum(np.arange(-(-r // size) * size), r - 1)
  idx, keys = idx[rows], keys[rows]
  mesh = train.local_mesh()
  chunk_fn = train.make_chunk_fn(model, config, idx.shape[1], mesh)
  arrays = train.put_replicated(mesh, ds.x_train, ds.y_train, ds.x_test,
                                ds.y_test)
  outs = [chunk_fn(*train.put_models(mesh, keys[i:i + size], idx[i:i + size]),
                   *arrays) for i in range(0, len(rows), size)]
  outs = jax.device_get(outs)
  return {k: np.concatenate([o[k] for o in outs])[:r] for k in outs[0]}


class StderrTarget:
  """Says when the median standard error of mem over the memorizable
  examples (estimate.memorizable) falls below a target.

  Holds the masks and train correctness of the models stored so far (those
  found at the start and those this process writes) and re-estimates mem
  after each call.
  """

  def __init__(self, target, workdir, num_models):
    self.target, self.blocks = target, []
    if store.list_chunks(workdir):
      preds = store.load_predictions(workdir)
      keep = preds['model_ids'] < num_models
      self.add(preds['masks'][keep], preds['train_correct'][keep],
               preds['loss'][keep])

  def add(self, masks, train_correct, loss):
    # Decided on the models the estimate will use: diverged ones drop.
    ok = converged(loss)
    self.blocks.append((masks[ok], train_correct[ok]))

  def reached(self) -> bool:
    if not self.blocks:
      return False
    est = estimate_lib.estimate(
        np.concatenate([b[0] for b in self.blocks]),
        np.concatenate([b[1] for b in self.blocks]), None, with_infl=False)
    median = estimate_lib.median_stderr(est)
    logging.info('median mem stderr of the memorizable examples %.4f '
                 '(target %.4f) from %d models', median, self.target,
                 est['num_models'])
    return median < self.target


def _compile_in_background(chunk_fn, mesh, k_total, m, arrays):
  """Starts compiling the chunk program for (k_total,) models on abstract
  inputs, so XLA works while the host draws the first subsets (XLA releases
  the GIL); returns a future of the executable."""
  models_sharding = train.models_sharding(mesh)
  keys = jax.eval_shape(lambda: train.model_keys(0, np.arange(k_total)))
  lowered = chunk_fn.lower(
      jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=models_sharding),
      jax.ShapeDtypeStruct((k_total, m), np.int32, sharding=models_sharding),
      *arrays)
  return _start(lowered.compile)


def _start(fn, *args) -> concurrent.futures.Future:
  """fn(*args) on a thread of its own; result() waits and re-raises."""
  pool = concurrent.futures.ThreadPoolExecutor(1)
  future = pool.submit(fn, *args)
  pool.shutdown(wait=False)
  return future


class Trained(NamedTuple):
  """What train_missing did.

  count: models trained and stored; stopped: whether config.target_stderr
  stopped it early; preds: with keep, the predictions of the models trained,
  as store.load_predictions gives them, else None; writing: with keep, the
  future of the last cell's write (the estimate need not wait for it), else
  None; ahead: the future of compile_next, if it was started.
  """
  count: int
  stopped: bool
  preds: dict | None = None
  writing: concurrent.futures.Future | None = None
  ahead: concurrent.futures.Future | None = None


def train_missing(config, workdir, ds, m, have, model, phases=None,
                  keep=False, compile_next=None) -> Trained:
  """Trains and stores this process's share of the missing models.

  keep: also return the predictions, so a run trained whole in one process
  is estimated without reading them back (about 1.7 s at MNIST's scale on an
  H100), and write the last cell while the estimate runs.
  compile_next: a function run on a thread once the chunk program has
  compiled, to compile what comes after training while the device trains.
  """
  phases = phases or Phases()
  k, d = models_per_call(config)
  cells = resume.plan_cells(have, k * d, jax.process_index(),
                            jax.process_count())
  todo = sum(len(ids) for _, ids in cells)
  target = (StderrTarget(config.target_stderr, workdir, config.num_models)
            if config.target_stderr > 0 else None)
  if not todo:
    logging.info('models 0..%d are all stored: nothing to train',
                 config.num_models - 1)
  if not todo or (target and target.reached()):
    return Trained(0, bool(todo))
  mesh = train.local_mesh()
  chunk_fn = train.make_chunk_fn(model, config, m, mesh)
  with phases('compile'):
    arrays = train.put_replicated(mesh, ds.x_train, ds.y_train, ds.x_test,
                                  ds.y_test)
    compiling = _compile_in_background(chunk_fn, mesh, k * d, m, arrays)
    first = cells[0][0] + np.arange(k * d)
    first_idx = subsets.indices(config.seed, ds.num_train, m, first)
    compiled = compiling.result()
  logging.info('compiled the %d-model program in %.1f s', k * d,
               phases.seconds['compile'])
  ahead = _start(compile_next) if compile_next else None
  progress = Progress(todo)
  logging.info('training %d models, %d per call (%d per device on %d %s '
               'devices)', todo, k * d, k, d, jax.default_backend())
  pending, trained, kept = None, 0, [] if keep else None
  with phases('train'):
    for start, missing in cells:
      # A cell is trained whole (the padding past num_models too), so every
      # call has the same shapes and compiles once; only missing models are
      # written.
      ids = np.arange(start, start + k * d)
      idx = (first_idx if start == cells[0][0] else
             subsets.indices(config.seed, ds.num_train, m, ids))
      out = compiled(*train.put_models(mesh, train.model_keys(config.seed,
                                                              ids), idx),
                     *arrays)
      # Queue the copy to the host now: queued after the next cell's
      # training, it waited for it (seen on an H100: the first of two cells
      # reported only when both were done).
      for leaf in jax.tree.leaves(out):
        leaf.copy_to_host_async()
      # Dispatch is asynchronous: the previous cell is written while this
      # one trains.
      if pending:
        runs = _fetch(*pending, ds, phases)
        trained += _write(workdir, runs, progress, target, phases)
        if keep:
          kept.extend(runs)
        if target and target.reached():
          return Trained(trained, True, ahead=ahead)
      pending = (start, missing, idx, out)
    runs = _fetch(*pending, ds, phases)
    if not keep:
      return Trained(trained + _write(workdir, runs, progress, target, phases),
                     False, ahead=ahead)
    writing = _start(_write, workdir, runs, progress, target, phases)
  kept.extend(runs)
  preds = {k: np.concatenate([run[k] for run in kept]) for k in kept[0]}
  return Trained(trained + _count(runs), False, preds, writing, ahead)


def _fetch(start, missing, idx, out, ds, phases) -> list[dict]:
  """The missing models of one trained cell, on the host: a dict per run of
  consecutive ids, with the fields and dtypes of store.load_predictions."""
  with phases('wait_for_device'):
    out = jax.device_get(out)
  runs = []
  for ids in resume.consecutive_runs(missing):
    rows = ids - start
    runs.append(dict(
        model_ids=ids.astype(np.int64),
        masks=subsets.to_masks(idx[rows], ds.num_train),
        train_correct=out['train_correct'][rows].astype(bool),
        test_correct=out['test_correct'][rows].astype(bool),
        train_ptrue=out['train_ptrue'][rows].astype(np.float16),
        test_ptrue=out['test_ptrue'][rows].astype(np.float16),
        loss=out['loss'][rows].astype(np.float32)))
  return runs


def _write(workdir, runs, progress, target, phases):
  """Stores runs of _fetch; returns how many models they hold."""
  with phases('write_chunks'):
    for run in runs:
      bad = ~converged(run['loss'])
      if bad.any():
        logging.warning('models %s diverged (non-finite loss); they are kept '
                        'in the store and excluded from the estimates',
                        run['model_ids'][bad].tolist())
      store.write_chunk(workdir, run['model_ids'], run['masks'],
                        run['train_correct'], run['test_correct'],
                        run['train_ptrue'], run['test_ptrue'], run['loss'])
      if target:
        target.add(run['masks'], run['train_correct'], run['loss'])
  progress.update(_count(runs))
  return _count(runs)


def _count(runs) -> int:
  return sum(len(run['model_ids']) for run in runs)


def _load_predictions(config, workdir, stopped) -> dict:
  if stopped or config.target_stderr > 0:
    preds = store.load_predictions(workdir)
    return {k: v[preds['model_ids'] < config.num_models]
            for k, v in preds.items()}
  return store.load_predictions(workdir, config.num_models)


def _estimate(config, masks, train_correct, test_correct, new_dense) -> dict:
  """The config's estimates; the dense matrices are filled in place in
  new_dense files of the workdir (2.4 GB each at MNIST's size), written
  while the device computes."""
  c = config.estimate
  dense = (masks.shape[1], test_correct.shape[1])
  est = estimate_lib.estimate(
      masks, train_correct, test_correct, with_infl=c.infl,
      with_infl_stderr=c.infl_stderr,
      infl_out=new_dense(dense) if c.infl else None,
      infl_stderr_out=new_dense(dense) if c.infl and c.infl_stderr else None)
  if c.infl_topk:
    est.update(estimate_lib.topk_estimates(
        masks, test_correct, est['mem'], c.infl_topk, c.pair_threshold,
        c.pair_mem_threshold))
  return est


@contextlib.contextmanager
def _settled(future):
  """On an exception in the block, waits for future before raising, and
  logs the future's own error, which the block's would hide."""
  try:
    yield
  except BaseException:
    if future and future.exception():
      logging.error('storing the last models failed too: %s',
                    future.exception())
    raise


def _write_estimates(workdir, config, est, chunks_writing=None):
  # Estimates exist only beside the chunks they come from.
  if chunks_writing:
    chunks_writing.result()
  old = store.estimates_path(workdir)
  if os.path.exists(old):
    with contextlib.suppress(Exception):  # an unreadable one is replaced too
      with np.load(old) as f:
        was = int(f['num_models'])
      if was != int(est['num_models']):
        logging.warning('replacing the estimates of %d models in %s with '
                        'those of %d', was, workdir, int(est['num_models']))
  # The estimates record the config they were made with, which readers
  # trust; config.json, its readable copy, follows them: a kill between the
  # two never pairs estimates with another run's config.
  est = dict(est, config_json=np.array(json.dumps(config.to_dict(),
                                                  sort_keys=True)))
  store.write_estimates(workdir, est)
  store.write_json(os.path.join(workdir, 'config.json'), config.to_dict())


def run(config, workdir):
  """The whole estimate job. Returns the summary dict (also summary.json).

  In a multi-process run every process trains its share; the leader (process
  0) then reduces and returns the summary, the others return None.
  """
  phases = Phases()
  with phases('load_data'):
    ds, m = prepare(config)
  return run_on(config, workdir, ds, m, create_model(config, ds),
                phases=phases)


def run_on(config, workdir, ds, m, model, show=True, phases=None):
  """The estimate job on a loaded data set and a built model, holding the
  workdir's lock (the leader, for every process of a multi-process run)."""
  with (store.locked(workdir) if distributed.is_leader() else
        contextlib.nullcontext()):
    return _run_on(config, workdir, ds, m, model, show, phases)


def _run_on(config, workdir, ds, m, model, show, phases):
  phases = phases or Phases()
  with phases('scan_workdir'):
    config = resume.keep_recorded_storage(config, workdir)
    resume.check_identity(workdir, resume.identity(config, ds))
    distributed.barrier('identity')
    if distributed.is_leader():
      logging.info('%s: n=%d, n_test=%d, %d classes, subsets of m=%d',
                   ds.name, ds.num_train, ds.num_test, ds.num_classes, m)
      have = resume.stored_models(workdir, config.num_models, quarantine=True)
    distributed.barrier('scan')
    if not distributed.is_leader():
      have = resume.stored_models(workdir, config.num_models, quarantine=False)
  t0 = time.time()
  # A run trained whole here is estimated from memory, not read back.
  keep = (not have.any() and jax.process_count() == 1 and
          config.target_stderr <= 0)
  # The estimate's programs compile while the device trains, for t =
  # num_models (a run with diverged models compiles its own later).
  compile_estimate = functools.partial(
      estimate_lib.compile_ahead, config.num_models, ds.num_train,
      ds.num_test, with_infl=config.estimate.infl,
      with_infl_stderr=config.estimate.infl_stderr)
  use_ahead = distributed.is_leader() and config.target_stderr <= 0
  trained, stopped, preds, writing, ahead = train_missing(
      config, workdir, ds, m, have, model, phases, keep,
      compile_estimate if use_ahead else None)
  train_s = time.time() - t0
  distributed.barrier('trained')
  if not distributed.is_leader():
    logging.info('process %d trained %d models; process 0 writes the '
                 'estimates', jax.process_index(), trained)
    return None
  # If anything below fails, the job ends only once the last cell's write
  # has landed (or failed, and said so).
  with _settled(writing):
    if preds is None:
      with phases('load_predictions'):
        preds = _load_predictions(config, workdir, stopped)
    valid = converged(preds['loss'])
    if not valid.any():
      raise store.StoreError('every model diverged (a non-finite training '
                             'loss); lower train.lr, in a new --workdir: '
                             'this one records the settings')
    if ahead:
      with phases('compile_ahead'):  # what is left of it, if anything
        if ahead.exception():
          # Only time is lost: the estimate compiles its programs itself.
          logging.warning('compiling the estimate ahead failed: %s',
                          ahead.exception())
    # The diverged models' rows go; with none, no copy of the predictions.
    masks, train_correct, test_correct = (
        (preds[k] if valid.all() else preds[k][valid])
        for k in ('masks', 'train_correct', 'test_correct'))
    # Each new_dense file is removed if anything below fails before it is
    # sealed (at MNIST's size it is 2.4 GB).
    with store.dense_files(workdir) as new_dense:
      with phases('estimate'):
        est = _estimate(config, masks, train_correct, test_correct, new_dense)
        est['diverged_models'] = preds['model_ids'][~valid]
        if ds.corrupted is not None:
          est['label_corrupted'] = ds.corrupted
      # The estimates are written while the summary is made: sealing the
      # dense files (crc32 and fsync of 2.4 GB each at MNIST's size)
      # releases the GIL.
      estimates_writing = _start(_write_estimates, workdir, config, est,
                                 writing)
      try:
        with phases('summary'):
          summary = summary_lib.summarize(config, ds, preds, valid, est)
          summary['stopped_at_target_stderr'] = stopped
          summary['convergence'] = estimate_lib.convergence(
              masks, train_correct, full=est)
      finally:
        with phases('write_estimates'):  # what is left of it after the summary
          estimates_writing.result()
  summary['timing'] = dict(models_trained=trained, train_s=train_s,
                           estimate_s=(phases.seconds['estimate'] +
                                       phases.seconds['write_estimates']),
                           phases=phases.seconds)
  logging.info('phases (s): %s', ', '.join(
      f'{k} {v:.2f}' for k, v in phases.seconds.items()))
  store.write_json(os.path.join(workdir, 'summary.json'), summary)
  if show:
    print(summary_lib.render(summary, ds, est))
  return summary
