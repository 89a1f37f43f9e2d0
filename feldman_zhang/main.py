r"""Runs an experiment config.

  python -m feldman_zhang.main --config=configs/digits_mlp.py --workdir=runs/digits
  python -m feldman_zhang.main --config=configs/digits_mlp.py \
      --config.num_models=200 --config.data.source=npz:my.npz --workdir=runs/x
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from feldman_zhang import pipeline

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory of the run (resumed if it '
                    'exists).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  try:
    pipeline.run(FLAGS.config, FLAGS.workdir)
  except pipeline.USER_ERRORS as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
