"""What both experiments need of the estimate run they build on."""

import os

import jax

from feldman_zhang import errors
from feldman_zhang import estimates_file
from feldman_zhang import identity as identity_lib
from feldman_zhang import prepare as prepare_lib
from feldman_zhang import store


def need_estimates(workdir):
  if not os.path.exists(store.Workdir(workdir).estimates):
    raise errors.StoreError(f'{workdir} has no estimates.npz: run the estimate '
                            '(--mode=estimate) there first')


def finished_run(config, workdir) -> tuple[prepare_lib.Prepared, dict]:
  """(the job prepared as the estimate run in workdir prepared it, its
  estimates)."""
  if jax.process_count() > 1:
    # Both experiments train on one host's devices and write shared files.
    raise errors.ConfigError('the drop and lastlayer experiments run in '
                                 'one process: start them without '
                                 '--distributed')
  job = prepare_lib.prepare(config,
                            recorded=identity_lib.recorded_config(workdir))
  need_estimates(workdir)
  identity_lib.check_identity(workdir, identity_lib.identity(job.config,
                                                             job.ds))
  return job, estimates_file.load_estimates(workdir)
