"""The estimate job: resolve -> prepare -> plan -> train -> estimate -> write.

`run(config, workdir)` checks everything it can before writing anything,
trains the models the workdir lacks (so re-running a killed job resumes it and
raising num_models extends it), then reduces all stored predictions.
"""

import concurrent.futures
import contextlib
import functools
import json
import os
import time
from typing import NamedTuple

import jax
import numpy as np
from absl import logging

from feldman_zhang import chunks
from feldman_zhang import cost
from feldman_zhang import diagnostics
from feldman_zhang import distributed
from feldman_zhang import estimate as estimate_lib
from feldman_zhang import estimates_file
from feldman_zhang import prepare as prepare_lib
from feldman_zhang import identity as identity_lib
from feldman_zhang import margins
from feldman_zhang import ratios
from feldman_zhang import runner
from feldman_zhang import schedule
from feldman_zhang import sinks
from feldman_zhang import store
from feldman_zhang import subsets
from feldman_zhang import summary as summary_lib
from feldman_zhang import topk
from feldman_zhang.errors import TrainingError


def run(config, workdir):
  """The whole estimate job. Returns the summary dict (also summary.json).

  In a multi-process run every process trains its share; the leader (process
  0) then reduces and returns the summary, the others return None.
  """
  phases = runner.Phases()
  with phases('load_data'):
    job = prepare_lib.prepare(
        config, recorded=identity_lib.recorded_config(workdir))
  _plan(job, workdir, phases)
  with _leader_lock(workdir):
    # The C-score's other ratios are runs of their own (ratios.py), made
    # first: the estimate below reads their held-out accuracy.
    for r in ratios.others(job.config):
      run_on(prepare_lib.derived(
          ratios.config_for(job.given, r), ratios.config_for(job.config, r),
          job.ds, subsets.subset_size(job.ds.num_train, r), job.model),
             ratios.workdir(workdir, r), show=False)
    return _run_on(job, workdir, True, phases)


def run_on(job: prepare_lib.Prepared, workdir, show=True, phases=None):
  """The estimate job of a prepared job (data loaded, model built, config
  resolved), holding the workdir's lock (the leader, for every process of a
  multi-process run)."""
  phases = phases or runner.Phases()
  _plan(job, workdir, phases)
  with _leader_lock(workdir):
    return _run_on(job, workdir, show, phases)


def _leader_lock(workdir):
  return (store.locked(workdir) if distributed.is_leader() else
          contextlib.nullcontext())


def _run_on(job, workdir, show, phases):
  config, ds = job.config, job.ds
  with phases('scan_workdir'):
    have, expect = _scan(config, workdir, ds, job.m)
  t0 = time.time()
  trained = _train(job, workdir, have, expect, phases)
  train_s = time.time() - t0
  distributed.barrier('trained')
  if not distributed.is_leader():
    logging.info('process %d trained %d models; process 0 writes the '
                 'estimates', jax.process_index(), trained.count)
    return None
  # If anything below fails, the job ends only once the last cell's write
  # has landed (or failed, and said so).
  with _settled(trained.writing):
    preds = trained.preds
    if preds is None:
      with phases('load_predictions'):
        preds = _load_predictions(config, workdir, trained.stopped, expect)
    valid = diagnostics.converged(preds['loss'])
    if not valid.any():
      raise TrainingError('every model diverged (a non-finite training '
                          'loss); lower train.lr, in a new --workdir: '
                          'this one records the settings')
    _await_ahead(trained.ahead, phases)
    summary, est = _estimate_and_write(job, workdir, preds, valid, trained,
                                       expect['run_id'], phases)
  summary['timing'] = dict(models_trained=trained.count, train_s=train_s,
                           estimate_s=(phases.seconds['estimate'] +
                                       phases.seconds['write_estimates']),
                           phases=phases.seconds)
  logging.info('phases (s): %s', ', '.join(
      f'{k} {v:.2f}' for k, v in phases.seconds.items()))
  store.write_json(store.Workdir(workdir).summary_json, summary)
  if show:
    print(summary_lib.render(summary, ds, est))
  return summary


def _plan(job, workdir, phases) -> None:
  """Logs what the job will do and take, and refuses a disk that cannot
  hold it, before the workdir is touched (the leader: it writes the
  estimates)."""
  if distributed.is_leader():
    with phases('plan'):
      t = job.config.num_models
      stored = sum(min(stop, t) - start
                   for start, stop, _ in chunks.list_chunks(workdir)
                   if start < t)
      p = cost.plan(job.config, job.ds, job.m, job.model, max(t - stored, 0))
      logging.info('%s', cost.describe(p, job.config))
      cost.check_disk(p, workdir)


def _scan(config, workdir, ds, m):
  """Checks the workdir's identity. Returns ((num_models,) bool of the
  models stored, what every chunk of this run matches: read_chunk's
  expect)."""
  identity_lib.check_identity(workdir, identity_lib.identity(config, ds))
  distributed.barrier('identity')
  expect = dict(run_id=identity_lib.run_id(workdir), n=ds.num_train,
                n_test=ds.num_test)
  if distributed.is_leader():
    logging.info('%s: n=%d, n_test=%d, %d classes, subsets of m=%d',
                 ds.name, ds.num_train, ds.num_test, ds.num_classes, m)
    have = chunks.stored_models(workdir, config.num_models, True, expect)
  distributed.barrier('scan')
  if not distributed.is_leader():
    have = chunks.stored_models(workdir, config.num_models, False, expect)
  return have, expect


class _Trained(NamedTuple):
  """What _train did: count, stopped (by target_stderr), preds and writing
  (a run trained whole in memory: its predictions, and the future of its
  last cell's write), ahead (the future of the estimate's compilation)."""
  count: int = 0
  stopped: bool = False
  preds: dict | None = None
  writing: concurrent.futures.Future | None = None
  ahead: concurrent.futures.Future | None = None


def _train(job, workdir, have, expect, phases) -> _Trained:
  """Trains and stores this process's share of the missing models."""
  config, ds, m = job.config, job.ds, job.m
  k, d = schedule.models_per_call(config)
  cells = schedule.plan_cells(have, k * d, jax.process_index(),
                            jax.process_count())
  todo = sum(len(ids) for _, ids in cells)
  target = (sinks.StderrTarget(config.target_stderr, workdir,
                                config.num_models, expect)
            if config.target_stderr > 0 else None)
  if not todo:
    logging.info('models 0..%d are all stored: nothing to train',
                 config.num_models - 1)
  if not todo or (target and target.reached()):
    return _Trained(stopped=bool(todo))
  # A run trained whole here is estimated from memory, not read back, and
  # its estimate's programs compile while the device trains (for t =
  # num_models; a run with diverged models compiles its own later).
  keep = (not have.any() and jax.process_count() == 1 and target is None)
  compile_next = (functools.partial(
      estimate_lib.compile_ahead, config.num_models, ds.num_train,
      ds.num_test, with_infl=config.estimate.infl,
      with_infl_stderr=config.estimate.infl_stderr)
           if distributed.is_leader() and target is None else None)
  with phases('compile'):
    program = runner.Program(job.model, config, ds, m, k)
  sink = sinks.StoreSink(workdir, ds.num_train, cells, phases, keep, target,
                         expect['run_id'])
  logging.info('training %d models, %d per call (%d per device on %d %s '
               'devices)', todo, k * d, k, d, jax.default_backend())
  _, ahead, stopped = runner.run(
      program, schedule.cell_calls(config, ds.num_train, m, cells, k * d), sink,
      phases, after_compile=compile_next, progress=sink.progress)
  # A last cell still being written is trained: it is counted.
  return _Trained(todo if sink.writing else sink.count, stopped, sink.preds,
                  sink.writing, ahead)


def _await_ahead(ahead, phases):
  if ahead:
    with phases('compile_ahead'):  # what is left of it, if anything
      if ahead.exception():
        # Only time is lost: the estimate compiles its programs itself.
        logging.warning('compiling the estimate ahead failed: %s',
                        ahead.exception())


def _load_predictions(config, workdir, stopped, expect) -> dict:
  if stopped or config.target_stderr > 0:
    preds = chunks.load_predictions(workdir, expect=expect)
    return {k: v[preds['model_ids'] < config.num_models]
            for k, v in preds.items()}
  return chunks.load_predictions(workdir, config.num_models, expect)


def _estimate_and_write(job, workdir, preds, valid, trained, run_id,
                        phases) -> tuple[dict, dict]:
  """Estimates from the converged models' predictions, written while the
  summary is made; returns (summary, estimates)."""
  # The diverged models' rows go; with none, no copy of the predictions.
  masks, train_correct, test_correct = (
      (preds[k] if valid.all() else preds[k][valid])
      for k in ('masks', 'train_correct', 'test_correct'))
  margin = None
  if job.config.estimate.margin and 'train_margin' in preds:
    margin = tuple(preds[k] if valid.all() else preds[k][valid]
                   for k in ('train_margin', 'test_margin'))
  # Each new_dense file is removed if anything below fails before it is
  # sealed (at MNIST's size it is 2.4 GB).
  with estimates_file.dense_files(workdir) as new_dense:
    with phases('estimate'):
      est = _estimate(job.config, masks, train_correct, test_correct,
                      new_dense)
      if margin is not None:
        est.update(_estimate_margin(job.config, masks, *margin, new_dense))
      if job.config.subset_ratios:
        est.update(ratios.fields(job.config, workdir, est))
      est['diverged_models'] = preds['model_ids'][~valid]
      est['run_id'] = np.array(run_id)
      if job.ds.corrupted is not None:
        est['label_corrupted'] = job.ds.corrupted
    # The estimates are written while the summary is made: sealing the
    # dense files (crc32 and fsync of the matrix) releases the GIL.
    estimates_writing = runner.start(_write_estimates, workdir, job, est,
                                     trained.writing)
    try:
      with phases('summary'):
        summary = summary_lib.summarize(job.config, job.ds, preds, valid,
                                        est)
        summary['stopped_at_target_stderr'] = trained.stopped
        summary['convergence'] = diagnostics.convergence(
            masks, train_correct, full=est)
    finally:
      with phases('write_estimates'):  # what is left of it after the summary
        estimates_writing.result()
  return summary, est


def _estimate(config, masks, train_correct, test_correct, new_dense) -> dict:
  """The config's estimates; the dense matrices are filled in place in
  new_dense files of the workdir, written while the device computes."""
  c = config.estimate
  dense = (masks.shape[1], test_correct.shape[1])
  est = estimate_lib.estimate(
      masks, train_correct, test_correct, with_infl=c.infl,
      with_infl_stderr=c.infl_stderr,
      infl_out=new_dense(dense) if c.infl else None,
      infl_stderr_out=new_dense(dense) if c.infl and c.infl_stderr else None)
  if c.infl_topk:
    est.update(topk.topk_estimates(
        masks, test_correct, est['mem'], c.infl_topk, c.pair_threshold,
        c.pair_mem_threshold))
  return est


def _estimate_margin(config, masks, train_margin, test_margin,
                     new_dense) -> dict:
  """mem and (where infl is dense) infl on the margin (margins.py)."""
  est = dict(mem_margin=margins.mem_margin(masks, train_margin))
  if config.estimate.infl:
    est['infl_margin'] = margins.infl_margin(
        masks, test_margin,
        out=new_dense((masks.shape[1], test_margin.shape[1])))
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


def _write_estimates(workdir, job, est, chunks_writing=None):
  # Estimates exist only beside the chunks they come from.
  if chunks_writing:
    chunks_writing.result()
  w = store.Workdir(workdir)
  if os.path.exists(w.estimates):
    with contextlib.suppress(Exception):  # an unreadable one is replaced too
      with np.load(w.estimates) as f:
        was = int(f['num_models'])
      if was != int(est['num_models']):
        logging.warning('replacing the estimates of %d models in %s with '
                        'those of %d', was, workdir, int(est['num_models']))
  # The estimates record the config they were made with, as given and as
  # resolved, which readers trust; config.json, the readable copy of the
  # given one, follows them: a kill between the two never pairs estimates
  # with another run's config.
  est = dict(est, config_json=_json(job.given),
             resolved_config_json=_json(job.config))
  estimates_file.write_estimates(workdir, est)
  store.write_json(w.config_json, job.given.to_dict())


def _json(config) -> np.ndarray:
  return np.array(json.dumps(config.to_dict(), sort_keys=True))
