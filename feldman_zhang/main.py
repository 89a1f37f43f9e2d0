r"""Runs an experiment config.

  python -m feldman_zhang.main --config=configs/digits_mlp.py --workdir=runs/digits
  python -m feldman_zhang.main --config=configs/digits_mlp.py \
      --config.num_models=200 --config.data.source=npz:my.npz --workdir=runs/x

Several hosts share one workdir: start the same command on each with
--distributed (SLURM, TPU pods) or --coordinator_address/--num_processes/
--process_id.
"""

import logging as std_logging
import os
import signal
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from feldman_zhang import config as config_lib
from feldman_zhang import distributed
from feldman_zhang.experiments import drop
from feldman_zhang.experiments import lastlayer
from feldman_zhang import pipeline
from feldman_zhang import runner
from feldman_zhang.errors import USER_ERRORS

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


_HELP = ('--help', '-help', '-h', '-?', '--helpshort', '--helpfull')


def parse_flags(argv):
  """absl's parser, with config-override mistakes as one-line errors."""
  if any(a in _HELP for a in argv[1:]):
    print(FLAGS.get_help() if '--helpfull' in argv else
          FLAGS.main_module_help())
    print('\nAny config field is a flag too: --config.FIELD=VALUE, e.g. '
          '--config.num_models=64 --config.train.lr=0.05 (the fields and '
          'their meaning: feldman_zhang/config.py and the README).')
    sys.exit(0)
  path = _config_path(argv)
  if path is not None:
    _check_config_file(*path)
  try:
    argv = FLAGS(argv)
  except flags.Error as e:
    # A config file's own exception arrives with its traceback: keep the
    # flag's line and the exception's.
    lines = [line for line in str(e).splitlines() if line.strip()]
    sys.exit(f'error: {lines[0]} {lines[-1].strip()}' if len(lines) > 1 else
             f'error: {e}')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these for an unknown field or a value of the
    # wrong type, with the field in the message.
    message = str(e).replace('\\n', ' ').replace('\\', '').replace("'", '')
    message = ' '.join(message.split())
    if isinstance(e, (AttributeError, KeyError)):
      field, _, guess = message.partition(' Did you mean ')
      field = field.strip().strip('"')
      # ml_collections names the last part only: show the whole override.
      named = [a.split('=')[0] for a in argv if a.startswith('--config.') and
               a.split('=')[0].split('.')[-1] == field]
      field = named[0] if named else f'--config.{field}'
      sys.exit(f'error: unknown config field {field}' +
               (f'; did you mean {guess.rstrip("?").split()[0]}?' if guess
                else ''))
    sys.exit(f'error: bad --config override: {message}')
  try:
    # ml_collections defers a config file's failure to the first use.
    FLAGS.config.to_dict()
  except Exception as e:  # pylint: disable=broad-except
    cause = e.__cause__ or e  # the file's own error, not the deferral's
    message = ' '.join(str(cause).split())
    sys.exit(f'error: cannot load --config: {type(cause).__name__}: {message}')
  return argv


def _config_path(argv):
  """(file, arg) of the --config that counts (the last, as absl reads it;
  arg: what follows a ':', '' if nothing), or None."""
  found = None
  for i, a in enumerate(argv[1:], 1):
    if a.startswith('--config='):
      value = a.split('=', 1)[1]
    elif a == '--config' and i + 1 < len(argv):
      value = argv[i + 1]
    else:
      continue
    found = tuple(value.split(':', 1)) + ('',) if value else None
  return found[:2] if found else None


def _check_config_file(path: str, arg: str) -> None:
  """Runs the config file's get_config once, before absl does: its errors
  (a syntax error, a failed import, no get_config) end the command in one
  line naming the file, not in absl's traceback or as an unknown field."""
  if not os.path.isfile(path):
    sys.exit(f'error: --config file {path} does not exist')
  try:
    config_lib.from_file(path, arg)
  except AttributeError as e:
    if "no attribute 'get_config'" not in str(e):
      _config_error(path, e)
    sys.exit(f'error: cannot load --config {path}: it has no get_config() '
             '(a config file defines get_config() returning a ConfigDict; '
             'see configs/)')
  except Exception as e:  # pylint: disable=broad-except
    # The user's code: any error it raises is theirs to fix.
    _config_error(path, e)


def _config_error(path, e):
  message = ' '.join(str(e).split())
  sys.exit(f'error: cannot load --config {path}: {type(e).__name__}: '
           f'{message}')


def use_compilation_cache(path: str) -> None:
  """JAX's persistent compilation cache in path ('' for none), unless
  JAX_COMPILATION_CACHE_DIR names one; every program is cached either way."""
  if not jax.config.jax_compilation_cache_dir:
    if not path:
      return
    path = os.path.expanduser(path)
    try:
      os.makedirs(path, exist_ok=True)
      tempfile.TemporaryFile(dir=path).close()  # JAX warns per program
    except OSError as e:  # a read-only home: compile every time, as before
      logging.warning('no compilation cache at %s: %s', path, e)
      return
    jax.config.update('jax_compilation_cache_dir', path)
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    # The estimate's and summary's programs each compile in under JAX's
    # default 1 s, but they are many (BENCHMARKS.md).
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)


def _interrupted(workdir: str) -> str:
  return (f'interrupted: the models stored in {workdir} are kept; '
          're-running the same command resumes')


def stop_on_signals(workdir: str) -> None:
  """SIGINT and SIGTERM end the job at the training loop's next safe point.

  The first signal asks runner.run to stop once the calls in flight are
  stored (it says how long that takes at most); the job then ends with
  runner.Interrupted. Outside the loop (loading, the estimate) nothing is
  worth waiting for: it ends at once. A second signal exits at once, as
  the default action would; chunks are written whole or not at all, so
  what was stored stays either way. A signal ignored when the job started
  (nohup, a background job's SIGINT) stays ignored.
  """
  received = []

  def handler(signum, frame):  # pylint: disable=unused-argument
    name = signal.Signals(signum).name
    if received:
      print(f'{name} again: exiting at once. {_interrupted(workdir)}',
            file=sys.stderr, flush=True)
      os._exit(128 + signum)  # pylint: disable=protected-access
    received.append(signum)
    wait = runner.request_stop(signum)
    if wait is None:
      raise runner.Interrupted(signum)
    print(f'{name}: stopping after {wait}, so that their models are '
          f'stored; {name} again exits at once', file=sys.stderr, flush=True)

  for signum in (signal.SIGINT, signal.SIGTERM):
    if signal.getsignal(signum) != signal.SIG_IGN:
      signal.signal(signum, handler)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  # orbax logs each checkpoint's steps at INFO: 30 lines of a lastlayer run.
  logging.get_absl_logger().addFilter(
      lambda r: r.levelno >= std_logging.WARNING or '/orbax/' not in r.pathname)
  # JAX probes for a TPU on every CPU run, and TFDS warns of folders it
  # looks for: neither is the user's concern.
  std_logging.getLogger('jax._src.xla_bridge').setLevel(std_logging.WARNING)
  std_logging.getLogger('absl').addFilter(
      lambda r: 'Unable to initialize backend' not in r.getMessage())
  use_compilation_cache(FLAGS.compilation_cache)
  if FLAGS.distributed or FLAGS.coordinator_address:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id)
  stop_on_signals(FLAGS.workdir)
  try:
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
  except USER_ERRORS as e:
    sys.exit(f'error: {e}')
  except KeyboardInterrupt as e:
    # Chunks are written whole or not at all: what was stored stays.
    print(_interrupted(FLAGS.workdir), file=sys.stderr)
    sys.exit(128 + (e.signum if isinstance(e, runner.Interrupted) else
                    signal.SIGINT))
  except OSError as e:  # a full disk, a read-only or vanished workdir
    where = f' ({e.filename})' if e.filename else ''
    sys.exit(f'error: {e.strerror or e}{where}; finished results in '
             f'{FLAGS.workdir} are kept')
  except MemoryError:
    sys.exit('error: out of host memory; lower models_per_device or '
             'num_models')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
