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


# -- comparing ----------------------------------------------------------------


def _keys(tr, tt, n_test):
  return np.asarray(tr, np.int64) * n_test + np.asarray(tt, np.int64)


def _pearson(a, b):
  """Pearson correlation, or None where a side is constant or too short."""
  # Not stats.pearson: np.corrcoef rounds differently (by up to ~2e-15), and
  # compare.json keeps the values earlier versions wrote.
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(a) < 2 or a.std() == 0 or b.std() == 0:
    return None
  return float(np.corrcoef(a, b)[0, 1])


def _check_indices(run, path, tr, tt):
  ds = run.dataset
  if len(tr) and (tr.max() >= ds.num_train or tt.max() >= ds.num_test):
    raise store.StoreError(
        f'{path} indexes up to train {tr.max()} / test {tt.max()}, past '
        f'{ds.name} ({ds.num_train} train, {ds.num_test} test): not this '
        'data set')


def _set_stats(mine, theirs) -> dict:
  union = len(np.union1d(mine, theirs))
  overlap = len(np.intersect1d(mine, theirs))
  return dict(run_pairs=len(mine), released_pairs=len(theirs),
              overlap=overlap, jaccard=overlap / union if union else 1.0)


def compare(run: runs.Run, pair_path: str, class_path: str | None = None,
            infl_threshold: float = 0.15, mem_threshold: float = 0.25,
            near_duplicate: float = 0.4) -> dict:
  """The comparison of a run with released files (module doc), as a dict."""
  n_test = run.dataset.num_test
  mem = np.asarray(run.estimates['mem'])
  ours = export_pairs.select_pairs(run.estimates, infl_threshold,
                                   mem_threshold)
  our_keys = _keys(ours['tr_idx'], ours['tt_idx'], n_test)
  theirs = paper_files.read_pair_file(pair_path)
  _check_indices(run, pair_path, theirs['tr_idx'], theirs['tt_idx'])
  passing = ((theirs['infl'] >= infl_threshold) &
             (theirs['mem'] >= mem_threshold))
  their_keys = np.unique(_keys(theirs['tr_idx'], theirs['tt_idx'],
                               n_test)[passing])
  out = dict(workdir=os.path.abspath(run.workdir),
             pair_file=os.path.abspath(pair_path),
             infl_threshold=infl_threshold, mem_threshold=mem_threshold,
             influence='dense' if 'infl' in run.estimates else 'top-k',
             released_pairs_in_file=len(theirs['tr_idx']),
             **_set_stats(our_keys, their_keys))
  # The pair file's mem, once per training example it names.
  tr, first = np.unique(theirs['tr_idx'], return_index=True)
  out['mem_examples_pairs'] = len(tr)
  out['mem_correlation_pairs'] = _pearson(mem[tr], theirs['mem'][first])
  dup = theirs['infl'] > near_duplicate
  dup_keys = np.unique(_keys(theirs['tr_idx'][dup], theirs['tt_idx'][dup],
                             n_test))
  found = int(np.isin(dup_keys, our_keys).sum())
  out.update(near_duplicate=near_duplicate,
             near_duplicates_released=len(dup_keys),
             near_duplicates_found=found,
             near_duplicates_found_fraction=(found / len(dup_keys)
                                             if len(dup_keys) else None))
  if class_path:
    out.update(_compare_classes(run, class_path, ours, infl_threshold,
                                mem_threshold))
  return out


def _compare_classes(run, path, ours, infl_threshold, mem_threshold) -> dict:
  """mem correlation over every example, and the within-class pair sets."""
  ds = run.dataset
  doc = paper_files.read_class_file(path)
  if len(doc['tr_mem']) != ds.num_train or len(doc['tt_labels']) != ds.num_test:
    raise store.StoreError(
        f'{path} is for {len(doc["tr_mem"])} train / {len(doc["tt_labels"])} '
        f'test examples, {ds.name} has {ds.num_train} / {ds.num_test}: not '
        'this data set')
  mem = np.asarray(run.estimates['mem'])
  keys = []
  for b in doc['classes'].values():
    i, j = np.nonzero((b.infl >= infl_threshold) &
                      (doc['tr_mem'][b.tr_idx, None] >= mem_threshold))
    keys.append(_keys(b.tr_idx[i], b.tt_idx[j], ds.num_test))
  theirs = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
  # The class file holds within-class pairs only: so do the run's compared.
  same = (doc['tr_labels'][ours['tr_idx']] == doc['tt_labels'][ours['tt_idx']])
  mine = _keys(ours['tr_idx'][same], ours['tt_idx'][same], ds.num_test)
  stats = _set_stats(mine, theirs)
  return dict(class_file=os.path.abspath(path), classes=len(doc['classes']),
              mem_correlation_classes=_pearson(mem, doc['tr_mem']),
              labels_agree=bool(
                  np.array_equal(doc['tr_labels'], ds.y_train) and
                  np.array_equal(doc['tt_labels'], ds.y_test)),
              **{f'class_{k}': v for k, v in stats.items()})


def render(result: dict) -> str:
  """The comparison as a short two-column table."""
  rows = [('influence', result['influence']),
          ('pairs (run / released)',
           f'{result["run_pairs"]} / {result["released_pairs"]}'),
          ('overlap', result['overlap']),
          ('jaccard', _fmt(result['jaccard'])),
          ('mem correlation (pair file)',
           _fmt(result['mem_correlation_pairs'])),
          (f'near-duplicates (infl > {result["near_duplicate"]:g}) found',
           f'{result["near_duplicates_found"]} of '
           f'{result["near_duplicates_released"]}')]
  if 'class_file' in result:
    rows += [('classes in class file', result['classes']),
             ('mem correlation (class file)',
              _fmt(result['mem_correlation_classes'])),
             ('within-class pairs (run / released)',
              f'{result["class_run_pairs"]} / '
              f'{result["class_released_pairs"]}'),
             ('within-class jaccard', _fmt(result['class_jaccard']))]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def _fmt(x):
  return 'n/a' if x is None else f'{x:.4f}'


def compare_scores(run: runs.Run, spec: str, score: str = 'heldout_acc',
                   q: float = 0.05) -> dict:
  """The run's `score` against a released per-example file (module doc)."""
  ds = run.dataset
  theirs = scores.read_released(spec, ds.num_train)
  out = dict(workdir=os.path.abspath(run.workdir),
             released_file=os.path.abspath(theirs.path), key=theirs.key,
             **scores.compare(scores.run_score(run.estimates, score),
                              theirs.values, score, q))
  # A file keyed to another order would still pass the length check; its
  # labels, where it has them, catch that: the fraction equal to ours.
  out['labels_agreement'] = (None if theirs.labels is None else
                             float(np.mean(theirs.labels == ds.y_train)))
  return out


def render_scores(result: dict) -> str:
  """compare_scores' result as a short two-column table."""
  released = result['released_file'] + (f':{result["key"]}' if result['key']
                                        else '')
  rows = [('released', released),
          ('score', f'{result["score"]} on {result["compared"]} of '
           f'{result["examples"]} examples'),
          ('pearson', _fmt(result['pearson'])),
          ('spearman', _fmt(result['spearman'])),
          (f'AUC of {result["auc_ranks_by"]} at the lowest '
           f'{result["lowest"]:g} ({result["lowest_examples"]})',
           _fmt(result['auc']))]
  if result['labels_agreement'] is not None:
    rows.append(("file's labels equal to ours",
                 f'{result["labels_agreement"]:.2%}'))
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


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
      result = compare_scores(run, FLAGS.compare_scores, FLAGS.score,
                              FLAGS.lowest)
      name, table = 'compare_scores.json', render_scores(result)
    else:
      pair_path, *rest = FLAGS.compare
      caveat = export_pairs.topk_caveat(run, FLAGS.infl_threshold,
                                        FLAGS.mem_threshold)
      if caveat:
        logging.warning(caveat)
      result = compare(run, pair_path, rest[0] if rest else None,
                       FLAGS.infl_threshold, FLAGS.mem_threshold,
                       FLAGS.near_duplicate)
      name, table = 'compare.json', render(result)
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
