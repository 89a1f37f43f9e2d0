r"""Writes a run's estimates in the paper's release layout, or compares a run
with released files of that layout.

  python -m feldman_zhang.analysis.release --workdir=runs/digits --write_classes=classes.npz
  python -m feldman_zhang.analysis.release --workdir=runs/digits \
      --compare=pairs.npz[,classes.npz]
  python -m feldman_zhang.analysis.release --workdir=runs/cifar10 \
      --compare_scores=cifar10-cscores-orig-order.npz:scores

--write_classes: the per-class influence file (feldman_zhang/paper_files.py):
for each class K, the influence of its training examples on its test
examples, computed from the run's stored predictions block by block on the
device (bit for bit the dense estimate's entries, diverged models left out
as the estimate leaves them out), so it needs no dense matrix: runs made
with estimate.infl=False (ImageNet) can write it too.

--compare: a released pair file (tr_idx, tt_idx, infl, mem; e.g. the
paper's, or export_pairs' pairs.npz) and optionally a per-class file,
against the run. Both sides' pairs are thresholded alike (infl >=
--infl_threshold and mem >= --mem_threshold; the run's from its dense
matrix or its top-k pair list, as export_pairs). Reports the overlap and
Jaccard of the pair sets, the Pearson correlation of mem on the indices both
give (the pair file's mem per training example; the per-class file's tr_mem,
every example), and how many of the released near-duplicate pairs (infl >
--near_duplicate) are among the run's pairs. Prints a table and writes
compare.json under --out (default WORKDIR/release).

--compare_scores: a released per-example array in the data set's original
order (FILE.npy, FILE.npz holding one array, or FILE.npz:KEY; e.g. Jiang et
al.'s C-scores) against the run's --score (heldout_acc, cscore or mem):
Pearson, Spearman, and the AUC of the score at picking the file's --lowest
fraction (feldman_zhang/analysis/scores.py). A file of another length is
refused. Prints a table and writes compare_scores.json under --out.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

from feldman_zhang import chunks
from feldman_zhang import errors
from feldman_zhang import paper_files
from feldman_zhang import store
from feldman_zhang.analysis import commands
from feldman_zhang.analysis import export_pairs
from feldman_zhang.analysis import outputs
from feldman_zhang.analysis import release_compare
from feldman_zhang.analysis import runs
from feldman_zhang.analysis import scores

FLAGS = flags.FLAGS


# -- the run's predictions ----------------------------------------------------


def estimated_predictions(run: runs.Run) -> dict:
  """The stored predictions of the models the run's estimates came from:
  ids below the config's num_models (as the job reads them), diverged ones
  still in (infl_per_class leaves them out with their loss).

  StoreError if they are not what estimates.npz records (another number of
  converged models, or other diverged ones): the chunks changed since.
  """
  preds = chunks.load_predictions(run.workdir)
  keep = preds['model_ids'] < int(run.config['num_models'])
  if not keep.all():
    preds = {k: v[keep] for k, v in preds.items()}
  valid = np.isfinite(preds['loss']).all(axis=1)  # diagnostics.converged
  est = run.estimates
  diverged = preds['model_ids'][~valid]
  recorded = np.asarray(est.get('diverged_models', diverged))
  if int(valid.sum()) != int(est['num_models']) or not np.array_equal(
      diverged, recorded):
    raise store.StoreError(
        f'{run.workdir}/chunks holds {int(valid.sum())} converged models but '
        f'estimates.npz was made from {int(est["num_models"])}: rerun the '
        'estimate there so the two agree')
  return preds


def class_blocks(run: runs.Run, classes=None):
  """paper_files.infl_per_class of the run: its ClassBlocks, one by one."""
  preds = estimated_predictions(run)
  ds = run.dataset
  return paper_files.infl_per_class(preds['masks'], preds['test_correct'],
                                ds.y_train, ds.y_test, ds.num_classes,
                                classes, loss=preds['loss'])


def write_classes(run: runs.Run, path: str) -> str:
  """Writes the run's per-class influence file; returns its path."""
  ds = run.dataset
  return paper_files.write_class_file(path, class_blocks(run), ds.y_train,
                                  ds.y_test, run.estimates['mem'])


# -- the job ------------------------------------------------------------------


def define_flags():
  flags.DEFINE_string('workdir', None, 'A finished estimate run.',
                      required=True)
  flags.DEFINE_string('write_classes', None, 'Write the per-class influence '
                      'file (.npz) here.')
  flags.DEFINE_list('compare', None, 'PAIRS.npz[,CLASSES.npz]: released '
                    'files to compare the run with.')
  flags.DEFINE_string('compare_scores', None, 'FILE.npy|FILE.npz[:KEY]: a '
                      'released per-example array (original order) to set '
                      '--score against.')
  flags.DEFINE_enum('score', 'heldout_acc', list(scores.SCORES), "The run's "
                    'per-example score --compare_scores compares.')
  flags.DEFINE_float('lowest', 0.05, 'The AUC of --score at picking this '
                     "fraction of the released file's lowest values.")
  flags.DEFINE_string('out', None, 'Where compare.json or compare_scores.json '
                      'goes (default WORKDIR/release).')
  flags.DEFINE_float('infl_threshold', 0.15, 'Pairs have infl >= this (the '
                     'paper: 0.15).')
  flags.DEFINE_float('mem_threshold', 0.25, "Pairs' training examples have "
                     'mem >= this (the paper: 0.25).')
  flags.DEFINE_float('near_duplicate', 0.4, 'Released pairs of infl above '
                     'this count as near-duplicates.')


def main(argv):
  if sum(map(bool, (FLAGS.write_classes, FLAGS.compare,
                    FLAGS.compare_scores))) != 1:
    raise app.UsageError('give one of --write_classes=OUT.npz, '
                         '--compare=PAIRS.npz[,CLASSES.npz] and '
                         '--compare_scores=FILE.npy|FILE.npz[:KEY]')
  if not 0 < FLAGS.lowest < 1:
    raise app.UsageError(f'--lowest={FLAGS.lowest:g}: a fraction in (0, 1)')
  if FLAGS.compare and len(FLAGS.compare) > 2:
    raise app.UsageError('--compare takes PAIRS.npz and at most one '
                         'CLASSES.npz')
  run = runs.load_run_or_exit(argv, FLAGS.workdir,
                              need_infl=bool(FLAGS.compare))
  try:
    if FLAGS.write_classes:
      with outputs.writing(FLAGS.write_classes,
                           'name another file with --write_classes'):
        path = write_classes(run, FLAGS.write_classes)
      print(f'wrote {run.dataset.num_classes} class blocks to {path}')
      return
    if FLAGS.compare_scores:
      result = release_compare.compare_scores(
          run, FLAGS.compare_scores, FLAGS.score, FLAGS.lowest)
      name, table = ('compare_scores.json',
                     release_compare.render_scores(result))
    else:
      pair_path, *rest = FLAGS.compare
      caveat = export_pairs.topk_caveat(run, FLAGS.infl_threshold,
                                        FLAGS.mem_threshold)
      if caveat:
        logging.warning(caveat)
      result = release_compare.compare(
          run, pair_path, rest[0] if rest else None, FLAGS.infl_threshold,
          FLAGS.mem_threshold, FLAGS.near_duplicate)
      name, table = 'compare.json', release_compare.render(result)
  except errors.USER_ERRORS as e:
    sys.exit(f'error: {e}')
  _write(result, name, table)


def _write(result: dict, name: str, table: str):
  """Writes result as JSON to --out/name and prints the table."""
  out = FLAGS.out or os.path.join(FLAGS.workdir, 'release')
  path = os.path.join(out, name)
  doc = json.dumps(result, indent=1, allow_nan=False)
  with outputs.output_folder(out):
    outputs.write_file(path, lambda f: f.write(doc.encode()))
  print(table)
  print(f'wrote {path}')


def run():
  """The command (python -m feldman_zhang.analysis.release)."""
  commands.run(define_flags, main)


if __name__ == '__main__':
  run()
