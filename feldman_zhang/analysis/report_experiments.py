"""The report's sections from what other commands wrote into the run's
folder (report.py sequences them): the drop and lastlayer experiments, and
the privacy analyses, membership inference and the LDS of the influence.
Each shows only where its command has run.
"""

from feldman_zhang.analysis import experiment_figures
from feldman_zhang.analysis import lds as lds_lib
from feldman_zhang.analysis import membership
from feldman_zhang.analysis import report_html
from feldman_zhang.experiments import drop
from feldman_zhang.experiments import lastlayer


def experiment_parts(workdir, name: str = '', mem=None,
                     caption: dict | None = None) -> list:
  """The drop and lastlayer experiments' results, where they exist, with
  their figures (analysis.experiment_figures); mem: the run's, for the
  lastlayer histograms; caption: report_sections.captions() of the run."""
  parts, caption = [], caption or {}
  rows = drop.read_table(workdir)
  if rows:
    parts += ['<h2>Drop experiment</h2>',
              '<p class="note">Mean test accuracy of models retrained '
              'without the examples of mem &ge; &theta;, and without as '
              'many random ones, &plusmn; its standard error over the '
              'models.</p>',
              report_html.table(*drop_table(rows)),
              report_html.figure(experiment_figures.drop_figure(rows, name),
                                 'drop.png', caption.get('drop.png', ''))]
  c = lastlayer.read_comparison(workdir)
  if c is not None:
    parts += ['<h2>Last layer only</h2>',
              report_html.table(*lastlayer_table(c))]
    last = lastlayer.read_head_mem(workdir)
    if last is not None and mem is not None:
      parts.append(report_html.figure(
          experiment_figures.lastlayer_figure(mem, last, name),
          'mem_histograms.png', caption.get('mem_histograms.png', '')))
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
              report_html.table(['attack', 'AUC', 'balanced accuracy',
                                 'TPR at 1% FPR', 'TPR at 0.1%',
                                 'TPR at 0.01%'], rows)]
    if mem is not None and 'tpr' in per:
      parts.append(report_html.figure(
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
              f'test margins of {doc["models_b"]} models of '
              f'{report_html.escape(str(doc["eval"]))}'
              ' (Spearman over those models, mean over test examples).</p>',
              report_html.table(['score', 'LDS [95% interval]',
                                 'test examples left out'], rows),
              report_html.figure(lds_lib.curve_figure(doc, name),
                                 'lds_curve.png',
                                 'The LDS of the influence estimated from '
                                 'the first t/8, t/4, t/2 and t models: a '
                                 'curve still rising means more models '
                                 'would still help.')]
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
