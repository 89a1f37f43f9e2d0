"""A run against files released in the paper's layouts (release.py is the
command, and its doc says what each comparison reports): `compare` sets the
run's high-influence pairs and mem against a released pair file and,
optionally, a per-class influence file; `compare_scores` one of its
per-example scores against a released per-example array (scores.py).
"""

import os

import numpy as np

from feldman_zhang import paper_files
from feldman_zhang import store
from feldman_zhang.analysis import export_pairs
from feldman_zhang.analysis import runs
from feldman_zhang.analysis import scores


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
