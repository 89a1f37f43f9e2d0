"""The report's sections from the run's own files (report.py sequences
them): its caveats and headline numbers, convergence, the memorization
galleries and C-scores, and the high-influence pairs.
"""

import numpy as np

from feldman_zhang import diagnostics
from feldman_zhang import summary as summary_lib
from feldman_zhang.analysis import export_pairs
from feldman_zhang.analysis import galleries
from feldman_zhang.analysis import report_html
from feldman_zhang.analysis import runs


def captions(run: runs.Run) -> dict:
  """{figure name: the sentence under it in the report}."""
  noisy = ' (red, *: a noisy label)' if run.dataset.corrupted is not None \
      else ''
  return {
      'most_memorized.png': 'Each row is one class: its training images '
                            f'of highest mem, highest first{noisy}.',
      'mem_hist.png': 'How many training examples have each memorization '
                      'estimate; the dashed line is the bar for memorized '
                      f'(mem >= {runs.mem_threshold(run):g}).',
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


def headline(run: runs.Run, num_pairs) -> list:
  """[(name, value)]: the run's accuracy and the counts worth a glance.

  num_pairs: pairs selected, or None if the run has no influence estimates.
  """
  s, est = run.summary or {}, run.estimates
  threshold = runs.mem_threshold(run)
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
               f'{diagnostics.median_stderr(est):.4f} (held-out accuracy in '
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


def run_caveats(run: runs.Run) -> list[str]:
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


def convergence_parts(summary) -> list:
  """The convergence table, if the summary has one."""
  rows = convergence_rows(summary)
  if not rows:
    return []
  return ['<h2>Convergence</h2>',
          '<p class="note">mem from the first models against mem from '
          'all of them.</p>',
          report_html.table(('models', 'mean |change|', 'max |change|',
                             'correlation', 'median stderr'), rows)]


def memorization_parts(run: runs.Run, caption: dict) -> list:
  """The galleries (analysis.galleries) and, where the run has them, the
  C-scores; caption: captions()."""
  figs = galleries.figures(run)
  # The class gallery is wide; the three plots sit side by side under it.
  parts = ['<h2>Memorization</h2>',
           report_html.figure(figs.pop('most_memorized.png'),
                              'most_memorized.png',
                              caption['most_memorized.png'])]
  cscores = figs.pop('cscores.png', None)
  parts.append('<div class="row">' + ''.join(
      report_html.figure(fig, name, caption[name])
      for name, fig in figs.items()) + '</div>')
  if cscores is None:
    return parts
  ratios = ', '.join(f'{r:g}' for r in run.estimates['subset_ratios'])
  parts += ['<h2>C-scores</h2>',
            '<p class="note">Per example, the mean over subset ratios '
            f'{report_html.escape(ratios)}'
            ' of the held-out accuracy of the models not trained on it '
            '(Jiang et al. 2021).</p>',
            report_html.figure(cscores, 'cscores.png', caption['cscores.png'])]
  lowest = (run.summary or {}).get('cscore', {}).get('lowest')
  if lowest:
    parts.append(report_html.table(('train', 'label', 'C-score', 'mem'),
                                   [(r['train'], r['label'],
                                     f'{r["cscore"]:.3f}', f'{r["mem"]:.3f}')
                                    for r in lowest]))
  return parts


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


def pair_parts(ds, table, caveat, infl_threshold, mem_threshold, grids,
               table_rows, caption: dict) -> list:
  """The selected pairs: a sentence, the first table_rows of them and a
  grid of the first `grids` test images.

  ds: the run's data set; table: export_pairs.with_labels' table, or None
  where the run has no influence estimates; caveat: export_pairs.topk_caveat.
  """
  parts = ['<h2>High-influence pairs</h2>']
  if table is None:
    return parts + ['<p>The run estimated no influence (estimate.infl and '
                    'estimate.infl_topk were off).</p>']
  num_pairs = len(table['tr_idx'])
  shown = (f' (the first {table_rows} below; all in export_pairs\' '
           'pairs.csv)' if num_pairs > table_rows else '')
  parts.append(f'<p>{num_pairs} pairs with infl &ge; {infl_threshold} and '
               f'mem &ge; {mem_threshold}, strongest first{shown}.' +
               ('' if 'infl_stderr' in pair_columns(table) else
                ' No infl_stderr: the run did not set '
                'estimate.infl_stderr=True.') + '</p>')
  if caveat:
    parts.append(f'<p class="note">Note: {report_html.escape(caveat)}.</p>')
  if num_pairs:
    parts.append(report_html.table(pair_columns(table),
                                   pair_rows(table, table_rows)))
    fig = export_pairs.grid_figure(ds, table, grids)
    if fig is not None:  # --grids=0: none
      parts.append(report_html.figure(fig, 'pairs.png', caption['pairs.png']))
  return parts
