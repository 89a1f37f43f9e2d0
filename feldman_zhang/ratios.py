"""C-scores over subset ratios (Jiang, Zhang, Talwar & Mozer, ICML 2021).

With config.subset_ratios = (r_1, ..., r_R), num_models models train at each
ratio. The models of subset_ratio (one of the r) are the estimate's own, in
WORKDIR, drawn exactly as a run of that one ratio draws them, so mem and
infl are that run's. Every other ratio is a run of its own in
WORKDIR/ratios/R/ (run.json, chunks, estimates), with subsets and keys of
its own stream (config.subset_stream, derived from R), so no two ratios
share a model; store, resume and device scaling work for it as for any run,
and adding a ratio trains only the new one.

held-out accuracy at ratio r: heldout_acc_r[i], the mean correctness on i of
the ratio's models that did not train on i. The C-score is their mean over
the ratios (`cscore`).
"""

import numpy as np

from feldman_zhang import config as config_lib
from feldman_zhang import estimates_file
from feldman_zhang import store
from feldman_zhang import streams

def others(config) -> list[float]:
  """The ratios trained in runs of their own: all but subset_ratio."""
  return [float(r) for r in config.subset_ratios
          if not np.isclose(r, config.subset_ratio)]


def workdir(root: str, ratio: float) -> str:
  return store.Workdir(root).ratio(ratio).root


def config_for(config, ratio: float):
  """The config of ratio `ratio`'s own run: that ratio, its stream, mem and
  held-out accuracy only (no influence, no early stop)."""
  c = config_lib.copy(config)
  c.subset_ratio = ratio
  c.subset_ratios = ()
  c.subset_stream = streams.ratio_stream(ratio)
  c.target_stderr = 0.0
  c.estimate.infl = False
  c.estimate.infl_stderr = False
  c.estimate.infl_topk = 0
  return c


def cscore(heldout_acc, num_out):
  """The mean held-out accuracy over ratios, and how many ratios count.

  heldout_acc, num_out: (R, n), each ratio's held-out accuracy and held-out
  model count per example. A ratio whose held-out group of example i is
  empty (num_out = 0: every model of that ratio trained on i) says nothing
  about i: it is left out of i's mean, and the ratios that count are
  returned beside it. Returns (cscore (n,) float32, NaN where no ratio
  counts; counted (n,) int32).
  """
  heldout_acc = np.asarray(heldout_acc, np.float64)
  held = np.asarray(num_out) > 0
  counted = held.sum(0)
  total = np.where(held, heldout_acc, 0.0).sum(0)
  with np.errstate(invalid='ignore', divide='ignore'):
    score = np.where(counted > 0, total / np.maximum(counted, 1), np.nan)
  return score.astype(np.float32), counted.astype(np.int32)


def fields(config, root: str, est: dict) -> dict:
  """What estimates.npz gains: subset_ratios (R,) float64, heldout_acc_by_ratio
  (R, n) float32 (NaN where a ratio held no model out), cscore (n,) and
  cscore_num_ratios (n,) int32. est: the estimates of subset_ratio's models;
  the others are read from their runs."""
  ratios = [float(r) for r in config.subset_ratios]
  acc, out = [], []
  for r in ratios:
    e = (est if np.isclose(r, config.subset_ratio) else
         estimates_file.load_estimates(workdir(root, r)))
    acc.append(np.asarray(e['heldout_acc'], np.float32))
    out.append(int(e['num_models']) - np.asarray(e['num_in'], np.int64))
  acc, out = np.stack(acc), np.stack(out)
  score, counted = cscore(acc, out)
  return dict(subset_ratios=np.asarray(ratios, np.float64),
              heldout_acc_by_ratio=np.where(out > 0, acc, np.nan).astype(
                  np.float32),
              cscore=score, cscore_num_ratios=counted)
