"""Trains K models at once on their own subsets, then evaluates each on all data.

One jitted call (`make_chunk_fn`) does a whole chunk: `jax.vmap` (or `lax.map`,
config.vectorize) over models of
a per-model trainer whose epochs and steps run inside `lax.scan`, reading
mini-batches by gather from the device-resident data set. Each model k draws
its initialization and its data order from fold_in(key(seed), k), so a model
trains the same whichever chunk, device or host it lands on. The optimizer
and its step counts are optimizer.py's; the evaluation, evaluation.py's; the
mesh the models split over, distributed.py's.
"""

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from feldman_zhang import airbench
from feldman_zhang import augment as augment_lib
from feldman_zhang import distributed
from feldman_zhang import evaluation
from feldman_zhang import models as models_lib
from feldman_zhang import optimizer
from feldman_zhang import precision
from feldman_zhang import streams


# config.vectorize's choices (how a call runs its models: make_chunk_fn).
VECTORIZE = ('vmap', 'map')


def model_keys(seed: int, model_ids, stream: int = 0):
  """(K,) typed PRNG keys, one per global model id.

  stream 0 is the estimate's models; experiments draw from other streams so
  their models never share a key with the estimate's.
  """
  base = jax.random.key(seed)
  if stream:
    base = jax.random.fold_in(base, streams.MODEL_KEY_OFFSET + stream)
  return jax.vmap(lambda k: jax.random.fold_in(base, k))(
      jnp.asarray(model_ids, jnp.uint32))


def split_model_key(key, epochs: int, steps: int):
  """A model's key -> (init key, (epochs,) order keys, (epochs, steps)
  augmentation keys): every model and step draws its own augmentation."""
  init_key, order_key, aug_key = jax.random.split(key, 3)
  aug_keys = jax.vmap(lambda k: jax.random.split(k, steps))(
      jax.random.split(aug_key, epochs))
  return init_key, jax.random.split(order_key, epochs), aug_keys


def make_step(model, tx, augment=None, label_smoothing: float = 0.0,
              storage: precision.Storage | None = None):
  """One SGD step of one model.

  Returns step(carry, xb, yb, wb, key) -> (carry, loss), where carry is
  (params, state, opt_state) with params in `storage`'s carried form (plain
  f32 by default), xb: (B, H, W, C) uint8, yb: (B,) int32, wb: (B,) float
  weights (0 for padding) and key draws the augmentation.
  """
  augment = augment or (lambda key, x: x)
  storage = storage or precision.storage('float32', None)

  def loss_fn(params, state, xb, yb, wb):
    logits, state = models_lib.apply(model, params, state, xb, train=True)
    labels = optax.smooth_labels(jax.nn.one_hot(yb, logits.shape[-1]),
                                 label_smoothing)
    losses = optax.softmax_cross_entropy(logits, labels)
    return jnp.sum(losses * wb) / jnp.sum(wb), state

  def step(carry, xb, yb, wb, key):
    stored, state, opt_state = carry
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        storage.view(stored), state, augment(key, xb), yb, wb)
    params = storage.master(stored)
    # Split storage differentiates the bf16 view: its gradients are the very
    # values the f32 path gets by casting the bf16 cotangents up.
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (storage.store(optax.apply_updates(params, updates)), state,
            opt_state), loss

  return step


def config_storage(config) -> precision.Storage:
  """The parameter storage of a resolved config.train."""
  c = config.train
  return precision.storage(c.param_storage,
                           precision.compute_dtype(c.compute_dtype))


def make_config_step(model, config, m: int):
  """(step, tx, storage): make_step with the config's optimizer,
  augmentation, label smoothing and parameter storage, for the trainers that
  drive steps themselves (bench). The carry holds storage.store(params)."""
  c = config.train
  tx = optimizer.make_optimizer(c, optimizer.step_counts(m, c)[0])
  storage = config_storage(config)
  return make_step(model, tx, augment_lib.make(c.augment, c.crop_padding),
                   c.label_smoothing, storage), tx, storage


def epoch_order(key, idx, batch_size: int, drop_last: bool = False):
  """(steps, B) example indices of one epoch: a permutation of idx, its last
  batch filled up with repeats, and (steps, B) weights, 0 on the repeats.
  drop_last: the permutation's first steps x B examples, all weighing 1."""
  m = idx.shape[0]
  steps = optimizer.steps_per_epoch(m, batch_size, drop_last)
  perm = jax.random.permutation(key, idx)
  if drop_last:
    return (perm[:steps * batch_size].reshape(steps, batch_size),
            jnp.ones((steps, batch_size)))
  pad = steps * batch_size - m
  order = jnp.concatenate([perm, perm[jnp.arange(pad) % m]]).reshape(
      steps, batch_size)
  # Padding slots repeat real indices but weigh nothing: static shapes, and
  # the loss of the short last batch is its true mean. (BatchNorm's batch
  # statistics do count them: they are the subset's own examples, drawn
  # twice in that one batch.)
  weights = jnp.concatenate([jnp.ones(m), jnp.zeros(pad)]).reshape(
      steps, batch_size)
  return order, weights


def make_train_one(model, tx, **kwargs):
  """Returns train_one(key, idx, x, y) -> ((params, state), epoch_losses).

  idx: (m,) int32 training indices of this model's subset; x: (N, H, W, C)
  uint8 and y: (N,) int32, the whole training set, shared by all models.
  epoch_losses: (ceil(epochs),) mean training loss of each pass (of the
  examples the last, early-stopped one saw). kwargs: make_segments'.
  """
  return _in_one_call(make_segments(model, tx, **kwargs))


def _in_one_call(seg):
  """train_one(key, idx, x, y) running every pass of Segments seg."""
  def train_one(key, idx, x, y):
    carry = seg.start(key, idx, x)
    carry, epoch_losses = seg.run(carry, key, idx, x, y, 0, seg.passes)
    return seg.finish(carry), epoch_losses

  return train_one


class Segments(NamedTuple):
  """One model's training cut at pass boundaries (make_segments).

  start(key, idx, x) -> carry; run(carry, key, idx, x, y, first, count) ->
  (carry, (count,) epoch losses) trains passes first .. first + count - 1;
  count is static, first a static int or, where every pass of the range is
  a whole one (not the early-stopped last pass of a fractional epochs), a
  traced one, so one program serves them all; finish(carry) -> (params,
  state). A carry is a pytree of arrays: saved between calls, a long
  training resumes where it stopped, bit for bit. whole: the passes
  0 .. whole - 1 that are whole (all of them unless epochs is fractional).
  """
  start: Callable
  run: Callable
  finish: Callable
  passes: int
  whole: int


def make_segments(model, tx, *, m: int, batch_size: int, epochs,
                  augment=None, label_smoothing: float = 0.0,
                  storage: precision.Storage | None = None,
                  alternating_flip: bool = False, lookahead: bool = False,
                  drop_last: bool = False) -> Segments:
  """The trainer of make_train_one, in pieces.

  epochs: a fractional count stops the last pass early
  (`optimizer.total_steps`). alternating_flip: mirror each batch by
  augment.alternating_flips (before `augment`'s own draw); lookahead:
  airbench's weight averaging (`_lookahead`); drop_last: `epoch_order`'s.
  A model with a 'whiten' collection has it fit on x[idx] after init.
  """
  steps = optimizer.steps_per_epoch(m, batch_size, drop_last)
  total = optimizer.total_steps(epochs, steps)
  passes = math.ceil(total / steps)
  # Steps of the last pass: all of them unless epochs is fractional.
  tail = total - (passes - 1) * steps
  whole = passes if tail == steps else passes - 1
  storage = storage or precision.storage('float32', None)
  step = make_step(model, tx, augment, label_smoothing, storage)

  def start(key, idx, x):
    init_key, _, _ = split_model_key(key, passes, steps)
    params, state = models_lib.init(model, init_key, x)
    if 'whiten' in state:
      state = {**state, 'whiten': {'kernel': airbench.fit_whitening(x, idx)}}
    opt_state = tx.init(params)
    # Parameters and BatchNorm statistics are averaged, as airbench
    # averages every float entry of its state dict.
    ema = (params, state) if lookahead else None
    return ((storage.store(params), state, opt_state), ema)

  def run(carry, key, idx, x, y, first: int, count: int):
    _, order_keys, aug_keys = split_model_key(key, passes, steps)
    bits = (augment_lib.flip_bits(jax.random.fold_in(key, streams.FLIP),
                                  x.shape[0]) if alternating_flip else None)

    def scan_step(carry, batch):
      bidx, wb, step_key, epoch, i = batch
      xb = x[bidx]
      if alternating_flip:
        xb = augment_lib.flip(xb, augment_lib.alternating_flips(bits, bidx,
                                                                epoch))
      carry, ema = carry
      carry, loss = step(carry, xb, y[bidx], wb, step_key)
      if lookahead:
        carry, ema = _lookahead(carry, ema, epoch * steps + i + 1, total,
                                storage)
      return (carry, ema), loss

    def epoch_of(n):
      """One pass of its first n steps."""
      def epoch(carry, keys):
        order_key, step_keys, e = keys
        order, weights = epoch_order(order_key, idx, batch_size, drop_last)
        order, weights, step_keys = order[:n], weights[:n], step_keys[:n]
        carry, losses = jax.lax.scan(
            scan_step, carry, (order, weights, step_keys,
                               jnp.full(n, e), jnp.arange(n)))
        # The examples it saw: the padded last batch counts its m % B.
        seen = m if n == steps and not drop_last else n * batch_size
        return carry, jnp.sum(losses * weights.sum(1)) / seen
      return epoch

    keys = (order_keys, aug_keys, jnp.arange(passes))
    if isinstance(first, int):
      # Whole passes in [first, first + count), then the early-stopped one.
      full, stops = min(first + count, whole) - first, first + count > whole
    else:  # a traced first: the caller's passes are whole ones
      full, stops = count, False
    epoch_losses = jnp.zeros((0,), jnp.float32)
    if full > 0:
      carry, epoch_losses = jax.lax.scan(
          epoch_of(steps), carry,
          jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, first, full),
                       keys))
    if stops:
      carry, final = epoch_of(tail)(carry,
                                    jax.tree.map(lambda a: a[-1], keys))
      epoch_losses = jnp.append(epoch_losses, final)
    return carry, epoch_losses

  def finish(carry):
    ((stored, state, _), ema) = carry
    if lookahead:  # the model is the average, as airbench's last step sets
      return ema
    return (storage.master(stored), state)

  return Segments(start, run, finish, passes, whole)


def _lookahead(carry, ema, s, total: int, storage):
  """airbench's lookahead: every 5 steps the average moves toward the model
  by 1 - decay, decay = 0.95^5 (s / total)^3, and the model is reset to it.

  carry: (stored params, state, opt_state) after step s (1-based); ema:
  (params, state) in f32. Returns both, updated on steps s % 5 == 0.
  """
  def update(args):
    (stored, state, opt_state), ema = args
    decay = 0.95**5 * (s / total)**3
    new = jax.tree.map(lambda e, p: e + (1 - decay) * (p - e), ema,
                       (storage.master(stored), state))
    return (storage.store(new[0]), new[1], opt_state), new

  return jax.lax.cond(s % 5 == 0, update, lambda args: args, (carry, ema))


def make_config_segments(model, config, m: int) -> Segments:
  """make_segments for a resolved config's optimizer, batch size, epochs,
  augmentation and storage."""
  c = config.train
  tx = optimizer.make_optimizer(c, optimizer.step_counts(m, c)[0])
  return make_segments(
      model, tx, m=m, batch_size=c.batch_size, epochs=c.epochs,
      drop_last=c.drop_last,
      augment=augment_lib.make(c.augment, c.crop_padding),
      label_smoothing=c.label_smoothing, storage=config_storage(config),
      alternating_flip=c.augment == 'flip_translate', lookahead=c.lookahead)


def make_trainer(model, config, m: int):
  """train_one for the config's recipe (make_config_segments, in one call)."""
  return _in_one_call(make_config_segments(model, config, m))


def make_chunk_fn(model, config, m: int, mesh=None) -> Callable:
  """The jitted trainer of one chunk of models.

  With a mesh, the model axis is split over its 'models' axis by shard_map:
  each device runs the same K-model program on its own models, so a model's
  results do not depend on the number of devices. (Explicit shard_map rather
  than automatic partitioning, which may replicate vmapped work:
  openxla/xla#47945.)

  Returns fn(keys (D*K,), idx (D*K, m) int32, x_train, y_train, x_test,
  y_test) -> dict(train_correct (D*K, n) bool, train_ptrue (D*K, n) f32,
  train_margin (D*K, n, V) f32, test_correct (D*K, n_test) bool,
  test_ptrue (D*K, n_test) f32, test_margin (D*K, n_test, V) f32,
  loss (D*K, epochs) f32).
  """
  train_one = make_trainer(model, config, m)
  evaluate = evaluation.make_evaluate(model, config.eval_batch_size,
                                      config.model.tta)

  def one_model(key, idx, x_train, y_train, x_test, y_test):
    variables, losses = train_one(key, idx, x_train, y_train)
    train_correct, train_ptrue, train_margin = evaluate(variables, x_train,
                                                        y_train)
    test_correct, test_ptrue, test_margin = evaluate(variables, x_test, y_test)
    return dict(train_correct=train_correct, train_ptrue=train_ptrue,
                train_margin=train_margin, test_correct=test_correct,
                test_ptrue=test_ptrue, test_margin=test_margin, loss=losses)

  if config.vectorize == 'map':
    def fn(keys, idx, *data):
      return jax.lax.map(lambda a: one_model(*a, *data), (keys, idx))
  else:
    fn = jax.vmap(one_model, in_axes=(0, 0, None, None, None, None))
  if mesh is not None:
    models_axis, shared = P(distributed.MODELS_AXIS), P()
    # check_vma=False: the program has no collectives to check, and with the
    # check on, jax 0.10 on CPU changed the models' losses in the 6th digit
    # against the single-device program (measured); without it they are
    # bit-identical.
    fn = jax.shard_map(fn, mesh=mesh, out_specs=models_axis,
                       in_specs=(models_axis, models_axis) + (shared,) * 4,
                       check_vma=False)
  return jax.jit(fn)
