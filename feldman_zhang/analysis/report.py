r"""One self-contained HTML page per finished run.

  python -m feldman_zhang.analysis.report --workdir=runs/digits   # -> runs/digits/report.html

The page holds the trained models' accuracy, the counts that matter (examples
with mem over the run's bar, pairs selected, diverged models), label noise and
convergence when the run has them, the galleries and the pair grid, and the
config. Images are embedded as base64 data: URIs, so the one file can be
mailed, attached to an issue or opened offline.
"""

import base64
import html
import os

from absl import flags
import numpy as np

from feldman_zhang.analysis import common
from feldman_zhang.analysis import experiment_figures
from feldman_zhang.analysis import export_pairs
from feldman_zhang.analysis import galleries
from feldman_zhang.analysis import lds as lds_lib
from feldman_zhang.analysis import membership
from feldman_zhang import config as config_lib
from feldman_zhang import estimate as estimate_lib
from feldman_zhang import store
from feldman_zhang import summary as summary_lib
from feldman_zhang.experiments import drop
from feldman_zhang.experiments import lastlayer

FLAGS = flags.FLAGS

_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f3f3f3; }
td.k { text-align: left; font-family: monospace; }
table.kv td { text-align: left; }
img { max-width: 100%; margin: 0.5em 0; }
.row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.note { color: #666; }
.caveat { background: #fff4d6; border-left: 4px solid #e0a800;
          padding: 0.5em 0.8em; }
figure { margin: 0.5em 0 1em; }
figcaption { color: #555; font-size: 0.9em; max-width: 700px; }
"""


def _e(x) -> str:
  return html.escape(str(x))


def _table(header, rows, key_column=False) -> str:
  """An HTML table; cells are escaped."""
  out = ['<table class="kv">' if key_column else '<table>']
  if header:
    out.append('<tr>' + ''.join(f'<th>{_e(h)}</th>' for h in header) + '</tr>')
  for r in rows:
    cells = [f'<td class="k">{_e(c)}</td>' if key_column and n == 0
             else f'<td>{_e(c)}</td>' for n, c in enumerate(r)]
    out.append('<tr>' + ''.join(cells) + '</tr>')
  out.append('</table>')
  return '\n'.join(out)


def _img(png: bytes, alt: str) -> str:
  data = base64.b64encode(png).decode('ascii')
  return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _figure(fig, name: str, caption: str) -> str:
  """A Figure embedded, with its one-sentence caption under it."""
  return (f'<figure>{_img(common.png_bytes(fig), name)}'
          f'<figcaption>{_e(caption)}</figcaption></figure>')


def captions(run: common.Run) -> dict:
  """{figure name: the sentence under it in the report}."""
  noisy = ' (red, *: a noisy label)' if run.dataset.corrupted is not None \
      else ''
  return {
      'most_memorized.png': 'Each row is one class: its training images '
                            f'of highest mem, highest first{noisy}.',
      'mem_hist.png': 'How many training examples have each memorization '
                      'estimate; the dashed line is the bar for memorized '
                      f'(mem >= {common.mem_threshold(run):g}).',
      'heldout_acc_hist.png': 'Accuracy on each training example of the '
                              'models that did not train on it.',
      'mem_vs_heldout.png': 'One dot per training example: memorized ones '
                            'sit top left, right only when trained on.',
      'cscores.png': 'C-scores: their histogram, the held-out accuracy at '
                     'each subset ratio, and the training images of lowest '
                     'C-score.',
      'pairs.png': 'Each row is a test image (blue), its most influential '
                   'training images (red, with infl and mem) and random '
                   'training images of its class (grey).',
      'drop.png': 'Test accuracy of models retrained without the examples '
                  'of mem >= θ (each point names its θ) and without as many '
                  'random ones, +- one standard error.',
      'mem_histograms.png': 'Memorization estimates of the full networks '
                            'and of last layers trained on the frozen '
                            'features of a network trained on all data.',
  }


def headline(run: common.Run, num_pairs) -> list:
  """[(name, value)]: the run's accuracy and the counts worth a glance.

  num_pairs: pairs selected, or None if the run has no influence estimates.
  """
  s, est = run.summary or {}, run.estimates
  threshold = common.mem_threshold(run)
  mem = est['mem']
  rows = [('data', f'{run.dataset.name}: n={run.dataset.num_train}, '
                   f'n_test={run.dataset.num_test}, '
                   f'{run.dataset.num_classes} classes'),
          ('models', f'{int(est["num_models"])} in the estimates')]
  if 'model_test_acc_mean' in s:
    rows.append(('model test accuracy', f'{s["model_test_acc_mean"]:.4f} '
                 f'(sd {s["model_test_acc_sd"]:.4f} across models)'))
    # mem_i <= in_acc_i: a recipe that under-fits its subsets caps mem.
    rows.append(('accuracy on their own subsets',
                 f'{float(np.mean(est["in_acc"])):.4f}'))
  else:
    rows.append(('model test accuracy', 'unknown (no summary.json)'))
  diverged = est.get('diverged_models')
  rows.append(('diverged models', 'unknown' if diverged is None else
               f'{len(diverged)}' + (f': {diverged[:10].tolist()}'
                                     if len(diverged) else '')))
  rows.append((f'examples with mem >= {threshold}',
               f'{int((mem >= threshold).sum())} of {len(mem)}'))
  rows.append(('median mem stderr',
               f'{float(np.median(est["mem_stderr"])):.4f} (all examples), '
               f'{estimate_lib.median_stderr(est):.4f} (held-out accuracy in '
               '[0.1, 0.9])'))
  rows.append(('pairs selected', 'no influence estimates in this run'
               if num_pairs is None else str(num_pairs)))
  if 'label_noise' in s:
    ln = s['label_noise']
    rows.append(('label noise',
                 f'{ln["num_corrupted"]} corrupted labels; median mem '
                 f'{ln["mem_median_corrupted"]:.3f} (corrupted) vs '
                 f'{ln["mem_median_clean"]:.3f} (clean); mem >= '
                 f'{s["mem_threshold"]}: {ln["memorized_corrupted"]} corrupted,'
                 f' {ln["memorized_clean"]} clean'))
  if s.get('stopped_at_target_stderr'):
    rows.append(('stopped early', 'median mem stderr reached '
                 'config.target_stderr'))
  if 'timing' in s:
    t = s['timing']
    rows.append(('timing', f'{t["models_trained"]} models trained in '
                 f'{t["train_s"]:.1f} s; estimates in {t["estimate_s"]:.1f} s'))
    if t.get('phases'):
      rows.append(('phases (s)', ', '.join(
          f'{k} {v:.1f}' for k, v in sorted(t['phases'].items(),
                                            key=lambda kv: -kv[1]))))
  return rows


def run_caveats(run: common.Run) -> list[str]:
  """summary.json's caveats (summary.caveats), made from its numbers where
  it predates them; none without a summary."""
  if not run.summary:
    return []
  return run.summary.get('caveats', summary_lib.caveats(run.summary))


def convergence_rows(summary) -> list:
  return [(c['models'], f'{c["mean_abs_diff"]:.4f}', f'{c["max_abs_diff"]:.4f}',
           'n/a' if c['correlation'] is None else f'{c["correlation"]:.4f}',
           f'{c["median_stderr"]:.4f}')
          for c in (summary or {}).get('convergence', [])]


def pair_columns(table) -> tuple:
  """export_pairs' columns, less infl_stderr where the run has none."""
  return tuple(c for c in export_pairs.COLUMNS if c != 'infl_stderr' or
               not np.all(np.isnan(table['infl_stderr'])))


def pair_rows(table, limit) -> list:
  def cell(c, r):
    v = table[c][r]
    return f'{v:.3f}' if np.issubdtype(np.asarray(v).dtype, np.floating) \
        else int(v)
  return [tuple(cell(c, r) for c in pair_columns(table))
          for r in range(min(limit, len(table['tr_idx'])))]


def experiment_parts(workdir, name: str = '', mem=None,
                     caption: dict | None = None) -> list:
  """The drop and lastlayer experiments' results, where they exist, with
  their figures (analysis.experiment_figures); mem: the run's, for the
  lastlayer histograms; caption: captions() of the run."""
  parts, caption = [], caption or {}
  rows = drop.read_table(workdir)
  if rows:
    parts += ['<h2>Drop experiment</h2>',
              '<p class="note">Mean test accuracy of models retrained '
              'without the examples of mem &ge; &theta;, and without as '
              'many random ones, &plusmn; its standard error over the '
              'models.</p>',
              _table(*drop_table(rows)),
              _figure(experiment_figures.drop_figure(rows, name), 'drop.png',
                      caption.get('drop.png', ''))]
  c = lastlayer.read_comparison(workdir)
  if c is not None:
    parts += ['<h2>Last layer only</h2>', _table(*lastlayer_table(c))]
    last = lastlayer.read_head_mem(workdir)
    if last is not None and mem is not None:
      parts.append(_figure(experiment_figures.lastlayer_figure(mem, last,
                                                               name),
                           'mem_histograms.png',
                           caption.get('mem_histograms.png', '')))
  return parts


def privacy_parts(workdir, name: str, mem) -> list:
  """Membership inference (analysis.membership) and the LDS of the
  influence (analysis.lds), where those commands have written their
  results into the run's folder."""
  parts = []
  found = membership.read(workdir)
  if found is not None:
    doc, per = found
    interval = lambda d: (f'{_num(d["value"], 3)} [{_num(d["lo"], 3)}, '
                          f'{_num(d["hi"], 3)}]')
    rows = [[a, interval(doc[a]['auc']), _num(doc[a]['acc']['value'], 3)] +
            [_num(doc[a]['tpr_at_fpr'][q]['value'], 3)
             for q in ('0.01', '0.001', '0.0001')]
            for a in doc['attacks']]
    parts += ['<h2>Membership inference (LiRA)</h2>',
              f'<p class="note">Each of {len(doc["targets"])} target '
              f'models attacked with the other {doc["models"] - 1} as '
              'shadows, over every (target, training example) pair; 95% '
              'intervals over the targets.</p>',
              _table(['attack', 'AUC', 'balanced accuracy', 'TPR at 1% FPR',
                      'TPR at 0.1%', 'TPR at 0.01%'], rows)]
    if mem is not None and 'tpr' in per:
      parts.append(_figure(
          membership.vulnerability_figure(mem, per['tpr'], float(per['level']),
                                          f'{name}: what leaks'),
          'mem_vs_vulnerability.png',
          'Each training example\'s memorization against the share of the '
          'models trained on it that the online attack catches at one '
          'global threshold of 1% false positives.'))
  doc = lds_lib.read(workdir)
  if doc is not None:
    rows = [[s, f'{_num(doc[s]["value"], 3)} [{_num(doc[s]["lo"], 3)}, '
             f'{_num(doc[s]["hi"], 3)}]', doc[s]['excluded']]
            for s in lds_lib.SCORES if s in doc]
    parts += ['<h2>Linear datamodeling score of the influence</h2>',
              f'<p class="note">How well this run\'s scores predict the '
              f'test margins of {doc["models_b"]} models of {_e(str(doc["eval"]))}'
              ' (Spearman over those models, mean over test examples).</p>',
              _table(['score', 'LDS [95% interval]', 'test examples left out'],
                     rows),
              _figure(lds_lib.curve_figure(doc, name), 'lds_curve.png',
                      'The LDS of the influence estimated from the first '
                      't/8, t/4, t/2 and t models: a curve still rising '
                      'means more models would still help.')]
  return parts


def _num(v, digits: int = 4) -> str:
  """A number to `digits` significant digits; ints and text as they are."""
  if isinstance(v, float):
    return 'n/a' if v != v else f'{v:.{digits}g}'
  return 'unknown' if v is None else str(v)


def drop_table(rows) -> tuple:
  """(header, rows) of drop.csv's table, for people: an accuracy and its
  standard error in one cell, 4 significant digits (3 for the error)."""
  header = ['θ (mem ≥)', 'examples removed', 'fraction removed',
            'accuracy, highest mem removed', 'accuracy, random removed']
  if 'models_per_arm' in rows[0]:
    header.append('models per arm')
  acc = lambda r, k: f'{_num(r[k])} ± {_num(r[k + "_se"], 3)}'
  return header, [
      [_num(r['theta']), r['num_removed'], _num(r['fraction_removed']),
       acc(r, 'acc_high_mem_removed'), acc(r, 'acc_random_removed')] +
      ([r['models_per_arm']] if 'models_per_arm' in r else []) for r in rows]


def lastlayer_table(c: dict) -> tuple:
  """(header, rows) of comparison.json: the full networks against the last
  layer alone, quantity by quantity (what an older comparison lacks shows
  as unknown)."""
  threshold = c.get('threshold')
  both = lambda k: [_num(c.get(f'{k}_full')), _num(c.get(f'{k}_last'))]
  rows = [['models'] + [_num(c.get('num_models_full')),
                        _num(c.get('num_models_last'))],
          [f'examples with mem ≥ {_num(threshold)}'] + both('memorized'),
          ['median mem'] + both('median'), ['mean mem'] + both('mean'),
          ['mean test accuracy'] + [_num(c.get('full_test_acc_mean')),
                                    _num(c.get('head_test_acc_mean'))],
          ['correlation of the two mem estimates',
           _num(c.get('correlation')), '']]
  return ['', 'full network', 'last layer only'], rows


def build(run: common.Run, infl_threshold=0.15, mem_threshold=0.25, grids=8,
          table_rows=20) -> str:
  """The report of a run, as one HTML string."""
  table = caveat = None
  if common.has_influence(run.estimates):
    table = export_pairs.with_labels(export_pairs.select_pairs(
        run.estimates, infl_threshold, mem_threshold), run.dataset)
    caveat = export_pairs.topk_caveat(run, infl_threshold, mem_threshold)
  num_pairs = None if table is None else len(table['tr_idx'])
  title = f'Memorization and influence: {run.dataset.name}'
  parts = [f'<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
           f'<title>{_e(title)}</title><style>{_STYLE}</style></head><body>',
           f'<h1>{_e(title)}</h1>',
           f'<p class="note">{_e(os.path.abspath(run.workdir))}</p>']
  # What the console printed as notes: first, before any number or pair.
  parts += [f'<p class="caveat">Caveat: {_e(c)}.</p>'
            for c in run_caveats(run)]
  parts += ['<h2>Summary</h2>', _table(None, headline(run, num_pairs), True)]
  conv = convergence_rows(run.summary)
  if conv:
    parts += ['<h2>Convergence</h2>',
              '<p class="note">mem from the first models against mem from '
              'all of them.</p>',
              _table(('models', 'mean |change|', 'max |change|', 'correlation',
                      'median stderr'), conv)]
  parts.append('<h2>Memorization</h2>')
  figs, caption = galleries.figures(run), captions(run)
  # The class gallery is wide; the three plots sit side by side under it.
  parts.append(_figure(figs.pop('most_memorized.png'), 'most_memorized.png',
                       caption['most_memorized.png']))
  cscores = figs.pop('cscores.png', None)
  parts.append('<div class="row">' + ''.join(
      _figure(fig, name, caption[name]) for name, fig in figs.items()) +
               '</div>')
  if cscores is not None:
    c = (run.summary or {}).get('cscore', {})
    parts += ['<h2>C-scores</h2>',
              '<p class="note">Per example, the mean over subset ratios '
              f'{_e(", ".join(f"{r:g}" for r in run.estimates["subset_ratios"]))}'
              ' of the held-out accuracy of the models not trained on it '
              '(Jiang et al. 2021).</p>',
              _figure(cscores, 'cscores.png', caption['cscores.png'])]
    if c.get('lowest'):
      parts.append(_table(('train', 'label', 'C-score', 'mem'),
                          [(r['train'], r['label'], f'{r["cscore"]:.3f}',
                            f'{r["mem"]:.3f}') for r in c['lowest']]))
  parts.append('<h2>High-influence pairs</h2>')
  if table is None:
    parts.append('<p>The run estimated no influence (estimate.infl and '
                 'estimate.infl_topk were off).</p>')
  else:
    shown = (f' (the first {table_rows} below; all in export_pairs\' '
             'pairs.csv)' if num_pairs > table_rows else '')
    parts.append(f'<p>{num_pairs} pairs with infl &ge; {infl_threshold} and '
                 f'mem &ge; {mem_threshold}, strongest first{shown}.' +
                 ('' if 'infl_stderr' in pair_columns(table) else
                  ' No infl_stderr: the run did not set '
                  'estimate.infl_stderr=True.') + '</p>')
    if caveat:
      parts.append(f'<p class="note">Note: {_e(caveat)}.</p>')
    if num_pairs:
      parts.append(_table(pair_columns(table), pair_rows(table, table_rows)))
      fig = export_pairs.grid_figure(run.dataset, table, grids)
      if fig is not None:  # --grids=0: none
        parts.append(_figure(fig, 'pairs.png', caption['pairs.png']))
  parts += experiment_parts(run.workdir, run.dataset.name,
                            run.estimates['mem'], caption)
  parts += privacy_parts(run.workdir, run.dataset.name, run.estimates['mem'])
  parts += ['<h2>Config</h2>',
            _table(None, sorted(config_lib.flatten(run.resolved).items()), True),
            '</body></html>\n']
  return '\n'.join(parts)


def write(path: str, page: str) -> str:
  return common.write_file(path, lambda f: f.write(page.encode('utf-8')),
                           'name another file with --out')


def define_flags():
  """Defined only when run as a script, like those of the modules it uses."""
  flags.DEFINE_string('workdir', None, 'A finished estimate run.',
                      required=True)
  flags.DEFINE_string('out', None, 'The HTML file (default '
                      'WORKDIR/report.html).')
  flags.DEFINE_float('infl_threshold', 0.15, 'Pairs: infl >= this.')
  flags.DEFINE_float('mem_threshold', None, 'Pairs: mem of the training '
                     "example >= this (default: the run's "
                     'summary.mem_threshold, the paper\'s 0.25).')
  flags.DEFINE_integer('grids', 8, 'Test images in the pair grid.',
                       lower_bound=0)
  flags.DEFINE_integer('table_rows', 20, 'Pairs listed in the table.',
                       lower_bound=1)


def main(argv):
  run = common.load_run_or_exit(argv, FLAGS.workdir)
  common.clear_if_idle(FLAGS.workdir)  # report.html's killed writes
  mem_threshold = (common.mem_threshold(run) if FLAGS.mem_threshold is None
                   else FLAGS.mem_threshold)
  page = build(run, FLAGS.infl_threshold, mem_threshold, FLAGS.grids,
               FLAGS.table_rows)
  path = FLAGS.out or store.Workdir(FLAGS.workdir).analysis('report.html')
  write(path, page)
  print(f'wrote {path}')


def run():
  """The command (python -m feldman_zhang.analysis.report)."""
  common.run_command(define_flags, main)


if __name__ == '__main__':
  run()
