r"""How consistently runs on the same data find the same memorized examples
and the same high-influence pairs (Feldman & Zhang 2020, the consistency of
memorization across architectures).

  python -m feldman_zhang.analysis.consistency --runs=runs/mlp_seed1,runs/cnn \
      --reference=runs/mlp [--out=DIR]

For each run against the reference, and each threshold theta:

  mem    the sets {i : mem_i >= theta}, theta on --mem_thetas (default
         0.05, 0.10, ..., 0.95): their Jaccard similarity |A & B| / |A | B|
         (1 when both are empty), and the mean |mem_a - mem_b| over A | B
         (NaN when it is empty).
  pairs  the sets {(i, j) : infl_ij >= theta and mem_i >= 0.25}
         (--pair_mem_threshold), theta on --infl_thetas (default 0.05, 0.10,
         ..., 0.50): their Jaccard (1 when both are empty), and the mean
         |infl_a - infl_b| over the pairs of the union whose infl both runs
         know. A run with the dense matrix knows every pair's infl, so a pair
         outside its set (below theta, or of an example under the mem bar)
         takes its dense value. A run with only the top-k form
         (estimate.infl_topk) knows the pairs of its top-k lists and pair
         list: a union pair absent from those is absent, i.e. left out of the
         mean (the `compared` column counts the pairs the mean is over; the
         Jaccard still counts it). NaN when no pair is compared.

Runs are compared only on the same data: each run's run.json records its
data's fingerprint (identity.data), and a run whose fingerprint differs
from the reference's is refused. A run whose recorded settings (run.json's
identity) differ from the reference's only in `seed`, with as many models,
is a seed baseline: the consistency the recipe itself allows, drawn dashed.
A run listed in --runs that is the reference is compared only when it is the
only one (a check that the comparison of a run with itself is 1).

Writes under --out (default REFERENCE/consistency):
  consistency.csv  run, label, baseline, kind (mem | pairs), theta,
                   jaccard, mean_abs_diff, size_run, size_reference,
                   intersection, union, compared
  consistency.png  Jaccard against theta, one line per run: mem and pairs
                   (thresholds where both sets are empty are not drawn)
"""

import csv
import io
import json
import os
import sys

from absl import app
from absl import flags
import numpy as np

from feldman_zhang import errors
from feldman_zhang import estimates_file
from feldman_zhang import identity as identity_lib
from feldman_zhang import pairs as pairs_lib
from feldman_zhang import store
from feldman_zhang.analysis import commands
from feldman_zhang.analysis import outputs
from feldman_zhang.analysis import plots
from feldman_zhang.analysis import runs as runs_lib

FLAGS = flags.FLAGS

COLUMNS = ('run', 'label', 'baseline', 'kind', 'theta', 'jaccard',
           'mean_abs_diff', 'size_run', 'size_reference', 'intersection',
           'union', 'compared')


# -- the measures -------------------------------------------------------------


def jaccard(a, b) -> float:
  """|a & b| / |a | b| of two (N,) bool set masks; 1 when both are empty."""
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  union = int(np.count_nonzero(a | b))
  return int(np.count_nonzero(a & b)) / union if union else 1.0


def mem_consistency(mem_a, mem_b, thetas) -> dict:
  """The sets {i : mem_i >= theta} of two runs, compared at each theta.

  mem_a, mem_b: (n,) float, the two runs' mem; thetas: (T,).
  Returns dict of (T,) arrays: theta, jaccard (1 where both sets are empty),
  mean_abs_diff (mean |mem_a - mem_b| over the union, NaN where it is
  empty), size_a, size_b, intersection, union, compared (= union: every
  example's mem is known).
  """
  mem_a, mem_b = np.asarray(mem_a), np.asarray(mem_b)
  if mem_a.shape != mem_b.shape:
    raise ValueError(f'mem of {mem_a.shape} and {mem_b.shape} examples')
  diff = np.abs(mem_a.astype(np.float64) - mem_b.astype(np.float64))
  rows = []
  for theta in thetas:
    # A Python float compares in mem's own dtype, as the summary and the
    # exports compare it (NumPy's weak scalars).
    theta = float(theta)
    a, b = mem_a >= theta, mem_b >= theta
    union = a | b
    rows.append((theta, jaccard(a, b),
                 diff[union].mean() if union.any() else np.nan,
                 a.sum(), b.sum(), (a & b).sum(), union.sum(), union.sum()))
  return _columns(rows)


def _columns(rows) -> dict:
  names = ('theta', 'jaccard', 'mean_abs_diff', 'size_a', 'size_b',
           'intersection', 'union', 'compared')
  cols = list(zip(*rows)) if rows else [()] * len(names)
  return {k: np.asarray(v, np.float64 if i < 3 else np.int64)
          for i, (k, v) in enumerate(zip(names, cols))}


def _lookup(keys, values, query):
  """values at query keys (keys sorted, unique); NaN where absent."""
  at = np.clip(np.searchsorted(keys, query), 0, max(len(keys) - 1, 0))
  hit = (keys[at] == query) if len(keys) else np.zeros(len(query), bool)
  out = np.full(len(query), np.nan)
  out[hit] = values[at[hit]]
  return out


def pair_consistency(pairs_a, pairs_b, thetas, lookup_a=None,
                     lookup_b=None) -> dict:
  """The high-influence pair sets of two runs, compared at each theta.

  Args:
    pairs_a, pairs_b: each run's candidate pairs, dicts of (P,) arrays
      tr_idx, tt_idx (int) and infl: every pair passing the run's mem bar
      with infl >= min(thetas) (pairs.select_pairs gives them). A run's set
      at theta is its candidates with infl >= theta.
    thetas: (T,) influence thresholds.
    lookup_a, lookup_b: a function (tr_idx, tt_idx) -> (U,) float, the
      run's infl of any pairs, NaN where unknown (the dense matrix; the
      top-k form's known pairs), or None: the run knows its candidates'
      infl only. A union pair outside a run's set takes its candidate or
      looked-up value; where neither knows it, it is left out of the mean.
  Returns:
    dict of (T,) arrays: theta, jaccard (1 where both sets are empty),
    mean_abs_diff (mean |infl_a - infl_b| over the union pairs both runs
    know; NaN where none), size_a, size_b, intersection, union, compared
    (the pairs the mean is over).
  """
  n_test = 1 + max([int(np.max(p['tt_idx'])) for p in (pairs_a, pairs_b)
                    if len(p['tt_idx'])] or [0])
  sides = [_side(p, lookup, n_test)
           for p, lookup in ((pairs_a, lookup_a), (pairs_b, lookup_b))]
  rows = []
  for theta in thetas:
    theta = float(theta)  # compares in infl's dtype, as select_pairs does
    sets = [keys[vals >= theta] for keys, vals, _ in sides]
    union = np.union1d(*sets)
    overlap = len(np.intersect1d(*sets, assume_unique=True))
    known = [_values(side, union, n_test) for side in sides]
    diff = np.abs(known[0] - known[1])
    diff = diff[np.isfinite(diff)]
    rows.append((theta, overlap / len(union) if len(union) else 1.0,
                 diff.mean() if len(diff) else np.nan, len(sets[0]),
                 len(sets[1]), overlap, len(union), len(diff)))
  return _columns(rows)


def _side(p, lookup, n_test):
  """(sorted unique keys, their infl, lookup) of one run's candidates."""
  keys = (np.asarray(p['tr_idx'], np.int64) * n_test +
          np.asarray(p['tt_idx'], np.int64))
  keys, first = np.unique(keys, return_index=True)
  return keys, np.asarray(p['infl'])[first], lookup


def _values(side, query, n_test):
  keys, vals, lookup = side
  out = _lookup(keys, vals, query)
  missing = np.isnan(out)
  if lookup is not None and missing.any():
    q = query[missing]
    out[missing] = np.asarray(lookup(q // n_test, q % n_test), np.float64)
  return out


# -- runs ---------------------------------------------------------------------


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
    return lambda i, j: _lookup(keys, vals, np.asarray(i, np.int64) * n_test
                                + np.asarray(j, np.int64))


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


def thresholds(spec) -> np.ndarray:
  """'lo:hi:step' (inclusive) or a comma list, as float64."""
  if isinstance(spec, str) and ':' in spec:
    lo, hi, step = (float(x) for x in spec.split(':'))
    count = int(np.floor((hi - lo) / step + 1e-9)) + 1
    return np.round(lo + step * np.arange(count), 10)
  values = spec.split(',') if isinstance(spec, str) else spec
  return np.asarray([float(x) for x in values], np.float64)


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
    tables = [('mem', mem_consistency(run.mem, ref.mem, mem_thetas))]
    if pairs_too and run.has_influence():
      tables.append(('pairs', pair_consistency(
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


# -- files --------------------------------------------------------------------


def write_csv(path: str, rows) -> str:
  text = io.StringIO()
  writer = csv.writer(text, lineterminator='\n')
  writer.writerow(COLUMNS)
  for r in rows:
    writer.writerow([f'{r[k]:.6g}' if isinstance(r[k], float) else r[k]
                     for k in COLUMNS])
  return outputs.write_file(path,
                            lambda f: f.write(text.getvalue().encode()))


def figure(rows, reference_name: str):
  """Two panels, mem and pairs: Jaccard against theta, one line per run,
  seed baselines dashed."""
  kinds = [k for k in ('mem', 'pairs') if any(r['kind'] == k for r in rows)]
  fig = plots.new_figure(5.0 * max(len(kinds), 1), 3.8)
  axes = fig.subplots(1, max(len(kinds), 1), squeeze=False)[0]
  titles = dict(mem='memorized examples (mem >= theta)',
                pairs='high-influence pairs (infl >= theta)')
  for ax, kind in zip(axes, kinds):
    mine = [r for r in rows if r['kind'] == kind]
    for run in dict.fromkeys(r['run'] for r in mine):
      line = [r for r in mine if r['run'] == run]
      # Two empty sets agree trivially (Jaccard 1 in the CSV): not drawn,
      # so a line does not jump to 1 where neither run has a member left.
      ax.plot([r['theta'] for r in line],
              [r['jaccard'] if r['union'] else np.nan for r in line],
              linestyle='--' if line[0]['baseline'] else '-', marker='.',
              label=line[0]['label'])
    ax.set_title(titles[kind], fontsize=9)
    ax.set_xlabel('theta')
    ax.set_ylabel(f'Jaccard with {reference_name}')
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def render(rows, every: int = 4) -> str:
  """A few rows per run and kind, for the terminal."""
  lines = [f'{"run":<32} {"kind":<5} {"theta":>5} {"jaccard":>7} '
           f'{"|diff|":>7} {"union":>7}']
  groups = {}
  for r in rows:
    groups.setdefault((r['label'], r['kind']), []).append(r)
  for (name, kind), group in groups.items():
    for r in group[::every]:
      lines.append(f'{name[:32]:<32} {kind:<5} {r["theta"]:>5.2f} '
                   f'{r["jaccard"]:>7.3f} {r["mean_abs_diff"]:>7.3f} '
                   f'{r["union"]:>7d}')
  return '\n'.join(lines)


# -- the job ------------------------------------------------------------------


def define_flags():
  flags.DEFINE_list('runs', None, 'Finished runs to compare with the '
                    'reference.', required=True)
  flags.DEFINE_string('reference', None, 'The run the others are compared '
                      'with.', required=True)
  flags.DEFINE_string('out', None, 'Output directory (default '
                      'REFERENCE/consistency).')
  flags.DEFINE_string('mem_thetas', '0.05:0.95:0.05', 'mem thresholds: '
                      'lo:hi:step (inclusive) or a comma list.')
  flags.DEFINE_string('infl_thetas', '0.05:0.5:0.05', 'infl thresholds of '
                      'the pairs: lo:hi:step (inclusive) or a comma list.')
  flags.DEFINE_float('pair_mem_threshold', 0.25, "Pairs' training examples "
                     'have mem >= this (the paper: 0.25).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    mem_thetas = thresholds(FLAGS.mem_thetas)
    infl_thetas = thresholds(FLAGS.infl_thetas)
  except ValueError as e:
    raise app.UsageError(f'bad thresholds: {e}') from e
  try:
    ref = Estimates(FLAGS.reference)
    same = lambda w: os.path.realpath(w) == os.path.realpath(ref.workdir)
    others = [w for w in FLAGS.runs if not same(w)]
    runs = [Estimates(w) for w in others] or [ref]
    rows = consistency(ref, runs, mem_thetas, infl_thetas,
                       FLAGS.pair_mem_threshold)
  except errors.USER_ERRORS as e:
    sys.exit(f'error: {e}')
  out = FLAGS.out or os.path.join(FLAGS.reference, 'consistency')
  with outputs.output_folder(out):
    paths = [write_csv(os.path.join(out, 'consistency.csv'), rows),
             plots.save_png(figure(rows, ref.name),
                            os.path.join(out, 'consistency.png'))]
  print(render(rows))
  if not ref.has_influence():
    print('the reference holds no influence estimates: pairs not compared')
  print(f'wrote {", ".join(paths)}')


def run():
  """The command (python -m feldman_zhang.analysis.consistency)."""
  commands.run(define_flags, main)


if __name__ == '__main__':
  run()
