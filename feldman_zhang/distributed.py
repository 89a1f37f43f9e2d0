"""Many processes (hosts) sharing one workdir, and the devices of each.

Each process trains its own share of the models on its local devices and
writes its own chunks; nothing but barriers crosses hosts, so a slow or
restarted host never corrupts another's results. Within a process, a 1-D
mesh over its devices (MODELS_AXIS) splits the models and copies the data.
"""

import collections

import jax
import numpy as np
from absl import logging
from jax.sharding import PartitionSpec as P


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


MODELS_AXIS = 'models'


def local_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over this process's devices: models are split, data copied."""
  return jax.sharding.Mesh(np.array(jax.local_devices()), (MODELS_AXIS,))


def models_sharding(mesh) -> jax.sharding.NamedSharding:
  """Per-model arrays: split along their first axis over the mesh."""
  return jax.sharding.NamedSharding(mesh, P(MODELS_AXIS))


def put_models(mesh, *arrays):
  """Places per-model arrays split along their first axis over the mesh."""
  return [jax.device_put(a, models_sharding(mesh)) for a in arrays]


def put_replicated(mesh, *arrays):
  """Places the data set on every device of the mesh, once."""
  sharding = jax.sharding.NamedSharding(mesh, P())
  return [jax.device_put(a, sharding) for a in arrays]
