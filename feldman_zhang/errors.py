"""The errors a user can cause and fix: each ends a command as one line.

Every command catches `UserError` alone (cli.errors_as_lines, the analysis
commands); anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
  """A command that cannot run as given; the message says what to change."""


class ConfigError(UserError):
  """A config that cannot run; the message names the field."""


class DataError(UserError):
  """A data set that cannot be read or is unusable; the message says why."""


class StoreError(UserError):
  """A workdir whose contents cannot be used; the message names the file."""


class IdentityError(StoreError):
  """A workdir made by a run with other settings; diffs names the fields."""

  def __init__(self, workdir, diffs, values=None):
    values = values or {}
    named = [f'{k} (stored {values[k][0]!r}, given {values[k][1]!r})'
             if k in values else k for k in diffs]
    super().__init__(f'{workdir} holds a run with other settings: '
                     f'{", ".join(named)} differ; use a new --workdir or the '
                     'old settings')
    self.diffs = diffs


class TrainingError(UserError):
  """Training that gave no usable model (every loss non-finite)."""


USER_ERRORS = (UserError,)
