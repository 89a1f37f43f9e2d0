"""The one loop that trains subset models on this host's devices.

Every path that trains models -- the estimate job, the experiments, the
benchmark -- builds a `Program` (the chunk program of train.make_chunk_fn
with the data resident on the devices) and hands `run` its calls: the
program compiles on a thread while the host draws the first subsets, each
call is dispatched while the previous one's outputs are fetched, and a sink
takes them in order (the job's `StoreSink` writes chunks, the experiments
keep them in memory, the benchmark drops them).
"""

import concurrent.futures
import contextlib
import threading
import time
from typing import Callable, Iterable

import jax
import numpy as np
from absl import logging

from feldman_zhang import distributed
from feldman_zhang import train
from feldman_zhang import units


class Phases:
  """Wall seconds of a job's phases, for the log and summary.json.

  with phases('estimate'): ...  adds the block's time to 'estimate'.
  """

  def __init__(self):
    self.seconds = {}

  @contextlib.contextmanager
  def __call__(self, name):
    begin = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[name] = (self.seconds.get(name, 0.0) +
                            time.perf_counter() - begin)


class Progress:
  """Logs models done, models/s and ETA."""

  def __init__(self, total):
    self.total, self.done = total, 0
    self.restart()

  def restart(self):
    """Rates count from now (run() restarts it once compiled)."""
    self.begin = time.time()

  def update(self, count):
    self.done += count
    rate = self.done / max(time.time() - self.begin, 1e-9)
    eta = (self.total - self.done) / rate if rate > 0 else float('inf')
    logging.info('models %d/%d (%.0f%%), %.1f models/s, ETA %s', self.done,
                 self.total, 100 * self.done / self.total, rate,
                 units.duration(eta))


def start(fn, *args) -> concurrent.futures.Future:
  """fn(*args) on a thread of its own; result() waits and re-raises."""
  pool = concurrent.futures.ThreadPoolExecutor(1)
  future = pool.submit(fn, *args)
  pool.shutdown(wait=False)
  return future


class Program:
  """The chunk program of `size` models a call, and the data on the devices.

  per_device: models per device and call. sharded: split the models over a
  mesh of this process's devices (train.make_chunk_fn); False runs one
  device's program unsharded (the benchmark's one-model-at-a-time arm).
  data: another Program's `data` (same sharded), to share its device copy.
  """

  def __init__(self, model, config, ds, m: int, per_device: int,
               sharded: bool = True, data=None):
    self.mesh = distributed.local_mesh() if sharded else None
    self.size = per_device * (self.mesh.devices.size if sharded else 1)
    self.m = m
    self._fn = train.make_chunk_fn(model, config, m, self.mesh)
    if data is None:  # else another Program's, placed alike
      data = (ds.x_train, ds.y_train, ds.x_test, ds.y_test)
      data = (distributed.put_replicated(self.mesh, *data) if sharded else
              [jax.device_put(a) for a in data])
    self.data = data

  def compile_async(self, pool: concurrent.futures.Executor | None = None
                    ) -> concurrent.futures.Future:
    """Compiles for (size,) models on abstract inputs, on a thread (pool's,
    or one of its own): XLA works (and releases the GIL) while the host
    draws the first subsets."""
    sharding = distributed.models_sharding(self.mesh) if self.mesh else None
    keys = jax.eval_shape(lambda: train.model_keys(0, np.arange(self.size)))
    lowered = self._fn.lower(
        jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=sharding),
        jax.ShapeDtypeStruct((self.size, self.m), np.int32, sharding=sharding),
        *self.data)
    return pool.submit(lowered.compile) if pool else start(lowered.compile)

  def dispatch(self, compiled, keys, idx):
    """Starts one call (asynchronously); returns its outputs on the device,
    their copy to the host already queued."""
    args = (distributed.put_models(self.mesh, keys, idx) if self.mesh else
            (keys, idx))
    out = compiled(*args, *self.data)
    # Queued now: queued after the next call's training, the copy waited for
    # it (seen on an H100: the first of two calls reported only when both
    # were done).
    for leaf in jax.tree.leaves(out):
      leaf.copy_to_host_async()
    return out


Sink = Callable[[object, np.ndarray, dict], bool]


class Interrupted(KeyboardInterrupt):
  """run() stopped on request (request_stop) at a safe point: every call it
  dispatched was handed to its sink. signum: the signal that asked."""

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum


class _Loop:
  """The state a signal handler reads and sets (request_stop): whether run()
  is training, how long its last call took, and a stop request."""

  def __init__(self):
    self.running = False
    self.last_call_s = None  # seconds between the last two hand-overs
    self.stop = threading.Event()
    self.signum = 0


_LOOP = _Loop()


def request_stop(signum: int) -> str | None:
  """Asks the running run() to stop once the calls it has dispatched are
  handed to its sink (their models stored), then raise Interrupted(signum).
  Returns what that waits for, as a phrase for the user, or None when no
  run() is training: nothing to wait for (the caller stops at once)."""
  if not _LOOP.running:
    return None
  _LOOP.signum = signum
  _LOOP.stop.set()
  last = _LOOP.last_call_s
  if last is None:
    return 'the first call (its time is not known yet)'
  # The call being fetched and the one dispatched behind it (run()).
  return (f'the calls in flight: at most about {units.duration(2 * last)} '
          f'(a call takes {units.duration(last)})')


def run(program: Program, calls: Iterable, sink: Sink, phases: Phases,
        after_compile: Callable | None = None,
        progress: Progress | None = None,
        compiling: concurrent.futures.Future | None = None):
  """Trains every call, handing each one's outputs to sink in order.

  calls: iterable of (tag, keys (size,), idx (size, m) int32); the first is
  drawn while the program compiles, each next one while the device trains.
  sink(tag, idx, out) -> stop: takes one call's outputs on the host (numpy,
  as train.make_chunk_fn returns them) while the next call trains; True
  ends the run after it (the last call's answer is not asked for).
  after_compile: started on a thread once the program has compiled (the
  job compiles its estimate while the device trains). progress: restarted
  once compiled, so its rates are of training alone. compiling: the
  program's compile_async() if the caller started it earlier.
  Returns (compiled, future of after_compile or None, stopped).

  A stop request (request_stop, from a signal handler) is honoured between
  calls: the call dispatched is still handed to the sink, then run raises
  Interrupted; a call never starts after the request.
  """
  calls = iter(calls)
  _LOOP.running, _LOOP.last_call_s = True, None
  _LOOP.stop.clear()
  try:
    result = _run(program, calls, sink, phases, after_compile, progress,
                  compiling)
    if _LOOP.stop.is_set():
      raise Interrupted(_LOOP.signum)
    return result
  finally:
    _LOOP.running = False
    _LOOP.stop.clear()


def _run(program, calls, sink, phases, after_compile, progress, compiling):
  with phases('compile'):
    compiling = compiling or program.compile_async()
    first = next(calls, None)
    compiled = compiling.result()
  logging.info('compiled the %d-model program in %.1f s', program.size,
               phases.seconds['compile'])
  ahead = start(after_compile) if after_compile else None
  if progress:
    progress.restart()
  pending, handed = None, time.perf_counter()
  with phases('train'):
    call = first
    while call is not None and not _LOOP.stop.is_set():
      tag, keys, idx = call
      out = program.dispatch(compiled, keys, idx)
      if pending:
        if _hand(pending, sink, phases):
          return compiled, ahead, True
        now = time.perf_counter()
        _LOOP.last_call_s, handed = now - handed, now
      pending = (tag, idx, out)
      call = next(calls, None)
    if pending:
      # The last call, or the one in flight at a stop request: its models
      # are trained, so they are handed (stored) before anything ends.
      _hand(pending, sink, phases)
  return compiled, ahead, False


def _hand(pending, sink, phases) -> bool:
  tag, idx, out = pending
  with phases('wait_for_device'):
    out = jax.device_get(out)
  return bool(sink(tag, idx, out))


def train_rows(program: Program, keys, idx, phases: Phases | None = None,
               compiling: concurrent.futures.Future | None = None):
  """One model per row: idx (R, m) int32, keys (R,). Calls are whole,
  padded with copies of the last model, whose outputs drop. compiling: as
  in run. Returns the outputs of the R models (numpy,
  train.make_chunk_fn's), in order."""
  r, size = len(idx), program.size
  rows = np.minimum(np.arange(-(-r // size) * size), r - 1)
  calls = ((i, keys[rows[i:i + size]], idx[rows[i:i + size]])
           for i in range(0, len(rows), size))
  outs = []
  run(program, calls, lambda tag, idx, out: outs.append(out),
      phases or Phases(), compiling=compiling)
  return {k: np.concatenate([o[k] for o in outs])[:r] for k in outs[0]}


def device_bytes(compiled, per_device: int) -> float | None:
  """XLA's device memory per model of a compiled program, or None."""
  memory = compiled.memory_analysis()
  if memory is None:
    return None
  total = (memory.temp_size_in_bytes + memory.argument_size_in_bytes +
           memory.output_size_in_bytes)
  return total / per_device

