r"""Runs an experiment config.

  python -m feldman_zhang.main --config=configs/digits_mlp.py --workdir=runs/digits
  python -m feldman_zhang.main --config=configs/digits_mlp.py \
      --config.num_models=200 --config.data.source=npz:my.npz --workdir=runs/x

Several hosts share one workdir: start the same command on each with
--distributed (SLURM, TPU pods) or --coordinator_address/--num_processes/
--process_id.
"""

import os

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from feldman_zhang import cli
from feldman_zhang import distributed
from feldman_zhang.experiments import drop
from feldman_zhang.experiments import lastlayer
from feldman_zhang import pipeline

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory of the run (resumed if it '
                    'exists).')
flags.DEFINE_enum('mode', 'estimate', ['estimate', 'drop', 'lastlayer'],
                  'estimate: train the subset models and estimate mem/infl. '
                  'drop, lastlayer: the experiments, on a finished estimate '
                  'run in --workdir.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() '
                  '(auto-detects SLURM and TPU pods).')
flags.DEFINE_string('coordinator_address', '', 'host:port of process 0, for '
                    'an explicit multi-process run (implies --distributed).')
flags.DEFINE_integer('num_processes', 1, 'With --coordinator_address.')
flags.DEFINE_integer('process_id', 0, 'With --coordinator_address.')
flags.DEFINE_string('compilation_cache', '~/.cache/feldman_zhang/jax',
                    "JAX's persistent compilation cache: a rerun, resume or "
                    'experiment skips compiling (what it saves: BENCHMARKS.md). '
                    "'' turns it off; JAX_COMPILATION_CACHE_DIR, if set, "
                    'wins.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_library_logs()
  cli.use_compilation_cache(FLAGS.compilation_cache)
  if FLAGS.distributed or FLAGS.coordinator_address:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id)
  cli.stop_on_signals(FLAGS.workdir)
  with cli.errors_as_lines(FLAGS.workdir):
    if FLAGS.mode == 'estimate':
      summary = pipeline.run(FLAGS.config, FLAGS.workdir)
      where = 'estimates.npz, summary.json, chunks/'
    elif FLAGS.mode == 'drop':
      summary = drop.drop(FLAGS.config, FLAGS.workdir)
      where = ('drop/ (drop.csv, one npz per threshold; the figure: python '
               '-m feldman_zhang.analysis.experiment_figures '
               f'--workdir={FLAGS.workdir})')
    else:
      summary = lastlayer.lastlayer(FLAGS.config, FLAGS.workdir,
                                    job=pipeline.run_on)
      where = ('lastlayer/ (its estimates, comparison.json; the histograms: '
               'python -m feldman_zhang.analysis.experiment_figures '
               f'--workdir={FLAGS.workdir})')
    if summary is not None and jax.process_index() == 0:
      print(f'results: {os.path.abspath(FLAGS.workdir)}/ {where}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
