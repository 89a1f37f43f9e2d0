"""Many processes (hosts) sharing one workdir.

Each process trains its own share of the models on its local devices and
writes its own chunks; nothing but barriers crosses hosts, so a slow or
restarted host never corrupts another's results.
"""

import collections

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


def devices_per_process() -> int:
  """The local device count, the same in every process, or ValueError.

  Cells of models are K x this many wide and dealt out by their place on
  one grid: processes with other counts would lay out other grids, train
  some models twice and others never. Every process sees the global device
  list, so all of them refuse alike.
  """
  counts = collections.Counter(d.process_index for d in jax.devices())
  if len(set(counts.values())) > 1:
    raise ValueError('processes have different numbers of devices '
                     f'({dict(sorted(counts.items()))} by process); give '
                     'every process the same number')
  return jax.local_device_count()
