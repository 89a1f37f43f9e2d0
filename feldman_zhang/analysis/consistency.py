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

The measures are consistency_measures.py's, the runs' reading and rows
consistency_runs.py's; this module is the command and its files.
"""

import csv
import io
import os
import sys

from absl import app
from absl import flags
import numpy as np

from feldman_zhang import errors
from feldman_zhang.analysis import commands
from feldman_zhang.analysis import consistency_runs
from feldman_zhang.analysis import outputs
from feldman_zhang.analysis import plots

FLAGS = flags.FLAGS


# -- files --------------------------------------------------------------------


def write_csv(path: str, rows) -> str:
  text = io.StringIO()
  writer = csv.writer(text, lineterminator='\n')
  writer.writerow(consistency_runs.COLUMNS)
  for r in rows:
    writer.writerow([f'{r[k]:.6g}' if isinstance(r[k], float) else r[k]
                     for k in consistency_runs.COLUMNS])
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


def thresholds(spec) -> np.ndarray:
  """'lo:hi:step' (inclusive) or a comma list, as float64."""
  if isinstance(spec, str) and ':' in spec:
    lo, hi, step = (float(x) for x in spec.split(':'))
    count = int(np.floor((hi - lo) / step + 1e-9)) + 1
    return np.round(lo + step * np.arange(count), 10)
  values = spec.split(',') if isinstance(spec, str) else spec
  return np.asarray([float(x) for x in values], np.float64)


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
    ref = consistency_runs.Estimates(FLAGS.reference)
    same = lambda w: os.path.realpath(w) == os.path.realpath(ref.workdir)
    others = [w for w in FLAGS.runs if not same(w)]
    runs = [consistency_runs.Estimates(w) for w in others] or [ref]
    rows = consistency_runs.consistency(ref, runs, mem_thetas, infl_thetas,
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
