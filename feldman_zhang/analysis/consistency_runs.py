"""The finished runs the consistency command compares (consistency.py): what
it reads of each, whether a run may be set against the reference (the same
data), which runs are seed baselines, their labels, and the rows of every
run against the reference.
"""

import json
import os

import numpy as np

from feldman_zhang import estimates_file
from feldman_zhang import identity as identity_lib
from feldman_zhang import pairs as pairs_lib
from feldman_zhang import store
from feldman_zhang.analysis import consistency_measures as measures
from feldman_zhang.analysis import runs as runs_lib

# consistency.csv's columns, the keys of each row `consistency` returns.
COLUMNS = ('run', 'label', 'baseline', 'kind', 'theta', 'jaccard',
           'mean_abs_diff', 'size_run', 'size_reference', 'intersection',
           'union', 'compared')


class Estimates:
  """What the comparison needs of one finished run, without its data set:
  only indices are compared, and the data's identity is its fingerprint."""

  def __init__(self, workdir: str):
    runs_lib.check_finished(workdir)
    self.workdir = workdir
    self.identity = identity_lib.read_identity(workdir)
    self.estimates = estimates_file.load_estimates(workdir)
    self.mem = np.asarray(self.estimates['mem'])
    self.num_models = int(self.estimates['num_models'])
    self.config = (json.loads(str(self.estimates['config_json']))
                   if 'config_json' in self.estimates else {})

  @property
  def name(self) -> str:
    return os.path.basename(os.path.normpath(self.workdir)) or self.workdir

  def has_influence(self) -> bool:
    return runs_lib.has_influence(self.estimates)

  def candidates(self, infl_threshold, mem_threshold) -> dict:
    """The pairs of infl >= infl_threshold and mem >= mem_threshold."""
    return pairs_lib.select_pairs(self.estimates, infl_threshold,
                                  mem_threshold)

  def lookup(self):
    """(tr, tt) -> infl, NaN where this run does not know it."""
    est = self.estimates
    if 'infl' in est:
      infl = est['infl']
      return lambda tr, tt: np.asarray(infl[tr, tt], np.float64)
    tr, tt, vals = pairs_lib.topk_candidates(
        est['infl_top_infl'], est['infl_top_train'],
        tuple(est[f'infl_pair_{k}'] for k in ('train', 'test', 'infl')))
    n_test = est['infl_top_infl'].shape[1]
    keys, first = np.unique(tr * n_test + tt, return_index=True)
    vals = np.asarray(vals, np.float64)[first]
    return lambda i, j: measures.values_at(
        keys, vals, np.asarray(i, np.int64) * n_test + np.asarray(j, np.int64))


def check_same_data(ref: Estimates, run: Estimates) -> None:
  if run.identity.get('data') != ref.identity.get('data'):
    raise store.StoreError(
        f'{run.workdir} trained on other data than the reference '
        f'{ref.workdir} (data fingerprints differ in run.json): their '
        'indices name other examples')
  if len(run.mem) != len(ref.mem):
    raise store.StoreError(f'{run.workdir} has {len(run.mem)} training '
                           f'examples, the reference {len(ref.mem)}')


def is_seed_baseline(ref: Estimates, run: Estimates) -> bool:
  """Whether run is the reference's recipe with another seed only."""
  diffs = identity_lib.differences(ref.identity, run.identity)
  return set(diffs) == {'config.seed'} and run.num_models == ref.num_models


def label(ref: Estimates, run: Estimates) -> str:
  if os.path.realpath(run.workdir) == os.path.realpath(ref.workdir):
    return f'{run.name} (itself)'
  if is_seed_baseline(ref, run):
    return f'{run.name} (seed baseline)'
  diffs = [k[len('config.'):] if k.startswith('config.') else k
           for k in identity_lib.differences(ref.identity, run.identity)]
  shown = ', '.join(diffs[:3]) + (', ...' if len(diffs) > 3 else '')
  return f'{run.name} ({shown or "same settings"})'


def consistency(ref: Estimates, runs, mem_thetas, infl_thetas,
                pair_mem_threshold: float = 0.25) -> list:
  """Rows (dicts of COLUMNS) of every run against the reference."""
  for run in runs:
    check_same_data(ref, run)
  pairs_too = len(infl_thetas) and ref.has_influence()
  if pairs_too:
    lo = float(np.min(infl_thetas))
    ref_pairs, ref_lookup = ref.candidates(lo, pair_mem_threshold), ref.lookup()
  rows = []
  for run in runs:
    tables = [('mem', measures.mem_consistency(run.mem, ref.mem, mem_thetas))]
    if pairs_too and run.has_influence():
      tables.append(('pairs', measures.pair_consistency(
          run.candidates(lo, pair_mem_threshold), ref_pairs, infl_thetas,
          run.lookup(), ref_lookup)))
    meta = dict(run=run.workdir, label=label(ref, run),
                baseline=is_seed_baseline(ref, run))
    for kind, t in tables:
      for r in range(len(t['theta'])):
        rows.append(dict(
            meta, kind=kind, theta=float(t['theta'][r]),
            jaccard=float(t['jaccard'][r]),
            mean_abs_diff=float(t['mean_abs_diff'][r]),
            size_run=int(t['size_a'][r]), size_reference=int(t['size_b'][r]),
            intersection=int(t['intersection'][r]), union=int(t['union'][r]),
            compared=int(t['compared'][r])))
  return rows
