"""What both experiments need of the estimate run they build on."""

import os

import jax

from feldman_zhang import config as config_lib
from feldman_zhang import prepare as prepare_lib
from feldman_zhang import resume
from feldman_zhang import store

DROP_STREAM = 1       # model-key streams (train.model_keys): never the
BACKBONE_STREAM = 2   # estimate's own models.


def need_estimates(workdir):
  if not os.path.exists(store.Workdir(workdir).estimates):
    raise store.StoreError(f'{workdir} has no estimates.npz: run the estimate '
                           '(--mode=estimate) there first')


def resolve(config, workdir):
  """The config resolved as the estimate run in workdir resolved it."""
  return config_lib.resolve(config, recorded=resume.recorded_config(workdir))


def finished_run(config, workdir):
  """(prepared, estimates) of the estimate run in workdir, for a resolved
  config."""
  if jax.process_count() > 1:
    # Both experiments train on one host's devices and write shared files.
    raise config_lib.ConfigError('the drop and lastlayer experiments run in '
                                 'one process: start them without '
                                 '--distributed')
  prepared = prepare_lib.prepare(config)
  need_estimates(workdir)
  resume.check_identity(workdir, resume.identity(config, prepared.ds))
  return prepared, store.load_estimates(workdir)
