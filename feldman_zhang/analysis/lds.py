r"""The linear datamodeling score (lds_score.py) of one run's influence on
another run's models: the command

  python -m analysis.lds --scores=runs/a --eval=runs/b [--out=DIR] [--seed=0]

The scores it judges are infl (estimate.py), its counterpart on the margin
(margins.infl_margin) and random scores. It takes the scores from run A's
converged models (its estimates' dense infl and infl_margin, or recomputed
from its stored predictions) and judges them on run B's converged models,
trained on the same data (run.json's data fingerprint) with their own seed
and subsets: B's masks, and B's test margins averaged over views as the
actual output. The curve repeats the LDS of infl and infl_margin estimated
from A's first c models, c in lds_score.curve_counts(t). Writes under --out
(default A/lds):

  lds.json        {score: {value, lo, hi, excluded}} for infl, infl_margin
                  and random; curve {score: [[count, value, lo, hi], ...]};
                  models_a, models_b, test_examples, seconds
  lds_curve.png   the LDS against the number of A's models, log2 axis
"""

import json
import math
import os
import time

from absl import app
from absl import flags
import numpy as np

from feldman_zhang import estimate
from feldman_zhang import margins
from feldman_zhang import store
from feldman_zhang.analysis import commands
from feldman_zhang.analysis import lds_score
from feldman_zhang.analysis import lira_files
from feldman_zhang.analysis import outputs
from feldman_zhang.analysis import plots
from feldman_zhang.analysis import runs

FLAGS = flags.FLAGS


# -- the scores and their LDS -------------------------------------------------

SCORES = ('infl', 'infl_margin', 'random')


def check_same_data(a: str, b: str) -> None:
  """StoreError in one line naming both runs unless they are finished and
  their run.json record the same data fingerprint."""
  found = []
  for workdir in (a, b):
    path = runs.check_finished(workdir).run_json
    try:
      found.append(runs.read_json_or_fail(path)['identity']['data'])
    except (KeyError, TypeError) as e:
      raise store.StoreError(f'{path} lacks the data fingerprint ({e!r}); '
                             're-run the estimate in a new --workdir') from e
  if found[0] != found[1]:
    raise store.StoreError(
        f'{a} and {b} trained on different data (the data fingerprints in '
        'their run.json differ): the LDS judges scores on models of the '
        'same data')


def score_functions(preds: dict, est: dict) -> dict:
  """{'infl', 'infl_margin': count -> (n, n_test) float32} from the first
  `count` of the converged models' predictions preds (converged_predictions)
  and, for all of them, the estimates' dense matrices where est has them."""
  masks = preds['masks']
  t = len(masks)

  def infl(c):
    if c == t and 'infl' in est:
      return est['infl']
    return estimate.estimate(masks[:c], preds['train_correct'][:c],
                             preds['test_correct'][:c], with_infl=True)['infl']

  def infl_margin(c):
    if c == t and 'infl_margin' in est:
      return est['infl_margin']
    return margins.infl_margin(masks[:c], preds['test_margin'][:c])

  return dict(infl=infl, infl_margin=infl_margin)


def _number(x):
  """A float for JSON: NaN as None."""
  return None if math.isnan(x) else float(x)


def _entry(result: dict) -> dict:
  return dict(value=_number(result['value']), lo=_number(result['lo']),
              hi=_number(result['hi']), excluded=result['excluded'])


def evaluate(preds_a: dict, est_a: dict, preds_b: dict, seed: int = 0,
             num_bootstrap: int = 200) -> dict:
  """lds.json's scores and curve (module doc), from A's converged models'
  predictions and estimates and B's converged models' predictions."""
  eval_masks = preds_b['masks']
  eval_out = margins.over_views(preds_b['test_margin'], 2, 'test_margin')
  t = len(preds_a['masks'])
  counts = lds_score.curve_counts(t)
  out, curve = {}, {}
  for name, score_fn in score_functions(preds_a, est_a).items():
    rows = lds_score.lds_curve(score_fn, counts, eval_masks, eval_out,
                               seed=seed, num_bootstrap=num_bootstrap)
    out[name] = _entry(rows[-1])  # counts end at t: every model of A
    curve[name] = [[r['count'], _number(r['value']), _number(r['lo']),
                    _number(r['hi'])] for r in rows]
  n, n_test = eval_masks.shape[1], eval_out.shape[1]
  out['random'] = _entry(lds_score.lds(
      lds_score.random_scores(n, n_test, seed), eval_masks, eval_out,
      seed=seed, num_bootstrap=num_bootstrap))
  return dict(out, curve=curve, models_a=t, models_b=len(eval_masks),
              test_examples=n_test)


def curve_figure(doc: dict, title: str):
  """The LDS of infl and infl_margin against the number of A's models (log2
  axis), 95% intervals as error bars; random as a band."""
  fig = plots.new_figure(5.5, 4)
  ax = fig.subplots()
  for shift, (name, rows) in zip((0.97, 1.03), doc['curve'].items()):
    c, v, lo, hi = (np.array(x, np.float64) for x in zip(*[
        [np.nan if y is None else y for y in r] for r in rows]))
    # Side by side, so the error bars do not hide each other.
    ax.errorbar(c * shift, v, yerr=[v - lo, hi - v], marker='o', ms=4,
                capsize=3, label=name)
  r = doc['random']
  if r['value'] is not None:
    ax.axhline(r['value'], color='gray', ls='--', lw=1, label='random')
    ax.axhspan(r['lo'], r['hi'], color='gray', alpha=0.15, lw=0)
  ax.set_xscale('log', base=2)
  ax.set_xticks(c, [str(int(x)) for x in c])
  ax.set_xlabel("models of the scored run")
  ax.set_ylabel('LDS (Spearman, mean over test examples)')
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def render(doc: dict) -> str:
  """The scores and the curve as a short table."""
  def f(x):
    return 'n/a' if x is None else f'{x:.3f}'
  rows = [('score', 'LDS [95% interval]', 'excluded')]
  for name in SCORES:
    r = doc[name]
    rows.append((name, f'{f(r["value"])} [{f(r["lo"])}, {f(r["hi"])}]',
                 f'{r["excluded"]} of {doc["test_examples"]}'))
  counts = [c for c, *_ in next(iter(doc['curve'].values()))]
  rows.append(('models of A', '  '.join(str(c) for c in counts), ''))
  for name, curve in doc['curve'].items():
    rows.append((name, '  '.join(f(v) for _, v, *_ in curve), ''))
  widths = [max(len(r[c]) for r in rows) for c in range(3)]
  return '\n'.join('  '.join(v.ljust(w) for v, w in zip(r, widths)).rstrip()
                   for r in rows)


def define_flags():
  flags.DEFINE_string('scores', None, 'The finished run whose influence is '
                      'judged (A).', required=True)
  flags.DEFINE_string('eval', None, 'A finished run on the same data whose '
                      'models judge it (B).', required=True)
  flags.DEFINE_string('out', None, 'Output folder (default SCORES/lds).')
  flags.DEFINE_integer('seed', 0, 'Seed of the random scores and the '
                       'bootstrap.')


def read(workdir: str) -> dict | None:
  """lds.json of the scored run's default output folder, or None where the
  command has not run there; StoreError in one line if it is damaged."""
  path = os.path.join(store.Workdir(workdir).analysis('lds'), 'lds.json')
  if not os.path.exists(path):
    return None
  return runs.read_json_or_fail(
      path, f'python -m analysis.lds --scores={workdir} --eval=... rebuilds '
      'it')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  start = time.perf_counter()
  check_same_data(FLAGS.scores, FLAGS.eval)
  run_a, run_b = runs.load_run(FLAGS.scores), runs.load_run(FLAGS.eval)
  doc = evaluate(lira_files.converged_predictions(run_a), run_a.estimates,
                 lira_files.converged_predictions(run_b), FLAGS.seed)
  doc.update(scores=os.path.abspath(FLAGS.scores),
             eval=os.path.abspath(FLAGS.eval),
             seconds=time.perf_counter() - start)
  out = FLAGS.out or store.Workdir(FLAGS.scores).analysis('lds')
  text = json.dumps(doc, indent=1, allow_nan=False)
  png = plots.png_bytes(curve_figure(
      doc, f'{run_a.dataset.name}: infl of {doc["models_a"]} models judged '
      f'on {doc["models_b"]} others'))
  # One set, lds.json last (outputs.write_set): a kill never mixes two runs.
  paths = [os.path.join(out, f) for f in ('lds_curve.png', 'lds.json')]
  with outputs.output_folder(out):
    outputs.remove_partial_set(paths)
    outputs.write_set({paths[0]: lambda f: f.write(png),
                       paths[1]: lambda f: f.write(text.encode())})
  print(render(doc))
  print(f'wrote {", ".join(paths)}')


def run():
  """The command (python -m feldman_zhang.analysis.lds)."""
  commands.run(define_flags, main)


if __name__ == '__main__':
  run()
