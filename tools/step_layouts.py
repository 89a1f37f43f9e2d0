r"""Training-step layouts for K models, timed on one device (issue 5).

  python tools/step_layouts.py --config=configs/mnist_mlp.py \
      --variants=gather,shared,map --ks=250,1000 --out=steps.json

A one-off study, kept to repeat its BENCHMARKS.md rows; not the library.

Each variant runs `steps` SGD steps of K models inside one jitted lax.scan
(no host round-trips), from the same initial models:
  gather  the trainer's layout: vmap over models, each model gathers its own
          mini-batch of B examples from the device-resident data set;
  shared  one mini-batch of ceil(B / ratio) examples per step for all models,
          each model weighing out the examples outside its subset: the first
          layer becomes one wide product for all models, at the price of
          1/ratio - 1 more FLOPs and an example order shared by all models;
  map     lax.map over models: one model at a time inside the same program
          (plain convolutions instead of grouped ones for conv nets).
Only per-step cost is measured; the trainer keeps `gather` (see BENCHMARKS.md
for why).
"""

import json
import math
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from feldman_zhang import models
from feldman_zhang import prepare as prepare_lib
from feldman_zhang import subsets
from feldman_zhang import train
from feldman_zhang.bench import harness

VARIANTS = ('gather', 'shared', 'map')


def _program(variant, model, config, m, num_train, steps):
  """jit(f(params, state, opt, x, y, idx, key)) running `steps` steps."""
  step, tx, storage = train.make_config_step(model, config, m)
  b = config.train.batch_size
  shared_b = math.ceil(b * num_train / m)

  def run(params, state, opt, x, y, idx, key):
    k = idx.shape[0]
    member = jnp.zeros((k, num_train), bool).at[
        jnp.arange(k)[:, None], idx].set(True)   # (K, n)

    def body(carry, s):
      skey = jax.random.fold_in(key, s)
      keys = jax.random.split(skey, k)
      if variant == 'shared':
        bidx = jax.random.randint(skey, (shared_b,), 0, num_train)
        wb = member[:, bidx].astype(jnp.float32)  # (K, B')
        return jax.vmap(step, in_axes=(0, None, None, 0, 0))(
            carry, x[bidx], y[bidx], wb, keys)
      pos = jax.vmap(lambda kk: jax.random.randint(kk, (b,), 0, m))(keys)
      bidx = jnp.take_along_axis(idx, pos, 1)  # (K, B)
      wb = jnp.ones((k, b), jnp.float32)
      if variant == 'gather':
        return jax.vmap(step)(carry, x[bidx], y[bidx], wb, keys)
      return jax.lax.map(lambda a: step(*a), (carry, x[bidx], y[bidx], wb,
                                               keys))

    carry, losses = jax.lax.scan(body, (params, state, opt), jnp.arange(steps))
    return carry, losses

  return jax.jit(run, donate_argnums=(0, 1, 2)), tx, storage


def time_variant(variant, model, config, ds, m, k, steps=50, reps=3) -> dict:
  """Seconds per step per model of one layout with K = k models."""
  if variant not in VARIANTS:
    raise ValueError(f'unknown step variant {variant!r}: expected one of '
                     f'{", ".join(VARIANTS)}')
  fn, tx, storage = _program(variant, model, config, m, ds.num_train, steps)
  keys = train.model_keys(config.seed, np.arange(k))
  params, state = jax.vmap(lambda kk: models.init(model, kk, ds.x_train))(keys)
  num_params = sum(p.size for p in jax.tree.leaves(params)) // k
  x, y = jax.device_put(ds.x_train), jax.device_put(ds.y_train)
  idx = jnp.asarray(subsets.indices(config.seed, ds.num_train, m,
                                    np.arange(k)))

  def fresh():
    return (jax.tree.map(jnp.copy, jax.vmap(storage.store)(params)),
            jax.tree.map(jnp.copy, state),
            jax.vmap(tx.init)(params))

  start = time.perf_counter()
  compiled = fn.lower(*fresh(), x, y, idx, jax.random.key(1)).compile()
  compile_s = time.perf_counter() - start
  # XLA's own count of the bytes the compiled program moves, a check of the
  # byte model; its cost analysis counts a loop body once, whatever the trip
  # count, so the count is that of one step (and the setup around the loop).
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_bytes = float((cost or {}).get('bytes accessed', float('nan')))
  best = float('inf')
  for r in range(reps + 1):  # the first run warms up
    args = fresh()
    jax.block_until_ready(args)
    start = time.perf_counter()
    carry, losses = compiled(*args, x, y, idx, jax.random.key(1))
    jax.block_until_ready(losses)
    if r:
      best = min(best, time.perf_counter() - start)
  loss = np.asarray(losses, np.float32)
  return dict(variant=variant, k=k, steps=steps, compile_s=compile_s,
              step_s=best / steps, step_s_per_model=best / steps / k,
              num_params=num_params,
              xla_bytes_per_param_step=xla_bytes / k / num_params,
              param_storage=config.train.param_storage,
              final_loss=float(loss[-1].mean()),
              finite=bool(np.isfinite(loss).all()))


def step_variants(config, variants, ks, steps) -> list:
  """Per-step time of each layout at each K; prints a table as it goes."""
  job = prepare_lib.prepare(config)
  config, ds, m, model = job.config, job.ds, job.m, job.model
  traffic = harness.bytes_per_param_step(config)
  counted = traffic['total']
  print(f'byte model: {counted} B per parameter and step ({traffic})')
  print(f'{"variant":8} {"K":>6} {"ms/step":>9} {"us/step/model":>14} '
        f'{"compile s":>9} {"loss":>7} {"XLA B/param":>11} {"GB/s":>7}')
  rows = []
  for k in ks:
    for v in variants:
      r = time_variant(v, model, config, ds, m, k, steps)
      rows.append(r)
      print(f'{v:8} {k:6d} {1e3 * r["step_s"]:9.3f} '
            f'{1e6 * r["step_s_per_model"]:14.2f} {r["compile_s"]:9.1f} '
            f'{r["final_loss"]:7.3f} {r["xla_bytes_per_param_step"]:11.1f} '
            f'{counted * r["num_params"] / r["step_s_per_model"] / 1e9:7.0f}',
            flush=True)
      r['bytes_per_param_step'] = counted
  return rows


def main(argv):
  del argv
  rows = step_variants(FLAGS.config, FLAGS.variants,
                       [int(k) for k in FLAGS.ks] or
                       [FLAGS.config.models_per_device], FLAGS.steps)
  with open(FLAGS.out, 'w') as f:
    json.dump(rows, f, indent=2)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.')
  flags.DEFINE_list('variants', ['gather'], 'Layouts: gather, shared, map.')
  flags.DEFINE_list('ks', [], 'Models per device K (default: the config\'s).')
  flags.DEFINE_integer('steps', 50, 'Steps timed.')
  flags.DEFINE_string('out', 'steps.json', 'Where the JSON goes.')
  FLAGS = flags.FLAGS
  app.run(main)
