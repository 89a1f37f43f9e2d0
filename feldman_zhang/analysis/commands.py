"""What every analysis command's main runs inside: errors a user can cause
end as one line and a non-zero exit."""

import functools
import logging
import sys

from absl import app

from feldman_zhang import errors


def command(main):
  """An analysis command's main, as `run` hands it to app.run: what a user
  can cause ends as one line and a non-zero exit -- a UserError (a damaged
  or unfinished run, an output that cannot be written), any other OSError
  (named by its path), and Ctrl-C ('interrupted', exit 130). Every write is
  atomic, so none of these leaves a torn or temporary file. Anything else
  is a bug and keeps its traceback."""
  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except errors.USER_ERRORS as e:
      sys.exit(f'error: {e}')
    except OSError as e:
      where = f' ({e.filename})' if e.filename else ''
      sys.exit(f'error: {e.strerror or e}{where}')
    except KeyboardInterrupt:
      print('interrupted', file=sys.stderr)
      sys.exit(130)
  return wrapped


def run(define_flags, main) -> None:
  """Defines a command's flags and runs its main through `command`."""
  define_flags()
  # JAX logs its probe for a TPU on every CPU host: not the user's concern.
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  app.run(command(main))
