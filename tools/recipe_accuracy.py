r"""Test accuracy of a recipe's models, trained pass by pass, resumably.

  python tools/recipe_accuracy.py CONFIG_FILE SOURCE STATE_DIR RATIO [IDS]
  # airbench on all 50,000 lossless CIFAR-10 images (m = n), model 0:
  python tools/recipe_accuracy.py configs/cifar10_airbench.py \
      npz:.data/cifar10_lossless.npz runs/acc_full all 0
  # the job's models 0 and 1 of seed 0 on 70% subsets:
  python tools/recipe_accuracy.py configs/cifar10_airbench.py \
      npz:.data/cifar10_lossless.npz runs/acc_70 0.7 0,1

RATIO: 'all' trains on every training example (a recipe's published
accuracy is for that; the estimate job needs subsets that leave some out),
or a subset ratio. IDS: comma-separated model ids (default 0). Model k has
the job's key and, at a ratio, the job's subset (schedule.model_inputs): it
is the model the estimate job trains as model k of that ratio.

Training runs one pass per call (train.make_config_segments) and saves the
carry to STATE_DIR/model_K.npz after each, so a kill loses at most one pass
and a rerun resumes bit for bit; an hour-long CIFAR-10 training on a CPU
survives an interrupted session. A state of another config, source, ratio
or model is refused. At the end: 'test_tta' (the config's test-time views:
the classifier whose correctness mem counts), 'test_notta', and at a ratio
'heldout_tta' (the examples the subset leaves out), in
STATE_DIR/model_K.json and on stdout. A measurement, not a test.
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from feldman_zhang import config as config_lib
from feldman_zhang import evaluation
from feldman_zhang import optimizer
from feldman_zhang import prepare as prepare_lib
from feldman_zhang import schedule
from feldman_zhang import store
from feldman_zhang import train


def _say(msg: str) -> None:
  print(time.strftime('%H:%M:%S'), msg, flush=True)


def _save(path: str, carry, identity: str, done: int, losses) -> None:
  leaves = jax.tree.leaves(jax.device_get(carry))
  arrays = {f'leaf_{i:04d}': np.asarray(a) for i, a in enumerate(leaves)}
  store.atomic_write(path, lambda f: np.savez(
      f, identity=np.array(identity), done=np.int64(done),
      losses=np.asarray(losses, np.float32), **arrays))


def _training(identity: str) -> dict:
  """What a saved state's training depends on: its identity with the config
  cut to config_lib.training_fields, as a run's resume ignores the rest. A
  field added to the config since the state was saved, such as
  cpu_models_per_device, does not orphan it."""
  s = json.loads(identity)
  s['config'] = config_lib.training_fields(s['config'])
  return s


def _load(path: str, like, identity: str):
  """(carry, passes done, losses so far) of a saved state, or None."""
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    if _training(str(f['identity'])) != _training(identity):
      sys.exit(f'error: {path} holds another training\'s state (config, '
               'source, ratio or model differ); remove it or use another '
               'STATE_DIR')
    leaves, treedef = jax.tree.flatten(like)
    saved = [f[f'leaf_{i:04d}'] for i in range(len(leaves))]
    for a, b in zip(saved, leaves):
      if a.shape != b.shape or a.dtype != b.dtype:
        sys.exit(f'error: {path}: a saved array does not fit the model')
    return (jax.tree.unflatten(treedef, saved), int(f['done']),
            [float(v) for v in f['losses']])


def _accuracy(evaluate, variables, x, y) -> float:
  return float(np.mean(jax.device_get(evaluate(variables, x, y)[0])))


def train_model(job, config_file: str, ratio: str, k: int,
                state_dir: str) -> dict:
  c, ds, model = job.config, job.ds, job.model
  n = ds.num_train
  m = n if ratio == 'all' else job.m
  keys, subsets = schedule.model_inputs(c, n, m, [k])
  key = keys[0]
  idx = jnp.asarray(np.arange(n) if ratio == 'all' else subsets[0], jnp.int32)
  seg = train.make_config_segments(model, c, m)
  total = optimizer.step_counts(m, c.train)[1]
  identity = json.dumps(dict(config=json.loads(c.to_json()), ratio=ratio,
                             model=k, m=m), sort_keys=True)
  path = os.path.join(state_dir, f'model_{k}.npz')
  result = os.path.join(state_dir, f'model_{k}.json')
  start = jax.jit(seg.start)
  like = jax.eval_shape(start, key, idx, ds.x_train)
  loaded = _load(path, like, identity)
  if loaded is None:
    carry, done, losses = start(key, idx, ds.x_train), 0, []
    _say(f'model {k}: m={m}, {seg.passes} passes, {total} steps; starting')
  else:
    carry, done, losses = loaded
    if done == seg.passes and os.path.exists(result):
      return store.read_json(result)  # measured already
    _say(f'model {k}: resuming after pass {done} of {seg.passes}')
  run_whole = jax.jit(seg.run, static_argnums=6)
  run_last = jax.jit(seg.run, static_argnums=(5, 6))
  began = time.time()
  for p in range(done, seg.passes):
    t = time.time()
    if p < seg.whole:  # one program for every whole pass
      carry, loss = run_whole(carry, key, idx, ds.x_train, ds.y_train,
                              np.int32(p), 1)
    else:
      carry, loss = run_last(carry, key, idx, ds.x_train, ds.y_train, p, 1)
    losses.append(float(np.asarray(loss)[0]))
    _save(path, carry, identity, p + 1, losses)
    left = (time.time() - began) / (p + 1 - done) * (seg.passes - p - 1)
    _say(f'model {k}: pass {p + 1}/{seg.passes} loss {losses[-1]:.4f} '
         f'({time.time() - t:.0f} s; about {left / 60:.0f} min left)')
  variables = jax.jit(seg.finish)(carry)
  tta = jax.jit(evaluation.make_evaluate(model, c.eval_batch_size,
                                         c.model.tta))
  plain = jax.jit(evaluation.make_evaluate(model, c.eval_batch_size))
  out = dict(config=config_file, source=c.data.source, ratio=ratio, model=k,
             m=m, n=n, epochs=c.train.epochs, steps=total,
             epoch_losses=[round(x, 4) for x in losses],
             test_tta=_accuracy(tta, variables, ds.x_test, ds.y_test),
             test_notta=_accuracy(plain, variables, ds.x_test, ds.y_test))
  if ratio != 'all':
    held = np.setdiff1d(np.arange(n), np.asarray(idx))
    out['heldout_tta'] = _accuracy(tta, variables, ds.x_train[held],
                                   ds.y_train[held])
  store.write_json(result, out)
  return out


def main(config_file, source, state_dir, ratio, ids='0'):
  c = config_lib.from_file(config_file)
  c.data.source = source
  if ratio != 'all':
    c.subset_ratio = float(ratio)
  os.makedirs(state_dir, exist_ok=True)
  job = prepare_lib.prepare(c)
  for k in (int(i) for i in ids.split(',')):
    print(json.dumps(train_model(job, config_file, ratio, k, state_dir)),
          flush=True)


if __name__ == '__main__':
  if len(sys.argv) not in (5, 6):
    sys.exit(__doc__)
  main(*sys.argv[1:])
