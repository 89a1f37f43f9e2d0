"""What the job's command does around the library: config mistakes as
one-line errors, JAX's compilation cache, and SIGINT/SIGTERM that stop at
the training loop's next safe point. main.py holds the flags and the call.
"""

import contextlib
import logging as std_logging
import os
import signal
import sys
import tempfile

from absl import flags
from absl import logging
import jax

from feldman_zhang import config as config_lib
from feldman_zhang import runner
from feldman_zhang.errors import USER_ERRORS

FLAGS = flags.FLAGS

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


def interrupted(workdir: str) -> str:
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
      print(f'{name} again: exiting at once. {interrupted(workdir)}',
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


def quiet_library_logs() -> None:
  """INFO from the job; the libraries' chatter that is no user's concern
  filtered out."""
  logging.set_verbosity(logging.INFO)
  # orbax logs each checkpoint's steps at INFO: 30 lines of a lastlayer run.
  logging.get_absl_logger().addFilter(
      lambda r: r.levelno >= std_logging.WARNING or '/orbax/' not in r.pathname)
  # JAX probes for a TPU on every CPU run, and TFDS warns of folders it
  # looks for: neither is the user's concern.
  std_logging.getLogger('jax._src.xla_bridge').setLevel(std_logging.WARNING)
  std_logging.getLogger('absl').addFilter(
      lambda r: 'Unable to initialize backend' not in r.getMessage())


@contextlib.contextmanager
def errors_as_lines(workdir: str):
  """Ends the command in one line (and a non-zero exit) for what a user can
  cause or meet: a UserError, an interruption, a full or unwritable disk,
  exhausted host memory. Anything else is a bug and keeps its traceback."""
  try:
    yield
  except USER_ERRORS as e:
    sys.exit(f'error: {e}')
  except KeyboardInterrupt as e:
    # Chunks are written whole or not at all: what was stored stays.
    print(interrupted(workdir), file=sys.stderr)
    sys.exit(128 + (e.signum if isinstance(e, runner.Interrupted) else
                    signal.SIGINT))
  except OSError as e:  # a full disk, a read-only or vanished workdir
    where = f' ({e.filename})' if e.filename else ''
    sys.exit(f'error: {e.strerror or e}{where}; finished results in '
             f'{workdir} are kept')
  except MemoryError:
    sys.exit('error: out of host memory; lower models_per_device or '
             'num_models')
