r"""Seconds per model against K, the models one jitted call trains.

  python tools/k_sweep.py CONFIG_FILE SOURCE KS [EPOCHS] [REPEATS] [FIELD=VALUE ...]
  python tools/k_sweep.py configs/mnist_mlp.py idx:.data/mnist 1,8,64,256 0.25

Times the job's own chunk program (train.make_chunk_fn: training, the
6 evaluation passes, margins) on the models 0..K-1 of the config's
schedule, once per K to compile, then REPEATS timed calls per K taken in
turn (K1, K2, ..., K1, K2, ...) so that a change in the machine's load
falls on every K alike. EPOCHS (optional) shortens the training so that a
large K fits in minutes; the ratio between Ks is what it is for. Prints one
JSON object: per K the median seconds per model, every timed call, and the
compile time. FIELD=VALUE pairs (e.g. model.conv_weight_grad=xla) set config
fields, the value read as a Python literal where it is one. A measurement,
not a test.
"""

import ast
import json
import sys
import time

import jax
import numpy as np

from feldman_zhang import config as config_lib
from feldman_zhang import optimizer
from feldman_zhang import prepare as prepare_lib
from feldman_zhang import schedule
from feldman_zhang import train


def _call(fn, args, what) -> float:
  begin = time.perf_counter()
  jax.block_until_ready(fn(*args))
  seconds = time.perf_counter() - begin
  # A CNN's call can take many minutes on a CPU: say each as it ends.
  print(f'{what}: {seconds:.1f} s', file=sys.stderr, flush=True)
  return seconds


def main(config_file, source, ks, epochs=None, repeats=3, *fields):
  c = config_lib.from_file(config_file)
  c.data.source = source
  for field in fields:
    path, value = field.split('=', 1)
    *parents, leaf = path.split('.')
    node = c
    for parent in parents:
      node = node[parent]
    try:
      node[leaf] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      node[leaf] = value
  if epochs is not None:
    c.train.epochs = float(epochs)
  job = prepare_lib.prepare(c)
  c, ds, m = job.config, job.ds, job.m
  ks = [int(k) for k in ks.split(',')]
  fn = train.make_chunk_fn(job.model, c, m)
  data = (ds.x_train, ds.y_train, ds.x_test, ds.y_test)
  calls, compile_s = {}, {}
  for k in ks:
    keys, idx = schedule.model_inputs(c, ds.num_train, m, np.arange(k))
    calls[k] = (keys, idx) + data
    # The first call compiles, then runs once.
    compile_s[k] = round(_call(fn, calls[k], f'K={k} first call'), 2)
  seconds = {k: [] for k in ks}
  for _ in range(int(repeats)):
    for k in ks:
      seconds[k].append(round(_call(fn, calls[k], f'K={k}'), 3))
  per_model = {k: float(np.median(seconds[k])) / k for k in ks}
  print(json.dumps(dict(
      config=config_file, source=source, backend=jax.default_backend(),
      vectorize=c.vectorize, epochs=c.train.epochs, fields=list(fields),
      conv_weight_grad=c.model.get('conv_weight_grad'),
      steps=optimizer.step_counts(m, c.train)[1], m=m,
      per_model_s={k: round(v, 4) for k, v in per_model.items()},
      relative_to_first={k: round(v / per_model[ks[0]], 3)
                         for k, v in per_model.items()},
      seconds_per_call=seconds, first_call_s=compile_s), indent=1))


if __name__ == '__main__':
  main(*sys.argv[1:])
