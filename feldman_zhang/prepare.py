"""Where a job's config becomes concrete: the data, the resolved config,
m and the model, checked before the workdir is touched.

`prepare(config)` loads the data, resolves the config once (resolve.resolve:
every 'auto' made concrete for this backend and this data's size), builds
the model, and refuses in one line what cannot run: subsets that hold none
or all of the data, batches larger than a subset, training of no step, a
model that cannot take the data's shape, and requests that cannot fit host
or device memory. Every later step reads `Prepared.config`; the config as
given travels beside it only to be recorded.
"""

import math
import os
from typing import NamedTuple

import flax.linen as nn
import jax
import ml_collections

from feldman_zhang import data as data_lib
from feldman_zhang import errors
from feldman_zhang import models
from feldman_zhang import optimizer
from feldman_zhang import precision
from feldman_zhang import resolve
from feldman_zhang import subsets
from feldman_zhang import units
from feldman_zhang.dataset import Dataset


class Prepared(NamedTuple):
  config: ml_collections.FrozenConfigDict  # resolved: what the job reads
  given: ml_collections.ConfigDict         # as given: what it records too
  ds: Dataset
  m: int                                   # subset size
  model: nn.Module


def create_model(config, num_classes: int) -> nn.Module:
  """The model of a resolved config, computing in train.compute_dtype."""
  try:
    return models.create(config.model, num_classes,
                         precision.compute_dtype(config.train.compute_dtype))
  except ValueError as e:
    raise errors.ConfigError(str(e)) from e


def prepare(config, recorded: dict | None = None) -> Prepared:
  """Loads the data, resolves config for it and builds the model;
  ConfigError or DataError in one line for what cannot run.

  recorded: the identity config of the models a workdir already stores
  (identity.recorded_config), which an auto param_storage keeps.
  """
  resolve.validate(config)
  ds = data_lib.from_config(config)
  given, config = config, resolve.resolve(
      config, recorded=recorded, sizes=(ds.num_train, ds.num_test))
  for ratio in (config.subset_ratio, *config.subset_ratios):
    m = subsets.subset_size(ds.num_train, ratio)
    if not 0 < m < ds.num_train:
      raise errors.ConfigError(
          f'subset_ratio={ratio} gives subsets of {m} of {ds.num_train} '
          'examples; each subset must hold some but not all')
    if config.train.batch_size > m:
      raise errors.ConfigError(
          f'train.batch_size={config.train.batch_size} exceeds the subsets\' '
          f'm={m} examples')
    check_steps(config.train, m)
  m = subsets.subset_size(ds.num_train, config.subset_ratio)
  if (config.subset_design == 'balanced' and
      config.num_models * m > subsets.MAX_BALANCED_ENTRIES):
    raise errors.ConfigError(
        f'subset_design=balanced draws all {config.num_models:,} x {m:,} '
        f'indices at once ({units.human_bytes(4 * config.num_models * m)}); '
        'use subset_design=random for runs this large')
  need = config.num_models * (2 * ds.num_train + ds.num_test)
  have = _host_bytes()
  if need > have:
    # The estimate holds every model's masks and correctness as bytes.
    raise errors.ConfigError(
        f'num_models={config.num_models:,} needs about '
        f'{units.human_bytes(need)} of host memory for the predictions of '
        f'{ds.num_train:,} + {ds.num_test:,} examples; this machine has '
        f'{units.human_bytes(have)}')
  model = create_model(config, ds.num_classes)
  shape = getattr(model, 'input_shape', None)
  if shape and tuple(ds.x_train.shape[1:]) != shape:
    raise errors.ConfigError(
        f'model.name={config.model.name} takes images of shape {shape}, not '
        f'{ds.name}\'s {tuple(ds.x_train.shape[1:])}')
  _check_device_memory(config, ds, _param_count(config, ds, model))
  return Prepared(ml_collections.FrozenConfigDict(config), given, ds, m, model)


def check_steps(train_config, m: int, field: str = 'train') -> None:
  """Refuses training of no step on subsets of m examples (an epochs so
  small that its steps round to zero): its models would be their random
  initializations, and every estimate noise. field: where train_config
  comes from, for the message ('lastlayer' for the heads)."""
  steps, total = optimizer.step_counts(m, train_config)
  if total < 1:
    raise errors.ConfigError(
        f'{field}.epochs={train_config.epochs:g} trains no step on subsets '
        f'of m={m} examples ({steps} steps an epoch at batch size '
        f'{train_config.batch_size}); {field}.epochs must be at least '
        f'{1 / steps:.2g}')


def derived(given, config, ds, m: int, model) -> Prepared:
  """A job built on another's checked data and model (the C-score's other
  ratios, the last layer's heads): given as recorded, config made from the
  parent's resolved one, resolved for ds's size. No check repeats."""
  resolved = resolve.resolve(config, sizes=(ds.num_train, ds.num_test))
  return Prepared(ml_collections.FrozenConfigDict(resolved), given, ds, m,
                  model)


def _param_count(config, ds, model) -> int:
  """Traces the model on one example (not run): a model that cannot take
  this data's shape, or gives logits of another shape, fails here, before
  the workdir is touched. Returns its number of parameters."""
  def logits(key, x):
    params, state = models.init(model, key, x)
    return models.apply(model, params, state, x, train=False)[0], params
  want = (1, ds.num_classes)
  try:
    out, params = jax.eval_shape(logits, jax.random.key(0), ds.x_train[:1])
    if out.shape != want:
      raise ValueError(f'logits of shape {out.shape}, not {want}')
  except Exception as e:  # pylint: disable=broad-except
    # Flax and XLA raise many types for a shape they cannot take.
    raise errors.ConfigError(
        f'model.name={config.model.name} cannot take {ds.name}\'s inputs '
        f'{ds.x_train.shape[1:]}: {str(e).splitlines()[0]}') from e
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def _check_device_memory(config, ds, params: int):
  """Refuses a call of models_per_device models that cannot fit a device.

  A floor, not an estimate: each model holds at least its f32 parameters,
  momentum, gradient and update (16 bytes a parameter) and its chunk's
  outputs (5 bytes an example), besides the data set once; activations
  come on top.
  """
  k = min(config.models_per_device, config.num_models)
  need = (k * (16 * params + 5 * (ds.num_train + ds.num_test)) +
          ds.x_train.nbytes + ds.x_test.nbytes)
  device = jax.local_devices()[0]
  limit = (device.memory_stats() or {}).get('bytes_limit') if hasattr(
      device, 'memory_stats') else None
  limit = limit or _host_bytes()
  if need > limit:
    raise errors.ConfigError(
        f'models_per_device={k:,} needs at least {units.human_bytes(need)} '
        f'on a device ({params:,} parameters a model); {device.platform} '
        f'device 0 has {units.human_bytes(limit)}: lower models_per_device')


def _host_bytes() -> int:
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
