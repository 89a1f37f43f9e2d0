"""The estimate job's sinks: what happens to each trained call's outputs.

`StoreSink` writes the missing models of each cell as chunks (and, for a
run trained whole in one process, keeps them for the estimate);
`StderrTarget` ends a run once mem's standard error is small enough.
"""

import numpy as np
from absl import logging

from feldman_zhang import chunks
from feldman_zhang import diagnostics
from feldman_zhang import estimate as estimate_lib
from feldman_zhang import runner
from feldman_zhang import schedule
from feldman_zhang import subsets


class StderrTarget:
  """Says when the median standard error of mem over the memorizable
  examples (diagnostics.memorizable) falls below a target.

  Holds the masks and train correctness of the models stored so far (those
  found at the start and those this process writes) and re-estimates mem
  after each call.
  """

  def __init__(self, target, workdir, num_models, expect=None):
    self.target, self.blocks = target, []
    if chunks.list_chunks(workdir):
      preds = chunks.load_predictions(workdir, expect=expect)
      keep = preds['model_ids'] < num_models
      self.add(preds['masks'][keep], preds['train_correct'][keep],
               preds['loss'][keep])

  def add(self, masks, train_correct, loss):
    # Decided on the models the estimate will use: diverged ones drop.
    ok = diagnostics.converged(loss)
    self.blocks.append((masks[ok], train_correct[ok]))

  def reached(self) -> bool:
    if not self.blocks:
      return False
    est = estimate_lib.estimate(
        np.concatenate([b[0] for b in self.blocks]),
        np.concatenate([b[1] for b in self.blocks]), None, with_infl=False)
    median = diagnostics.median_stderr(est)
    logging.info('median mem stderr of the memorizable examples %.4f '
                 '(target %.4f) from %d models', median, self.target,
                 est['num_models'])
    return median < self.target


class StoreSink:
  """The job's sink: writes the missing models of each cell as chunks.

  cells: schedule.plan_cells' [(start, missing ids)], in the order trained.
  keep: also hold the predictions (`preds`), so a run trained whole in one
  process is estimated without reading them back, and write the last cell
  on a thread (`writing`) while the estimate runs. target: a StderrTarget
  that ends the run once reached, or None.
  """

  def __init__(self, workdir, num_train, cells, phases, keep=False,
               target=None, run_id=''):
    self.workdir, self.num_train, self.phases = workdir, num_train, phases
    self.run_id = run_id
    self.missing = dict(cells)
    self.last = cells[-1][0]
    self.keep, self.target = keep, target
    # Handed to run(), which restarts its clock once compiled.
    self.progress = runner.Progress(sum(len(ids) for _, ids in cells))
    self.count, self.kept, self.writing = 0, [], None

  def __call__(self, start_id, idx, out) -> bool:
    runs = self._runs(start_id, idx, out)
    if self.keep:
      self.kept.extend(runs)
      if start_id == self.last:
        self.writing = runner.start(self._write, runs)
        return False
    self._write(runs)
    return bool(self.target and start_id != self.last and
                self.target.reached())

  @property
  def preds(self) -> dict | None:
    """With keep, the predictions trained, as chunks.load_predictions gives
    them; else None."""
    if not self.keep or not self.kept:
      return None
    return {k: np.concatenate([run[k] for run in self.kept])
            for k in self.kept[0]}

  def _runs(self, start_id, idx, out) -> list[dict]:
    """The missing models of one trained cell: a dict per run of
    consecutive ids, with the fields and dtypes of chunks.load_predictions."""
    runs = []
    for ids in schedule.consecutive_runs(self.missing[start_id]):
      rows = ids - start_id
      runs.append(dict(
          model_ids=ids.astype(np.int64),
          masks=subsets.to_masks(idx[rows], self.num_train),
          train_correct=out['train_correct'][rows].astype(bool),
          test_correct=out['test_correct'][rows].astype(bool),
          train_ptrue=out['train_ptrue'][rows].astype(np.float16),
          test_ptrue=out['test_ptrue'][rows].astype(np.float16),
          train_margin=out['train_margin'][rows].astype(chunks.MARGIN_DTYPE),
          test_margin=out['test_margin'][rows].astype(chunks.MARGIN_DTYPE),
          loss=out['loss'][rows].astype(np.float32)))
    return runs

  def _write(self, runs):
    with self.phases('write_chunks'):
      for run in runs:
        bad = ~diagnostics.converged(run['loss'])
        if bad.any():
          logging.warning('models %s diverged (non-finite loss); they are '
                          'kept in the store and excluded from the estimates',
                          run['model_ids'][bad].tolist())
        chunks.write_chunk(self.workdir, **run, run_id=self.run_id)
        if self.target:
          self.target.add(run['masks'], run['train_correct'], run['loss'])
    done = sum(len(run['model_ids']) for run in runs)
    self.count += done
    self.progress.update(done)
