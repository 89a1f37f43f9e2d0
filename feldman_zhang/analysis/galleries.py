r"""Figures of a finished run's memorization estimates.

  python -m feldman_zhang.analysis.galleries --workdir=runs/digits

Writes under --out (default WORKDIR/figures):

  most_memorized.png    per class (rows), its most memorized training images
  mem_hist.png          histogram of mem (clean and noisy labels apart when
                        the run had label noise)
  heldout_acc_hist.png  distribution of the held-out accuracy
  mem_vs_heldout.png    mem against held-out accuracy, one dot per example
"""

import os

from absl import flags
import numpy as np

from feldman_zhang.analysis import commands
from feldman_zhang.analysis import outputs
from feldman_zhang.analysis import plots
from feldman_zhang.analysis import runs

FLAGS = flags.FLAGS

# Beyond this many points a scatter is a blot and a slow file: it draws a
# seeded sample (ImageNet has 1.28M examples).
MAX_SCATTER_POINTS = 100_000


def most_memorized_figure(ds, mem, per_class=10, max_classes=20):
  """Classes as rows, each row that class's training images by mem, highest
  first. Labels are the ones trained on (noisy ones flagged).

  ds: the run's Dataset; mem: (n,) float. Data sets of more than max_classes
  classes show the classes holding the most memorized examples.
  """
  classes = np.arange(ds.num_classes)
  if len(classes) > max_classes:
    best = np.array([mem[ds.y_train == c].max(initial=-np.inf)
                     for c in classes])
    classes = np.sort(np.argsort(-best, kind='stable')[:max_classes])
  fig = plots.new_figure(1.1 * per_class + 0.6, 1.35 * len(classes))
  axes = fig.subplots(len(classes), per_class, squeeze=False)
  for row, c in zip(axes, classes):
    members = np.flatnonzero(ds.y_train == c)
    top = members[np.argsort(-mem[members], kind='stable')][:per_class]
    for ax in row:
      ax.set_axis_off()
    for ax, i in zip(row, top):
      ax.set_axis_on()
      noisy = ds.corrupted is not None and ds.corrupted[i]
      plots.show_image(ax, ds.x_train[i],
                       f'{i}: mem {mem[i]:.2f}' + (' *' if noisy else ''),
                       'tab:red' if noisy else 'black')
    row[0].set_ylabel(f'class {c}', fontsize=8)
  title = 'most memorized training examples per class'
  if ds.corrupted is not None:
    title += ' (* and red: noisy label)'
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return fig


def mem_histogram_figure(mem, threshold=0.25, corrupted=None):
  """mem: (n,); corrupted: (n,) bool, noisy labels, stacked apart if given."""
  fig = plots.new_figure(5, 3.5)
  ax = fig.subplots()
  bins = np.linspace(min(-0.1, float(mem.min())), 1.0, 45)
  if corrupted is None:
    ax.hist(mem, bins=bins, color='tab:blue')
  else:
    ax.hist([mem[~corrupted], mem[corrupted]], bins=bins, stacked=True,
            color=['tab:blue', 'tab:red'],
            label=[f'clean ({int((~corrupted).sum())})',
                   f'noisy label ({int(corrupted.sum())})'])
    ax.legend(fontsize=8)
  ax.axvline(threshold, color='black', ls='--', lw=1)
  ax.set_yscale('log')
  ax.set_xlabel('memorization estimate mem')
  ax.set_ylabel('training examples')
  ax.set_title(f'{int((mem >= threshold).sum())} of {len(mem)} with mem >= '
               f'{threshold}', fontsize=9)
  fig.tight_layout()
  return fig


def heldout_histogram_figure(heldout_acc):
  """heldout_acc: (n,), accuracy on each example of models not trained on it."""
  fig = plots.new_figure(5, 3.5)
  ax = fig.subplots()
  ax.hist(heldout_acc, bins=np.linspace(0, 1, 41), color='tab:green')
  ax.set_yscale('log')
  ax.set_xlabel('held-out accuracy (models not trained on the example)')
  ax.set_ylabel('training examples')
  ax.set_title(f'median {np.median(heldout_acc):.3f}', fontsize=9)
  fig.tight_layout()
  return fig


def cscore_figure(ds, est, lowest=10):
  """The C-scores (ratios.py): their histogram, the held-out accuracy of
  each subset ratio (mean over examples), and the lowest-C-score training
  images. est: estimates with cscore (n,), subset_ratios (R,) and
  heldout_acc_by_ratio (R, n)."""
  score, ratios = est['cscore'], est['subset_ratios']
  fig = plots.new_figure(max(8.0, 1.1 * lowest), 6)
  top = fig.subfigures(2, 1, height_ratios=(3, 2))
  ax_hist, ax_ratio = top[0].subplots(1, 2)
  ax_hist.hist(score[np.isfinite(score)], bins=np.linspace(0, 1, 41),
               color='tab:purple')
  ax_hist.set_yscale('log')
  ax_hist.set_xlabel('C-score (mean held-out accuracy over ratios)')
  ax_hist.set_ylabel('training examples')
  ax_ratio.plot(ratios, np.nanmean(est['heldout_acc_by_ratio'], axis=1),
                marker='o')
  ax_ratio.set_xlabel('subset ratio')
  ax_ratio.set_ylabel('mean held-out accuracy')
  order = np.argsort(np.where(np.isnan(score), np.inf, score),
                     kind='stable')[:lowest]
  axes = top[1].subplots(1, lowest, squeeze=False)[0]
  for ax in axes:
    ax.set_axis_off()
  for ax, i in zip(axes, order):
    ax.set_axis_on()
    plots.show_image(ax, ds.x_train[i], f'{i} ({int(ds.y_train[i])}): '
                     f'{score[i]:.2f}')
  top[1].suptitle('lowest C-scores: index (label): C-score', fontsize=9)
  return fig


def mem_vs_heldout_figure(mem, heldout_acc, seed=0):
  """One dot per training example; mem = in_acc - heldout_acc, so examples
  that models get right only when trained on them sit top left."""
  fig = plots.new_figure(4.5, 4)
  ax = fig.subplots()
  shown = np.arange(len(mem))
  if len(shown) > MAX_SCATTER_POINTS:
    shown = np.sort(np.random.default_rng(seed).choice(
        len(mem), MAX_SCATTER_POINTS, replace=False))
  ax.scatter(heldout_acc[shown], mem[shown], s=4, alpha=0.4, lw=0,
             rasterized=True)
  ax.set_xlabel('held-out accuracy')
  ax.set_ylabel('mem')
  ax.set_xlim(-0.02, 1.02)
  title = 'mem against held-out accuracy'
  if len(shown) < len(mem):
    title += f' ({len(shown)} of {len(mem)} examples)'
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  return fig


def figures(run: runs.Run, per_class=10) -> dict:
  """{file name: Figure} of every gallery of the run."""
  est, ds = run.estimates, run.dataset
  out = {
      'most_memorized.png': most_memorized_figure(ds, est['mem'], per_class),
      'mem_hist.png': mem_histogram_figure(
          est['mem'], runs.mem_threshold(run), ds.corrupted),
      'heldout_acc_hist.png': heldout_histogram_figure(est['heldout_acc']),
      'mem_vs_heldout.png': mem_vs_heldout_figure(est['mem'],
                                                  est['heldout_acc']),
  }
  if 'cscore' in est:
    out['cscores.png'] = cscore_figure(ds, est)
  return out


def define_flags():
  """Defined only when run as a script: the report imports this module
  (report_sections.py), and absl refuses a flag defined twice."""
  flags.DEFINE_string('workdir', None, 'A finished estimate run.',
                      required=True)
  flags.DEFINE_string('out', None, 'Output directory (default '
                      'WORKDIR/figures).')
  flags.DEFINE_integer('per_class', 10, 'Images per class in '
                       'most_memorized.png.', lower_bound=1)


def main(argv):
  run = runs.load_run_or_exit(argv, FLAGS.workdir)
  out = FLAGS.out or os.path.join(FLAGS.workdir, 'figures')
  figs = figures(run, FLAGS.per_class)
  with outputs.output_folder(out):
    paths = [plots.save_png(fig, os.path.join(out, name))
             for name, fig in figs.items()]
  print(f'wrote {", ".join(paths)}')


def run():
  """The command (python -m feldman_zhang.analysis.galleries)."""
  commands.run(define_flags, main)


if __name__ == '__main__':
  run()
