r"""Throughput of the trainer, against the ways people train subset models.

  python -m feldman_zhang.bench --config=configs/mnist_mlp.py \
      --config.data.source=idx:../shared/datasets/mnist --num_models=2000

Three arms train the same models (same keys, subsets and data order):
  vmap      this project: K models per jitted call, all steps in lax.scan;
  single    the same trainer, one model per call;
  steploop  the reference demo's way: one jitted step per Python iteration,
            each mini-batch gathered on the host and copied to the device.
The slow arms are timed on a sample (--sample_models, --sample_steps) and
scaled to num_models; each arm's compile time is reported apart. Achieved
FLOP/s and parameter traffic come from counted models of the network (see
`count`), set against the device's measured matmul and copy peaks.
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from feldman_zhang import config as config_lib
from feldman_zhang import cost
from feldman_zhang import models
from feldman_zhang import optimizer
from feldman_zhang import precision
from feldman_zhang import prepare as prepare_lib
from feldman_zhang import runner
from feldman_zhang import schedule
from feldman_zhang import train


def bytes_per_param_step(config) -> dict:
  """The byte model: bytes moved per parameter in one SGD-momentum step.

  Each term is one pass over the parameters that XLA cannot fuse away: with
  bf16 compute and f32 storage a cast pass (read f32, write bf16) opens each
  step, since the update of the previous step sits across the scan's loop
  boundary; the forward and the backward pass read the compute copy; the
  weight gradient (in the compute dtype) is written and read back; the
  momentum and the parameters are read and written by the update. Split
  storage reads and writes the two halves and needs no cast.
  """
  c = config.train
  w = np.dtype(precision.compute_dtype(c.compute_dtype)).itemsize
  mom = np.dtype(precision.compute_dtype(c.momentum_dtype)).itemsize
  split = c.param_storage == 'split'
  terms = dict(cast=0 if split or w == 4 else 4 + w, forward=w, backward=w,
               gradient=2 * w, momentum=2 * mom if c.momentum else 0,
               params=8)
  terms['total'] = sum(terms.values())
  return terms


def count(model, config, ds, m) -> dict:
  """cost.count's FLOP counts of one model's training and evaluation, and
  the parameter traffic of its steps (`bytes_per_param_step`)."""
  c = cost.count(model, config, ds, m)
  traffic = bytes_per_param_step(config)
  return dict(c, bytes_per_param_step=traffic,
              param_bytes_per_model=traffic['total'] * c['num_params'] *
              c['steps_per_model'])


def measure_peaks(device=None) -> dict:
  """Measured matmul FLOP/s (bf16 on accelerators, f32 on CPU) and copy
  bandwidth of one device: the ceilings the achieved figures are set against."""
  device = device or jax.local_devices()[0]
  cpu = device.platform == 'cpu'
  n, dtype = (1024, jnp.float32) if cpu else (8192, jnp.bfloat16)
  # Random operands: zeros or ones can run faster than real data.
  a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), dtype),
                     device)
  matmul = jax.jit(lambda a: a @ a)
  secs = _best_of(lambda: matmul(a), 5)
  words = (16 if cpu else 256) * 2**20  # 64 MiB / 1 GiB of f32
  x = jax.device_put(jax.random.normal(jax.random.key(1), (words,)), device)
  scale = jax.jit(lambda x: x * 2)
  copy_secs = _best_of(lambda: scale(x), 5)
  return dict(device=device.device_kind, platform=device.platform,
              matmul_tflops=2 * n**3 / secs / 1e12,
              copy_gbps=2 * 4 * words / copy_secs / 1e9)


def _best_of(fn, reps):
  jax.block_until_ready(fn())
  best = float('inf')
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def _inputs(config, ds, m, ids):
  return schedule.model_inputs(config, ds.num_train, m, ids)


def time_chunks(config, model, ds, m, num_models, per_device) -> dict:
  """The vmap (per_device = K) or single (per_device = 1) arm: the job's
  runner (runner.run) over whole calls, their outputs fetched and dropped."""
  program = runner.Program(model, config, ds, m, per_device,
                           sharded=per_device > 1)
  size = program.size
  calls = math.ceil(num_models / size)
  phases = runner.Phases()
  compiled, _, _ = runner.run(
      program, ((c,) + _inputs(config, ds, m, np.arange(c * size,
                                                       (c + 1) * size))
                for c in range(calls)), lambda *_: False, phases)
  secs = phases.seconds['train']
  out = dict(models_timed=calls * size, seconds=secs * num_models / (calls * size),
             compile_s=phases.seconds['compile'], models_per_call=size,
             devices=size // per_device, evaluates=True)
  per_model = runner.device_bytes(compiled, per_device)
  if per_model is not None:
    # XLA's figures are per device, which holds per_device models.
    out['device_bytes_per_model'] = per_model
  return out


def make_steploop(model, config, m):
  """The reference demo's way: one jitted step per Python iteration, batches
  from the host. The step is built and jitted once, for every model.

  Returns loop(key, idx, x, y, max_steps=None, timing=None) ->
  ((params, state), losses (steps,)): the model train_one trains, step for
  step. max_steps stops early (for timing a sample); timing, a dict, gets
  setup_s, the time to initialize the model before its first step.
  """
  c = config.train
  steps, total = optimizer.step_counts(m, c)
  passes = math.ceil(total / steps)
  step, tx, storage = train.make_config_step(model, config, m)
  step = jax.jit(step)

  def loop(key, idx, x, y, max_steps=None, timing=None):
    start = time.perf_counter()
    init_key, order_keys, aug_keys = train.split_model_key(key, passes, steps)
    params, state = models.init(model, init_key, x)
    carry = jax.block_until_ready((storage.store(params), state,
                                   tx.init(params)))
    if timing is not None:
      timing['setup_s'] = time.perf_counter() - start
    x, y = np.asarray(x), np.asarray(y)
    losses = []
    max_steps = total if max_steps is None else min(max_steps, total)
    for e in range(passes):
      order, weights = jax.device_get(train.epoch_order(
          order_keys[e], idx, c.batch_size, c.drop_last))
      for s in range(steps):
        if len(losses) == max_steps:
          return (storage.master(carry[0]), carry[1]), jnp.stack(losses)
        carry, loss = step(carry, x[order[s]], y[order[s]], weights[s],
                           aug_keys[e, s])
        losses.append(loss)
    return (storage.master(carry[0]), carry[1]), jnp.stack(losses)

  return loop


def train_steploop(model, config, m, key, idx, x, y, max_steps=None):
  """make_steploop's loop for one model."""
  return make_steploop(model, config, m)(key, idx, x, y, max_steps)


def time_steploop(config, model, ds, m, num_models, sample_steps) -> dict:
  """The per-step loop arm: a model's setup plus sample_steps of its steps,
  timed after a first model has compiled everything, scaled to all steps
  and all models."""
  loop = make_steploop(model, config, m)
  key, idx = _inputs(config, ds, m, np.arange(2))
  start = time.perf_counter()
  jax.block_until_ready(loop(key[0], idx[0], ds.x_train, ds.y_train, 2))
  compile_s = time.perf_counter() - start
  steps = optimizer.step_counts(m, config.train)[1]
  sample = min(sample_steps, steps)
  timing = {}
  start = time.perf_counter()
  jax.block_until_ready(loop(key[1], idx[1], ds.x_train, ds.y_train, sample,
                             timing))
  secs = time.perf_counter() - start
  per_model = timing['setup_s'] + (secs - timing['setup_s']) / sample * steps
  # Evaluation is left out of this arm: its time is a lower bound.
  return dict(models_timed=sample / steps, seconds=per_model * num_models,
              compile_s=compile_s, models_per_call=1, devices=1,
              evaluates=False)


def time_estimate(t: int, n: int, n_test: int, reps: int = 3) -> dict:
  """The estimate step alone (mem, stderr and the dense infl matrix, copied
  back to the host) on random 0/1 predictions of the given size."""
  from feldman_zhang import estimate  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  masks = rng.random((t, n), np.float32) < 0.7
  train_correct = rng.random((t, n), np.float32) < 0.9
  test_correct = rng.random((t, n_test), np.float32) < 0.9
  secs = []
  for _ in range(reps + 1):  # the first call compiles
    start = time.perf_counter()
    out = estimate.estimate(masks, train_correct, test_correct)
    secs.append(time.perf_counter() - start)
  return dict(t=t, n=n, n_test=n_test, first_call_s=secs[0],
              seconds=min(secs[1:]), infl_bytes=out['infl'].nbytes,
              device=jax.local_devices()[0].device_kind)


def figures(arm: dict, counts: dict, peaks: dict, num_models: int) -> dict:
  """The arm's rates, set against the peaks of the devices it ran on."""
  secs, devices = arm['seconds'], arm['devices']
  flops = num_models * (counts['train_flops_per_model'] +
                        counts['eval_flops_per_model'] * arm['evaluates'])
  traffic = num_models * counts['param_bytes_per_model']
  return dict(arm, models_per_s=num_models / secs,
              train_examples_per_s=num_models *
              counts['train_examples_per_model'] / secs,
              tflops=flops / secs / 1e12,
              tflops_fraction=flops / secs / 1e12 /
              (devices * peaks['matmul_tflops']),
              param_gbps=traffic / secs / 1e9,
              param_bandwidth_fraction=traffic / secs / 1e9 /
              (devices * peaks['copy_gbps']))


def run(config, num_models=0, arms=('vmap', 'single', 'steploop'),
        sample_models=2, sample_steps=50) -> dict:
  job = prepare_lib.prepare(config)
  config, ds, m, model = job.config, job.ds, job.m, job.model
  k = config.models_per_device
  num_models = num_models or k * jax.local_device_count()
  counts = count(model, config, ds, m)
  peaks = measure_peaks()
  result = dict(config=config.to_dict(), num_models=num_models, counts=counts,
                peaks=peaks, arms={})
  for name in arms:
    if name == 'vmap':
      arm = time_chunks(config, model, ds, m, num_models, k)
    elif name == 'single':  # a sample, scaled to num_models
      arm = time_chunks(config, model, ds, m, sample_models, 1)
      arm['seconds'] *= num_models / sample_models
    elif name == 'steploop':
      arm = time_steploop(config, model, ds, m, num_models, sample_steps)
    else:
      raise ValueError(f'unknown arm {name!r}: expected vmap, single, steploop')
    result['arms'][name] = figures(arm, counts, peaks, num_models)
  if 'vmap' in result['arms']:
    base = result['arms']['vmap']['seconds']
    result['speedup'] = {f'vmap_over_{a}': v['seconds'] / base
                         for a, v in result['arms'].items() if a != 'vmap'}
  return result


def table(result) -> str:
  p = result['peaks']
  vmap = result['arms'].get('vmap', {})
  lines = [f'{result["num_models"]} models; device {p["device"]} '
           f'(vmap on {vmap.get("devices", 1)}; %peak and %copy are of the '
           'devices each arm used) '
           f'(measured peaks: {p["matmul_tflops"]:.1f} TFLOP/s matmul, '
           f'{p["copy_gbps"]:.0f} GB/s copy); {result["counts"]["num_params"]:,} '
           f'params per model, {result["counts"]["bytes_per_param_step"]} '
           'bytes per parameter and step (byte model)',
           f'{"arm":9} {"seconds":>10} {"models/s":>10} {"examples/s":>12} '
           f'{"TFLOP/s":>8} {"%peak":>6} {"param GB/s":>11} {"%copy":>6} '
           f'{"compile s":>9} {"MB/model":>9}']
  for name, a in result['arms'].items():
    mb = a.get('device_bytes_per_model', float('nan')) / 2**20
    lines.append(
        f'{name:9} {a["seconds"]:10.2f} {a["models_per_s"]:10.2f} '
        f'{a["train_examples_per_s"]:12.3g} {a["tflops"]:8.3f} '
        f'{100 * a["tflops_fraction"]:6.1f} {a["param_gbps"]:11.1f} '
        f'{100 * a["param_bandwidth_fraction"]:6.1f} {a["compile_s"]:9.1f} '
        f'{mb:9.1f}')
  for k, v in result.get('speedup', {}).items():
    lines.append(f'{k}: {v:.1f}x')
  return '\n'.join(lines)


def flops_table(config_files, source: str) -> list:
  """One row per config: XLA's FLOP count of one model's job, printed."""
  rows = []
  print(f'{"config":36} {"params":>9} {"train PFLOP":>11} {"eval PFLOP":>10} '
        f'{"TTA views":>9} {"job PFLOP":>9}')
  for path in config_files:
    config = config_lib.from_file(path)
    config.data.source = source
    job = prepare_lib.prepare(config)
    config, ds, m, model = job.config, job.ds, job.m, job.model
    c = count(model, config, ds, m)
    job = c['train_flops_per_model'] + c['eval_flops_per_model']
    rows.append(dict(config=path, job_flops_per_model=job, **c))
    print(f'{path:36} {c["num_params"]:9,d} '
          f'{c["train_flops_per_model"] / 1e15:11.4f} '
          f'{c["eval_flops_per_model"] / 1e15:10.4f} {c["tta_views"]:9d} '
          f'{job / 1e15:9.4f}', flush=True)
  return rows
