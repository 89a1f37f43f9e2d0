"""Which models each call trains, and what each model is made of.

The models a run still lacks are planned on a fixed grid of cells of K x D
models (K per device, D devices), dealt round-robin over processes, and a
model's key and subset come from (seed, subset_stream, model id) alone
(streams.py holds every tag). So a model always trains at the same place of
the same program, whichever process, device or attempt trains it, and a
resumed run recomputes a lost model bit for bit.
"""

import numpy as np

from feldman_zhang import distributed
from feldman_zhang import streams
from feldman_zhang import subsets
from feldman_zhang import train
from feldman_zhang.errors import ConfigError


def models_per_call(config) -> tuple[int, int]:
  """(K, D): models per device and local devices. K never exceeds t."""
  try:
    d = distributed.devices_per_process()
  except ValueError as e:
    raise ConfigError(str(e)) from e
  return min(config.models_per_device, config.num_models), d


def plan_cells(have, cell: int, process_index: int = 0,
               process_count: int = 1) -> list[tuple[int, np.ndarray]]:
  """The cells of `cell` consecutive models that this process must train.

  have: (t,) bool, the models stored. Cells sit on a fixed grid (0, cell,
  2 cell, ...), dealt round-robin over processes.
  Returns [(start, missing ids)] for cells with any model missing.
  """
  out = []
  for c, start in enumerate(range(0, len(have), cell)):
    missing = start + np.flatnonzero(~have[start:start + cell])
    if c % process_count == process_index and len(missing):
      out.append((start, missing))
  return out


def consecutive_runs(ids) -> list[np.ndarray]:
  """Sorted ids -> list of arrays of consecutive ids."""
  return np.split(ids, np.flatnonzero(np.diff(ids) != 1) + 1)


def model_inputs(config, num_train: int, m: int, ids):
  """(keys (K,), idx (K, m) int32) of models `ids`: what a model is made of
  besides the data, from (seed, subset_stream, model id) alone (and t, in
  a balanced design)."""
  s = config.subset_stream
  keys = train.model_keys(config.seed, ids,
                          stream=streams.model_key_stream(s))
  if config.subset_design == 'balanced':
    return keys, subsets.balanced(config.seed, num_train, m,
                                  config.num_models, ids, stream=s)
  return keys, subsets.indices(config.seed, num_train, m, ids, stream=s)


def cell_calls(config, num_train: int, m: int, cells, size: int):
  """The job's calls, (start, keys, idx) per cell: each cell of the grid
  whole (the padding past num_models too, so every call has one shape and
  compiles once)."""
  for begin, _ in cells:
    yield (begin, *model_inputs(config, num_train, m,
                                np.arange(begin, begin + size)))
