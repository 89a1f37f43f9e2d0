r"""Exports the high-influence train -> test pairs of a finished run.

  python -m feldman_zhang.analysis.export_pairs --workdir=runs/digits
  python -m feldman_zhang.analysis.export_pairs --workdir=runs/digits --infl_threshold=0.3

A pair (i, j) is selected, as in the paper, when infl[i, j] >= infl_threshold
and mem[i] >= mem_threshold; pairs are sorted by infl, largest first. Writes
under --out (default WORKDIR/pairs), as one set (pairs.npz last: a kill
never mixes two exports; files without pairs.npz are a killed export's,
and the next one removes them):

  pairs.csv, pairs.json  tr_idx, tt_idx, train_label, test_label, infl,
                         infl_stderr (NaN / null if not estimated), mem,
                         mem_stderr
  pairs.npz              tr_idx, tt_idx (int64), infl, mem (float32): the
                         layout of the paper's released pair files
  pairs.png              per test image: its most influential training images
                         and random training images of its class

Reads dense influence (estimate.infl) or, failing that, the top-k form
(estimate.infl_topk): the pairs are the same wherever the top-k form is
complete (infl_threshold >= estimate.pair_threshold, mem_threshold >=
estimate.pair_mem_threshold, and no pair cut for the million-pair cap).
"""

import csv
import io
import json
import os

from absl import flags
from absl import logging
import numpy as np

from feldman_zhang.analysis import commands
from feldman_zhang.analysis import outputs
from feldman_zhang.analysis import plots
from feldman_zhang.analysis import runs
from feldman_zhang import pairs

FLAGS = flags.FLAGS

# The paper's selection; here for the scripts that build on this one.
select_pairs = pairs.select_pairs

COLUMNS = ('tr_idx', 'tt_idx', 'train_label', 'test_label', 'infl',
           'infl_stderr', 'mem', 'mem_stderr')


def topk_caveat(run: runs.Run, infl_threshold: float,
                mem_threshold: float) -> str | None:
  """Why top-k-only pairs may miss some, or None when they cannot."""
  est = run.estimates
  if 'infl' in est or 'infl_top_infl' not in est:
    return None
  k = est['infl_top_infl'].shape[0]
  # Runs before these were recorded kept every row's pairs, uncounted.
  pair_threshold = float(est.get('infl_pair_threshold', run.config[
      'estimate'].get('pair_threshold', 1.0)))
  pair_mem = float(est.get('infl_pair_mem_threshold', -np.inf))
  dropped = int(est.get('infl_pairs_dropped', 0))
  if infl_threshold < pair_threshold:
    return (f'the run kept every pair only down to infl {pair_threshold:g} '
            f'(estimate.pair_threshold); below it, only the top {k} per test '
            'example are known, so some pairs may be missing')
  if mem_threshold < pair_mem:
    return (f'the run kept every pair only for examples of mem >= '
            f'{pair_mem:g} (estimate.pair_mem_threshold); below it, only the '
            f'top {k} per test example are known, so some pairs may be missing')
  if dropped:
    return (f'the run cut {dropped} pairs past its cap of a million; only '
            f'the top {k} per test example are known for those, so some '
            'pairs may be missing')
  return None


def with_labels(pairs: dict, ds) -> dict:
  """pairs plus train_label, test_label, in the order of COLUMNS."""
  out = dict(pairs, train_label=ds.y_train[pairs['tr_idx']].astype(np.int64),
             test_label=ds.y_test[pairs['tt_idx']].astype(np.int64))
  return {k: out[k] for k in COLUMNS}


# -- files --------------------------------------------------------------------


def _records(table):
  """Rows as dicts of Python numbers, NaN as None (JSON has no NaN)."""
  cols = [(k, table[k].tolist()) for k in COLUMNS]
  return [{k: (None if isinstance(v[r], float) and v[r] != v[r] else v[r])
           for k, v in cols} for r in range(len(table['tr_idx']))]


# The files of one export, pairs.npz last: a folder holding some of them
# without pairs.npz holds what a kill left of a set (outputs.write_set).
FILES = ('pairs.csv', 'pairs.json', 'pairs.png', 'pairs.npz')


def write_pairs(out_dir: str, table: dict, meta: dict, grid=None) -> list:
  """Writes pairs.csv, pairs.json, pairs.png (grid: a Figure, or None for
  none) and pairs.npz as one set: a kill leaves the old set or the new
  one, or files without pairs.npz, which the next export removes. Returns
  their paths.

  table: with_labels' columns; meta: the selection's settings, for the JSON.
  """
  paths = dict(zip(FILES, (os.path.join(out_dir, f) for f in FILES)))
  text = io.StringIO()
  writer = csv.writer(text, lineterminator='\n')
  writer.writerow(COLUMNS)
  for r in range(len(table['tr_idx'])):
    writer.writerow([f'{table[k][r]:.6g}' if table[k].dtype.kind == 'f'
                     else int(table[k][r]) for k in COLUMNS])
  doc = json.dumps(dict(meta, num_pairs=len(table['tr_idx']),
                        pairs=_records(table)), indent=1, allow_nan=False)
  arrays = {k: table[k] for k in ('tr_idx', 'tt_idx', 'infl', 'mem')}
  files = {paths['pairs.csv']: lambda f: f.write(text.getvalue().encode()),
           paths['pairs.json']: lambda f: f.write(doc.encode())}
  if grid is not None:
    png = plots.png_bytes(grid)
    files[paths['pairs.png']] = lambda f: f.write(png)
  elif os.path.exists(paths['pairs.png']):
    os.remove(paths['pairs.png'])  # another selection's grid
  files[paths['pairs.npz']] = lambda f: np.savez(f, **arrays)
  return outputs.write_set(files)


# -- the grid -----------------------------------------------------------------


def grid_figure(ds, pairs, num_tests=8, per_test=3, random_per_test=3,
                seed=0):
  """One row per test image of the strongest pairs: the test image, its most
  influential selected training images, random training images of its class.

  Random neighbours of the same class show what is typical, so what the
  influential ones share with the test image (and the random ones lack)
  stands out. Returns a Figure, or None if there are no pairs.
  """
  tests = list(dict.fromkeys(pairs['tt_idx'].tolist()))[:num_tests]
  if not tests:
    return None
  rng = np.random.default_rng(seed)
  chosen = [np.flatnonzero(pairs['tt_idx'] == j)[:per_test] for j in tests]
  # As many influential columns as the fullest row has: no empty band
  # between them and the random ones when tests have fewer pairs.
  per_test = max(len(c) for c in chosen)
  cols = 1 + per_test + random_per_test
  fig = plots.new_figure(1.25 * cols, 1.75 * len(tests))
  axes = fig.subplots(len(tests), cols, squeeze=False)
  for row, j, mine in zip(axes, tests, chosen):
    for ax in row:
      ax.set_axis_off()
    label = int(ds.y_test[j])
    _draw(row[0], ds.x_test[j], f'test {j}\nlabel {label}', 'tab:blue')
    for ax, p in zip(row[1:], mine):
      i = int(pairs['tr_idx'][p])
      _draw(ax, ds.x_train[i],
            f'train {i}\n{_label(ds, i)}\ninfl {pairs["infl"][p]:.2f}\n'
            f'mem {pairs["mem"][p]:.2f}', 'tab:red')
    pool = np.setdiff1d(np.flatnonzero(ds.y_train == label),
                        pairs['tr_idx'][mine])
    picks = rng.choice(pool, min(random_per_test, len(pool)), replace=False)
    for ax, i in zip(row[1 + per_test:], np.sort(picks)):
      _draw(ax, ds.x_train[i], f'train {i}\n{_label(ds, i)}\nrandom', 'dimgray')
  axes[0, 0].set_title('test', fontsize=8)
  if per_test:
    axes[0, 1].set_title('most influential', fontsize=8, loc='left')
  if random_per_test:
    axes[0, 1 + per_test].set_title('random, same class', fontsize=8,
                                    loc='left')
  fig.tight_layout()
  return fig


def _label(ds, i):
  noisy = ds.corrupted is not None and ds.corrupted[i]
  return f'label {ds.y_train[i]}' + (' (noisy)' if noisy else '')


def _draw(ax, x, caption, color):
  ax.set_axis_on()
  plots.show_image(ax, x, caption, color)


# -- the job ------------------------------------------------------------------


def export(run: runs.Run, out_dir: str, infl_threshold=0.15,
           mem_threshold=0.25, max_pairs=0, grids=8, per_test=3,
           random_per_test=3, seed=0):
  """Selects the pairs and writes every file; returns (table, paths)."""
  table = with_labels(select_pairs(run.estimates, infl_threshold,
                                   mem_threshold, max_pairs), run.dataset)
  meta = dict(workdir=os.path.abspath(run.workdir),
              data=run.dataset.name, infl_threshold=infl_threshold,
              mem_threshold=mem_threshold, max_pairs=max_pairs,
              influence='dense' if 'infl' in run.estimates else 'top-k')
  fig = grid_figure(run.dataset, table, grids, per_test, random_per_test,
                    seed) if grids else None
  with outputs.output_folder(out_dir):
    outputs.remove_partial_set([os.path.join(out_dir, f) for f in FILES])
    paths = write_pairs(out_dir, table, meta, fig)
  return table, paths


def define_flags():
  """The command line's flags; defined only when run as a script, since
  report.py imports this module and absl refuses a flag defined twice."""
  flags.DEFINE_string('workdir', None, 'A finished estimate run.',
                      required=True)
  flags.DEFINE_string('out', None, 'Output directory (default WORKDIR/pairs).')
  flags.DEFINE_float('infl_threshold', 0.15, 'Keep pairs with infl >= this '
                     '(the paper: 0.15).')
  flags.DEFINE_float('mem_threshold', 0.25, 'Keep pairs whose training '
                     'example has mem >= this (the paper: 0.25).')
  flags.DEFINE_integer('max_pairs', 0, 'Keep at most this many pairs, '
                       'largest infl first; 0 keeps all.', lower_bound=0)
  flags.DEFINE_integer('grids', 8, 'Test images drawn in pairs.png, those of '
                       'the strongest pairs first; 0: none.', lower_bound=0)
  flags.DEFINE_integer('per_test', 3, 'Most influential training images '
                       'drawn per test image.', lower_bound=1)
  flags.DEFINE_integer('random_per_test', 3, "Random training images of the "
                       "test image's class drawn beside them.", lower_bound=0)
  flags.DEFINE_integer('seed', 0, 'Seed of the random images.')


def main(argv):
  run = runs.load_run_or_exit(argv, FLAGS.workdir, need_infl=True)
  caveat = topk_caveat(run, FLAGS.infl_threshold, FLAGS.mem_threshold)
  if caveat:
    logging.warning(caveat)
  table, paths = export(
      run, FLAGS.out or os.path.join(FLAGS.workdir, 'pairs'),
      FLAGS.infl_threshold, FLAGS.mem_threshold, FLAGS.max_pairs, FLAGS.grids,
      FLAGS.per_test, FLAGS.random_per_test, FLAGS.seed)
  print(f'{len(table["tr_idx"])} pairs with infl >= {FLAGS.infl_threshold} '
        f'and mem >= {FLAGS.mem_threshold}; wrote {", ".join(paths)}')


def run():
  """The command (python -m feldman_zhang.analysis.export_pairs)."""
  commands.run(define_flags, main)


if __name__ == '__main__':
  run()
