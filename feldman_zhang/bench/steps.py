"""Training-step layouts for K models, timed on one device (issue 5).

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

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from feldman_zhang import subsets
from feldman_zhang import train

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
  params, state = jax.vmap(lambda kk: train.init(model, kk, ds.x_train))(keys)
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
