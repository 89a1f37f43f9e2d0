r"""Figures of the drop and lastlayer experiments of a finished run.

  python -m feldman_zhang.analysis.experiment_figures --workdir=runs/digits

Reads WORKDIR/drop/drop.csv and WORKDIR/lastlayer/estimates.npz (whichever
exist) and writes drop/drop.png (the paper's marginal-utility figure: test
accuracy after removing the highest-mem examples against as many random
ones) and lastlayer/mem_histograms.png (mem of the full network against the
last layer alone). The report embeds the same figures.
"""

import os
import sys

from absl import flags
import numpy as np

from feldman_zhang.analysis import commands
from feldman_zhang.analysis import outputs
from feldman_zhang.analysis import plots
from feldman_zhang.analysis import runs
from feldman_zhang.experiments import drop
from feldman_zhang.experiments import lastlayer

FLAGS = flags.FLAGS


def drop_figure(rows, name: str):
  """Test accuracy against the fraction removed, both arms, +- their SE;
  each point of the high-mem arm named by its theta, the title saying the
  models per arm (drop.csv's models_per_arm, where it has one)."""
  fig = plots.new_figure(5, 3.5)
  ax = fig.subplots()
  frac = [r['fraction_removed'] for r in rows]
  for key, label in (('acc_high_mem_removed', 'highest mem removed'),
                     ('acc_random_removed', 'random removed')):
    ax.errorbar(frac, [r[key] for r in rows],
                yerr=[r[key + '_se'] for r in rows], marker='o', capsize=3,
                label=label)
  for r in rows:
    ax.annotate(f'θ={r["theta"]:g}', (r['fraction_removed'],
                                      r['acc_high_mem_removed']),
                textcoords='offset points', xytext=(4, -10), fontsize=7)
  ax.set_xlabel('fraction of training set removed')
  ax.set_ylabel('test accuracy (+- standard error)')
  arms = {r.get('models_per_arm') for r in rows} - {None}
  per_arm = (f' ({arms.pop()} models per arm)' if len(arms) == 1 else
             ' (models per arm: ' + ', '.join(
                 str(r['models_per_arm']) for r in rows) + ')' if arms else '')
  ax.set_title(f'{name}: removing mem >= θ{per_arm}', fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def lastlayer_figure(full, last, name: str):
  """Histograms of mem: the full network against the last layer alone."""
  fig = plots.new_figure(5, 3.5)
  ax = fig.subplots()
  # mem lies in [-1, 1] but is rarely much below 0: the axis starts where
  # the data does, so the right half is not squeezed against an empty left.
  lo = min(-0.05, np.floor(20 * min(np.min(full), np.min(last))) / 20)
  bins = np.linspace(lo, 1, 41)
  ax.hist(full, bins, alpha=0.6, label='full network')
  ax.hist(last, bins, alpha=0.6, label='last layer only')
  ax.set_yscale('log')
  ax.set_xlabel('memorization estimate')
  ax.set_ylabel('training examples')
  ax.set_title(f'{name}: full network vs last layer')
  ax.legend()
  fig.tight_layout()
  return fig


def figures(run: runs.Run) -> dict:
  """{path under the workdir: Figure} of the experiments that exist."""
  out = {}
  rows = drop.read_table(run.workdir)
  if rows:
    out[os.path.join('drop', 'drop.png')] = drop_figure(rows,
                                                        run.dataset.name)
  last = lastlayer.read_head_mem(run.workdir)
  if last is not None:
    out[os.path.join('lastlayer', 'mem_histograms.png')] = lastlayer_figure(
        run.estimates['mem'], last, run.dataset.name)
  return out


def main(argv):
  run = runs.load_run_or_exit(argv, FLAGS.workdir)
  outputs.clear_if_idle(FLAGS.workdir)  # the figures' killed writes
  made = figures(run)
  if not made:
    sys.exit(f'error: {FLAGS.workdir} holds no drop or lastlayer results: run '
             'python -m feldman_zhang.main --mode=drop (or lastlayer) first')
  paths = [plots.save_png(fig, os.path.join(FLAGS.workdir, rel),
                          remedy=None)
           for rel, fig in made.items()]
  print(f'wrote {", ".join(paths)}')


def define_flags():
  flags.DEFINE_string('workdir', None, 'A finished run with experiments.',
                      required=True)


def run():
  """The command (python -m feldman_zhang.analysis.experiment_figures)."""
  commands.run(define_flags, main)


if __name__ == '__main__':
  run()
