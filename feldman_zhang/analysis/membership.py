r"""Membership inference against the run's models (LiRA, lira.py): the
command

  python -m analysis.membership --workdir=runs/digits [--targets=64|all]
  python -m analysis.membership --workdir=runs/digits --lira_dir=lira/
  python -m analysis.membership --from_lira_dir=lira/ --out=DIR

Every model is a target in turn, its shadow pool every other model (lira.py
says how each attack scores). The command reads the run's converged models (or a pool in the reference's
layout, lira_files.py) and writes under --out (default WORKDIR/membership):

  membership.json           per attack: auc, acc, tpr_at_fpr {"0.01",
                            "0.001", "0.0001"}, each {value, lo, hi}, and
                            excluded; beside them attacks (their names),
                            targets (model ids), pairs, models, views,
                            examples, per_example_level, seconds (reading
                            the pool and attacking it, not the files)
  roc.png                   every attack's ROC on log-log axes
  per_example.npz           per_example() of the online attack, every model
                            a target: in_minus_out, tpr, fpr, num_in,
                            num_out, threshold, level; mem (--workdir only)
  mem_vs_vulnerability.png  mem against each example's TPR (--workdir only)

--lira_dir=OUT also writes the run's pool in the reference's layout.
"""

import json
import math
import os
import time

from absl import app
from absl import flags
import numpy as np

from feldman_zhang import store
from feldman_zhang.analysis import commands
from feldman_zhang.analysis import lira
from feldman_zhang.analysis import lira_files
from feldman_zhang.analysis import outputs
from feldman_zhang.analysis import plots
from feldman_zhang.analysis import roc
from feldman_zhang.analysis import runs

FLAGS = flags.FLAGS


# -- the command --------------------------------------------------------------


def attack_pool(pool: lira_files.Pool, targets='64', seed: int = 0,
            num_bootstrap: int = 200):
  """(attack_all's results, per_example()) of a pool; targets: 'all' or a
  count (a seeded sample of that many models)."""
  t = len(pool.masks)
  chosen = (np.arange(t) if targets == 'all'
            else lira.choose_targets(t, int(targets), seed))
  results = lira.attack_all(pool.masks, pool.phi, chosen, seed=seed,
                            num_bootstrap=num_bootstrap)
  return results, lira.per_example(pool.masks, pool.phi)


def document(results: dict, pool: lira_files.Pool, vulnerable: dict,
             seconds: float, source: str) -> dict:
  """membership.json's content (module doc); NaN written as null."""
  first = next(iter(results.values()))
  doc = {a: dict(auc=r['auc'], acc=r['acc'], tpr_at_fpr=r['tpr_at_fpr'],
                 excluded=r['excluded']) for a, r in results.items()}
  doc.update(attacks=list(results), source=source,
             targets=pool.model_ids[first['targets']].tolist(),
             pairs=int(first['pairs']), models=int(pool.masks.shape[0]),
             views=int(pool.phi.shape[2]), examples=int(pool.masks.shape[1]),
             per_example_level=vulnerable['level'], seconds=seconds)
  return _nan_to_none(doc)


def _nan_to_none(x):
  if isinstance(x, dict):
    return {k: _nan_to_none(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_nan_to_none(v) for v in x]
  return None if isinstance(x, float) and math.isnan(x) else x


def vulnerability_figure(mem, tpr, level: float, title: str):
  """FZ mem (x) against each example's TPR at the global threshold of FPR
  `level` (y), the correlations in the title."""
  mem, tpr = np.asarray(mem, np.float64), np.asarray(tpr, np.float64)
  ok = np.isfinite(mem) & np.isfinite(tpr)
  fig = plots.new_figure(5.5, 4.5)
  ax = fig.subplots()
  ax.scatter(mem[ok], tpr[ok], s=4, alpha=0.4, lw=0)
  r = (np.corrcoef(mem[ok], tpr[ok])[0, 1]
       if ok.sum() > 1 and mem[ok].std() > 0 and tpr[ok].std() > 0
       else float('nan'))
  ax.set_xlabel('memorization estimate (Feldman & Zhang)')
  ax.set_ylabel(f'TPR of the online attack at {level:.1%} global FPR')
  ax.set_title(f'{title}\nPearson r = {r:.3f} over {int(ok.sum())} examples',
               fontsize=9)
  fig.tight_layout()
  return fig


# The command's files, membership.json last: a folder holding some of them
# without it holds what a kill left of a set (outputs.write_set).
FILES = ('roc.png', 'per_example.npz', 'mem_vs_vulnerability.png',
         'membership.json')


def write(out: str, doc: dict, results: dict, vulnerable: dict, title: str,
          mem=None) -> list:
  """Writes the command's files into out (module doc) as one set: a kill
  leaves the old set or the new one, or files without membership.json,
  which the next run removes. Returns their paths."""
  paths = dict(zip(FILES, (os.path.join(out, f) for f in FILES)))
  outputs.remove_partial_set(list(paths.values()))
  text = json.dumps(doc, indent=1, allow_nan=False)
  roc_png = plots.png_bytes(roc.roc_figure(results, title))
  arrays = {k: np.asarray(vulnerable[k]) for k in
            ('in_minus_out', 'tpr', 'fpr', 'num_in', 'num_out', 'threshold',
             'level')}
  files = {paths['roc.png']: lambda f: f.write(roc_png)}
  if mem is not None:
    arrays['mem'] = np.asarray(mem, np.float32)
    scatter = plots.png_bytes(vulnerability_figure(
        mem, vulnerable['tpr'], vulnerable['level'], title))
    files[paths['mem_vs_vulnerability.png']] = lambda f: f.write(scatter)
  elif os.path.exists(paths['mem_vs_vulnerability.png']):
    os.remove(paths['mem_vs_vulnerability.png'])  # another pool's
  files[paths['per_example.npz']] = lambda f: np.savez(f, **arrays)
  files[paths['membership.json']] = lambda f: f.write(text.encode())
  return outputs.write_set(files)


def render(doc: dict) -> str:
  """The attacks as a short table: AUC [interval], balanced accuracy, TPR
  at each FPR level."""
  levels = [str(q) for q in lira.LEVELS]
  head = ['attack', 'AUC [95% interval]', 'bal. acc'] + [
      f'TPR@{float(q) * 100:g}%' for q in levels]
  rows = [head]
  for a in doc['attacks']:
    r = doc[a]
    f = lambda x: 'n/a' if x is None else f'{x:.3f}'
    rows.append([a, f'{f(r["auc"]["value"])} [{f(r["auc"]["lo"])}, '
                 f'{f(r["auc"]["hi"])}]', f(r['acc']['value'])] +
                [f(r['tpr_at_fpr'][q]['value']) for q in levels])
  widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
  lines = ['  '.join(v.ljust(w) for v, w in zip(row, widths)).rstrip()
           for row in rows]
  return '\n'.join(lines + [
      f'{doc["models"]} models, {doc["views"]} view(s), '
      f'{len(doc["targets"])} targets, {doc["pairs"]} pairs'])


def read(workdir: str):
  """(membership.json, per_example.npz's arrays) of the run's default
  output folder, or None where the command has not run there; StoreError
  in one line if either is damaged."""
  out = store.Workdir(workdir).analysis('membership')
  doc_path = os.path.join(out, 'membership.json')
  per_path = os.path.join(out, 'per_example.npz')
  if not (os.path.exists(doc_path) and os.path.exists(per_path)):
    return None
  remedy = f'python -m analysis.membership --workdir={workdir} rebuilds it'
  doc = runs.read_json_or_fail(doc_path, remedy)
  try:
    with np.load(per_path, allow_pickle=False) as f:
      per = {k: f[k] for k in f.files}
  except Exception as e:  # zipfile, zlib and numpy raise many types
    raise store.StoreError(f'{per_path} is unreadable ({type(e).__name__}); '
                           f'{remedy}') from e
  return doc, per


def define_flags():
  flags.DEFINE_string('workdir', None, 'A finished estimate run.')
  flags.DEFINE_string('targets', '64', "Target models: a seeded sample of "
                      "up to this many, or 'all'.")
  flags.DEFINE_integer('seed', 0, 'Seed of the targets and the bootstrap.')
  flags.DEFINE_string('out', None, 'Output folder (default '
                      'WORKDIR/membership; required with --from_lira_dir).')
  flags.DEFINE_string('lira_dir', None, "Also write the run's models in the "
                      'LiRA reference layout here.')
  flags.DEFINE_string('from_lira_dir', None, 'Attack a pool in the LiRA '
                      'reference layout instead of a run.')


def _check_flags(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if bool(FLAGS.workdir) == bool(FLAGS.from_lira_dir):
    raise app.UsageError('give one of --workdir=W and --from_lira_dir=IN')
  if FLAGS.from_lira_dir and not FLAGS.out:
    raise app.UsageError('--from_lira_dir needs --out=DIR')
  if FLAGS.from_lira_dir and FLAGS.lira_dir:
    raise app.UsageError('--lira_dir exports a run: give it with --workdir')
  if FLAGS.targets != 'all' and not (FLAGS.targets.isdigit() and
                                     int(FLAGS.targets) > 0):
    raise app.UsageError(f"--targets={FLAGS.targets}: a positive count or "
                         "'all'")


def main(argv):
  _check_flags(argv)
  start = time.perf_counter()
  if FLAGS.workdir:
    run = runs.load_run(FLAGS.workdir)
    pool, mem = lira_files.run_pool(run), run.estimates['mem']
    source, title = os.path.abspath(FLAGS.workdir), run.dataset.name
    out = FLAGS.out or store.Workdir(FLAGS.workdir).analysis('membership')
  else:
    pool, mem = lira_files.read_lira_dir(FLAGS.from_lira_dir), None
    source = title = os.path.abspath(FLAGS.from_lira_dir)
    out = FLAGS.out
  if FLAGS.lira_dir:
    with outputs.output_folder(FLAGS.lira_dir):
      lira_files.write_lira_dir(FLAGS.lira_dir, *pool)
    print(f'wrote {len(pool.masks)} models to {FLAGS.lira_dir}')
  results, vulnerable = attack_pool(pool, FLAGS.targets, FLAGS.seed)
  doc = document(results, pool, vulnerable, time.perf_counter() - start,
                 source)
  with outputs.output_folder(out):
    paths = write(out, doc, results, vulnerable,
                  f'LiRA on {title}: {doc["models"]} models', mem)
  print(render(doc))
  print(f'wrote {", ".join(paths)}')


def run():
  """The command (python -m feldman_zhang.analysis.membership)."""
  commands.run(define_flags, main)


if __name__ == '__main__':
  run()
