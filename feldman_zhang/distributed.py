"""Many processes (hosts) sharing one workdir.

Each process trains its own share of the models on its local devices and
writes its own chunks; nothing but barriers crosses hosts, so a slow or
restarted host never corrupts another's results.
"""

import jax
from absl import logging


def initialize(coordinator: str = '', num_processes: int = 0,
               process_id: int = -1) -> None:
  """jax.distributed.initialize, auto-detected (SLURM, TPU pods) or explicit."""
  kwargs = {}
  if coordinator:
    kwargs = dict(coordinator_address=coordinator, num_processes=num_processes,
                  process_id=process_id)
  jax.distributed.initialize(**kwargs)
  logging.info('process %d of %d, %d local devices, %d in all',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def barrier(name: str) -> None:
  """Waits for every process; a no-op in a single-process run."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def is_leader() -> bool:
  return jax.process_index() == 0
