"""What a job costs, known before it runs: XLA's FLOP count of one model's
training and evaluation, and the job's plan (work, disk, a time floor).

The job logs its plan and refuses what cannot fit on disk before it touches
the workdir (`plan`, `check_disk`); the bench prints the same counts beside
the rates it measures.
"""

import math
import os
import shutil
from typing import NamedTuple

import jax
import jax.numpy as jnp

from feldman_zhang import airbench
from feldman_zhang import evaluation
from feldman_zhang import models
from feldman_zhang import optimizer
from feldman_zhang import resolve
from feldman_zhang import schedule
from feldman_zhang import topk
from feldman_zhang import train
from feldman_zhang import units
from feldman_zhang.errors import StoreError


def count(model, config, ds, m, compile_fallback: bool = True) -> dict:
  """FLOP counts of one model's training and evaluation.

  FLOPs come from XLA's cost analysis of one evaluation batch and of one
  whole training step (forward, backward, optimizer), taken before
  compilation: on GPUs the compiled module hands convolutions to cuDNN,
  whose FLOPs it does not count (ResNet-9 read 300x too few on an H100,
  BENCHMARKS.md). A step is not 3 forward passes: the backward pass skips
  the input gradient of the first layer, the MLP's largest (2.25 forward
  passes for the MNIST MLP). compile_fallback: where the backend counts
  nothing before compiling, compile one step to count (the bench); without
  it the counts are NaN there (the job does not compile to plan).
  """
  flops = lambda lowered: _flops(lowered, compile_fallback)
  params, state = models.init(model, jax.random.key(0), ds.x_train)
  b = config.train.batch_size
  batch = ds.x_train[:b]
  fwd = jax.jit(lambda p, s, x: models.apply(model, p, s, x, False)[0])
  fwd_flops = flops(fwd.lower(params, state, batch)) / len(batch)
  step, tx, storage = train.make_config_step(model, config, m)
  carry = (storage.store(params), state, tx.init(params))
  step_flops = flops(jax.jit(step).lower(
      carry, ds.x_train[:b], ds.y_train[:b], jnp.ones(b), jax.random.key(0)))
  steps = optimizer.step_counts(m, config.train)[1]
  num_params = sum(p.size for p in jax.tree.leaves(params))
  views = len(evaluation.tta_views(batch, config.model.tta)[1])
  # Per-model preparation: the whitening fit on the subset, where there is one.
  prep_flops = (flops(jax.jit(airbench.fit_whitening).lower(
      ds.x_train, jnp.arange(m, dtype=jnp.int32))) if 'whiten' in state else 0.)
  return dict(
      num_params=int(num_params), forward_flops_per_example=fwd_flops,
      steps_per_model=steps,
      train_examples_per_model=_examples(m, config.train, steps),
      train_flops_per_step=step_flops,
      train_flops_per_model=step_flops * steps + prep_flops,
      tta_views=views,
      eval_flops_per_model=fwd_flops * views * (ds.num_train + ds.num_test))


def _examples(m: int, config, steps: int) -> int:
  """The training examples one model sees in `steps` steps: a kept, padded
  last batch counts its m % B real ones."""
  per_epoch, _ = optimizer.step_counts(m, config)
  if config.drop_last:
    return steps * config.batch_size
  full, tail = divmod(steps, per_epoch)
  return full * m + tail * config.batch_size


def _flops(lowered, compile_fallback: bool) -> float:
  # Some backends (CUDA in jax 0.11) give no cost analysis before
  # compilation: the compiled one counts dots, not cuDNN's convolutions.
  cost = _unwrap(lowered.cost_analysis())
  if (not cost or 'flops' not in cost) and compile_fallback:
    cost = _unwrap(lowered.compile().cost_analysis())
  return float((cost or {}).get('flops', float('nan')))


def _unwrap(cost):
  return cost[0] if isinstance(cost, (list, tuple)) else cost


# Dense bf16 matrix peaks (TFLOP/s, vendors' figures) of the accelerators
# the job is run on: a floor on a job's time, never a prediction (this
# project's trainers reach a fraction of it: BENCHMARKS.md).
PEAK_TFLOPS = (('H200', 989), ('H100', 989), ('A100', 312), ('L4', 121),
               ('TPU v6', 918), ('TPU v5p', 459), ('TPU v5', 197),
               ('TPU v4', 275))


class Plan(NamedTuple):
  models: int            # to train now (those not stored)
  steps: int             # per model
  flops: float           # of those models' training and evaluation; NaN: unknown
  disk_bytes: int        # chunks of those models, estimates and dense files
  floor_s: float | None  # at the devices' peak; None where none is known


# A chunk's npz framing (zip and .npy headers of its 13 members), measured.
CHUNK_OVERHEAD = 3600


def chunk_bytes(models: int, n: int, n_test: int, epochs: int,
                views: int) -> int:
  """What chunks.write_chunk stores of `models` models, less the framing:
  a model's mask and two correctness rows as bits, its p(true label) and
  its margin per view as float16, its losses."""
  bits = 2 * math.ceil(n / 8) + math.ceil(n_test / 8)
  halves = 2 * (n + n_test) * (1 + views)
  return models * (bits + halves + 4 * epochs + 8)


def plan(config, ds, m: int, model, todo: int) -> Plan:
  """The work and disk of training `todo` models and estimating, from the
  config and the data alone (nothing compiles). FLOPs are counted only
  where the devices' peak is known (lowering the step takes seconds on a
  CPU, where no floor would come of it)."""
  peak = _peak_flops()
  flops = float('nan')
  if peak:
    c = count(model, config, ds, m, compile_fallback=False)
    flops = todo * (c['train_flops_per_model'] + c['eval_flops_per_model'])
  per_epoch, steps = optimizer.step_counts(m, config.train)
  n, n_test = ds.num_train, ds.num_test
  k, d = schedule.models_per_call(config)
  chunks = (chunk_bytes(todo, n, n_test, math.ceil(steps / per_epoch),
                        evaluation.num_views(config.model.tta)) +
            CHUNK_OVERHEAD * math.ceil(todo / (k * d)))
  estimates = 4 * 8 * n + 4 * 4 * n_test  # the per-example arrays
  dense = 0
  if config.estimate.infl is True:
    dense = resolve.dense_bytes(n, n_test) * (
        1 + bool(config.estimate.infl_stderr) + bool(config.estimate.margin))
  if config.estimate.infl_topk:
    # Each test example's top k (value and index), and at most MAX_PAIRS
    # pairs (train, test, infl): few models make many noisy pairs.
    estimates += (8 * n_test * config.estimate.infl_topk +
                  12 * min(topk.MAX_PAIRS, n * n_test))
  floor = flops / peak if peak and math.isfinite(flops) else None
  return Plan(todo, steps, flops, chunks + estimates + dense, floor)


def _peak_flops() -> float | None:
  devices = jax.devices()
  kind = devices[0].device_kind
  for name, tflops in PEAK_TFLOPS:
    if name.lower() in kind.lower():
      return tflops * 1e12 * len(devices)
  return None


def describe(p: Plan, config) -> str:
  """One log line: what the job will do and what it will take."""
  parts = [f'{p.models:,} models to train, {p.steps:,} steps of '
           f'{config.train.batch_size} each']
  if math.isfinite(p.flops):
    parts.append(f'{p.flops / 1e15:,.3g} PFLOP (XLA\'s count, with '
                 'evaluation)')
  if p.floor_s is not None:
    parts.append(f'at least {units.duration(p.floor_s)} at the devices\' peak')
  parts.append(f'about {units.human_bytes(p.disk_bytes)} on disk')
  return 'plan: ' + '; '.join(parts)


def check_disk(p: Plan, workdir: str) -> None:
  """StoreError in one line when the workdir's disk cannot hold the plan."""
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  usage = shutil.disk_usage(path)
  if not os.access(path, os.W_OK) or not usage.total:
    # No workdir can be made there (or a pseudo file system, /proc): the
    # workdir's own error says so.
    return
  free = usage.free
  if p.disk_bytes > free:
    raise StoreError(
        f'this run needs about {units.human_bytes(p.disk_bytes)} on disk and '
        f'{path} has {units.human_bytes(free)} free: free space, or lower '
        'num_models (or estimate.infl=False for the dense matrix)')
